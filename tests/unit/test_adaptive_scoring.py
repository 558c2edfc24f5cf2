"""What bench/adaptive_real.py shows for each source frame, in time and live behind the source."""
from bench.adaptive_scoring import calibration_split, score, shown_per_source_frame

FPS = 10.0


def _result(i: int, latency_s: float, box: str) -> dict:
    return {"capture_ts": i / FPS, "latency_s": latency_s, "lost": False, "plan_id": 1, "stages": [],
            "outputs": {"detect": {"detections": [box]}}}


def test_a_late_result_is_shown_live_only_from_its_arrival_on():
    # Frames 0, 2, 4 processed; frame 2's result takes 0.35 s at D = 0.1 s: it arrives at 0.55 s,
    # in time for frame 5's deadline (0.6 s) but not for frames 2-4's (0.3-0.5 s).
    frames = [_result(0, 0.05, "a"), _result(2, 0.35, "b"), _result(4, 0.05, "c")]
    assert [s[0] for s in shown_per_source_frame(frames, 6, FPS)] == ["a", "a", "b", "b", "c", "c"]
    assert [s[0] for s in shown_per_source_frame(frames, 6, FPS, delay=0.1)] == ["a", "a", "a", "a", "c", "c"]
    assert [s[0] for s in shown_per_source_frame(frames, 6, FPS, delay=0.4)] == ["a", "a", "b", "b", "c", "c"]


def test_nothing_is_shown_live_before_the_first_result_arrives():
    frames = [_result(0, 0.5, "a"), _result(1, 0.05, "b")]
    assert shown_per_source_frame(frames, 3, FPS, delay=0.2) == [[], ["b"], ["b"]]


def test_live_f1_charges_late_frames_and_plain_f1_does_not():
    box = {"cls": 0, "conf": 0.9, "box": [10, 10, 50, 90]}
    moved = {"cls": 0, "conf": 0.9, "box": [200, 10, 240, 90]}
    golden = [[box]] * 2 + [[moved]] * 2
    frames = [{"capture_ts": i / FPS, "latency_s": 1.0 if i >= 2 else 0.05, "lost": False, "plan_id": 1,
               "stages": [], "outputs": {"detect": {"detections": g}}} for i, g in enumerate(golden)]
    s = score({"results": frames, "stats": {}, "plans": [], "t_submit": 0.0}, golden, FPS, delay=0.5,
              golden_detect_s=0.1)
    assert s["frame_f1"] == 1.0
    assert s["frame_f1_live"] == 0.5  # frames 2-3 are shown live with frame 1's box, which has moved
    assert s["late_share"] == 0.5


def test_calibration_error_splits_into_bias_and_the_windows_spread():
    # predicted 0.80 throughout; measured windows at 0.85 and 0.95 (mean 0.90)
    split = calibration_split([(20.0, 0.80, 0.85), (22.0, 0.80, 0.95)])
    assert split == {"calibration_bias": -0.1, "calibration_spread": 0.05}
    noise_only = calibration_split([(20.0, 0.90, 0.85), (22.0, 0.90, 0.95)])
    assert noise_only == {"calibration_bias": 0.0, "calibration_spread": 0.05}
    assert calibration_split([]) == {"calibration_bias": None, "calibration_spread": None}
