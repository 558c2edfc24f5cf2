"""Tracking between detected frames and frame-level scoring of configs, on real pixels."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from services.codec import Envelope, Hop
from services.generator import ActivePlan, FrameGenerator, InFlightWindow
from services.profiling import frame_level_f1, score_segment, shown_boxes
from services.tracking import TrackStore, track_detections
from services.video_conf import VideoConf
from tests.support.pipeline import VTEST
from tests.support.sources import ListSource

HOP = Hop(stage="probe", service="frame_probe", node="cloud", inputs={"image": "generator.image"})


def _shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)


def _scene(n: int, speed: float = 6.0) -> tuple[list[np.ndarray], list[list[dict]]]:
    """Textured squares moving right on a textured background, with their exact boxes."""
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 3)
    yy, xx = np.mgrid[0:40, 0:40]
    texture = 128 + 60 * np.sin(xx / 2.5) * np.cos(yy / 3.5) + 40 * np.sin((xx + yy) / 4.0)
    patch = np.repeat(texture[:, :, None], 3, axis=2).astype(np.uint8)
    frames, boxes = [], []
    for t in range(n):
        img = background.copy()
        dets = []
        for i, (x0, y0) in enumerate([(20, 30), (150, 140)]):
            x, y = int(x0 + speed * t), y0 + 10 * i
            img[y:y + 40, x:x + 40] = patch
            dets.append({"box": [x / 320, y / 240, (x + 40) / 320, (y + 40) / 240], "cls": "thing", "conf": 0.9})
        frames.append(img)
        boxes.append(dets)
    return frames, boxes


def test_tracked_boxes_follow_a_real_frame_shifted_by_known_pixels():
    if not VTEST.exists():
        pytest.skip("apt-get install opencv-doc provides vtest.avi")
    cap = cv2.VideoCapture(str(VTEST))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 200)
    ok, frame = cap.read()
    assert ok
    h, w = frame.shape[:2]
    box = [300 / w, 200 / h, 380 / w, 380 / h]
    moved = track_detections(frame, _shift(frame, 7, -4), [{"box": box, "cls": "person", "conf": 0.8}])
    x1, y1, x2, y2 = moved[0]["box"]
    assert x1 * w == pytest.approx(307, abs=1.0) and y1 * h == pytest.approx(196, abs=1.0)
    assert x2 * w == pytest.approx(387, abs=1.0) and moved[0]["cls"] == "person" and moved[0]["conf"] == 0.8


def test_tracking_beats_carrying_boxes_forward_over_every_frame():
    frames, golden = _scene(8)
    chain = [golden[0]]
    for a, b in zip(frames, frames[1:]):
        chain.append(track_detections(a, b, chain[-1]))
    tracked = frame_level_f1(chain, golden)
    carried = frame_level_f1(shown_boxes([golden[0]], 8, 8), golden)
    assert tracked == 1.0 and carried < 0.5
    assert track_detections(frames[0], frames[1], []) == []


def test_segment_scores_rank_tracking_above_skipping_on_motion():
    frames, golden = _scene(10)
    detected: list[int] = []

    def detect(image):  # the exact boxes of this scene's frame, at whatever resolution it is shown
        j = next(i for i, f in enumerate(frames) if f.shape == image.shape and np.array_equal(f, image))
        detected.append(j)
        return golden[j]

    rows = score_segment(frames, detect, golden, ["source"], [1, 2, 5, 10])
    by = {(r["step"], r["ntracking"]): r for r in rows}
    assert detected == [0, 2, 4, 6, 8]  # groups start at START_FRAMES frames spread over the segment
    assert by[(1, 0)]["f1"] == 1.0 and by[(1, 0)]["frames"] == 5
    assert by[(1, 4)]["frames"] == 15  # groups of 5 frames starting at 0, 2 and 4 (the rest do not fit)
    assert by[(2, 4)]["f1"] > by[(10, 0)]["f1"]          # both cover 10 frames with one detection
    assert by[(5, 0)]["f1"] < by[(1, 4)]["f1"]
    assert all(r["step"] * (r["ntracking"] + 1) <= 10 for r in rows)


def test_a_segment_golden_scored_on_every_third_frame_scores_groups_that_span_it():
    """A fast source's segment is ~1 s of frames with golden boxes on every third (the golden
    cost of 10 frames): a 5-frame step tracking 4 fits in it, groups start at every residue
    mod 3 in turn, and frames without golden boxes are tracked through but not scored."""
    frames, exact = _scene(28, speed=1.0)
    golden = [g if i % 3 == 0 else None for i, g in enumerate(exact)]
    detected: list[int] = []

    def detect(image):
        j = next(i for i, f in enumerate(frames) if f.shape == image.shape and np.array_equal(f, image))
        detected.append(j)
        return exact[j]

    rows = score_segment(frames, detect, golden, ["source"], [1, 2, 5])
    by = {(r["step"], r["ntracking"]): r for r in rows}
    assert detected == [0, 7, 14, 18, 25]
    assert by[(5, 4)]["frames"] == 25 and by[(5, 4)]["f1"] == 1.0  # tracked over 24 frames
    assert by[(1, 0)]["frames"] == 5 and by[(2, 4)]["frames"] == 40  # starts 0, 7, 14, 18
    assert all(r["step"] * (r["ntracking"] + 1) <= 28 for r in rows)
    # Frames without golden boxes are not scored: empty boxes there cost nothing.
    shown = [exact[0], [], [], exact[3]]
    assert frame_level_f1(shown, golden[:4]) == 1.0 and frame_level_f1(shown, exact[:4]) == 0.5


def test_golden_boxes_on_every_third_frame_score_configs_as_every_frame_would():
    """Held boxes match for 4 frames of motion and miss on the 5th: a 5-frame step without
    tracking is 0.8 over every frame, and so it must be over every third (starting groups on
    golden frames only scored it on offsets 0 and 3 of each group)."""
    frames, exact = _scene(28, speed=4.0)

    def detect(image):
        j = next(i for i, f in enumerate(frames) if f.shape == image.shape and np.array_equal(f, image))
        return exact[j]

    def scores(golden):
        return {(r["step"], r["ntracking"]): r["f1"] for r in score_segment(frames, detect, golden, ["source"], [1, 2, 5])}

    every = scores(exact)
    third = scores([g if i % 3 == 0 else None for i, g in enumerate(exact)])
    assert every.keys() == third.keys() and every[(5, 0)] == third[(5, 0)] == 0.8
    assert max(abs(every[c] - third[c]) for c in every) < 0.07


def test_an_extra_quality_is_scored_as_what_it_loses_against_the_best_on_the_same_group():
    """Extra qualities get one detection (the first group); their F1 is the best quality's over
    every group plus what they lose on that group. Held boxes over a 5-frame step are 0.8 here;
    the first group alone, scored on its golden frames 0 and 3, would say 1.0."""
    frames, exact = _scene(28, speed=4.0)

    def detect(image):  # the exact boxes of the nearest scene frame (q90 coding moves no box)
        return exact[int(np.argmin([np.abs(image.astype(np.int16) - f).mean() for f in frames]))]

    golden = [g if i % 3 == 0 else None for i, g in enumerate(exact)]
    rows = score_segment(frames, detect, golden, ["source"], [1, 5], qualities=(90, None))
    f1 = {(r["quality"], r["step"], r["ntracking"]): r["f1"] for r in rows}
    assert f1[(None, 5, 0)] == 0.8 and f1[(90, 5, 0)] == 0.8
    assert all(f1[(90, step, k)] == f1[(None, step, k)] for (q, step, k) in f1 if q is None)


def test_segment_candidates_see_the_frames_coded_at_their_quality():
    """Each quality is scored on the frames as the pipeline would deliver them: the detector of
    a q60 candidate gets a frame further from the segment's than a q90 one, None the frame itself."""
    frames, golden = _scene(10)
    seen: list[float] = []

    def detect(image):
        seen.append(float(np.abs(image.astype(float) - frames[0].astype(float)).mean()))
        return golden[0]

    rows = score_segment(frames, detect, golden, ["source"], [1, 2], qualities=(None, 90, 60))
    # The last quality first (its five groups: frames 0, 2, ..., 8), then the others on frame 0.
    assert len(seen) == 7 and seen[5] == 0.0 and 0 < seen[6] < seen[0]
    assert {r["quality"] for r in rows} == {None, 90, 60}
    assert len(rows) == 3 * len([r for r in rows if r["quality"] is None])


def test_generator_marks_ntracking_frames_after_each_detected_one():

    sent: list[Envelope] = []
    plan = ActivePlan(1, VideoConf(nskip=1, ntracking=2), (HOP,))
    gen = FrameGenerator("j", ListSource(15), lambda: plan, sent.append, InFlightWindow(100), threading.Event(),
                         pace=0)
    gen.run()
    # Kept: source frames 0, 2, ..., 14, each sent at once; detect one, track the next two.
    assert [e.seq for e in sent] == list(range(8))
    assert [e.track_from for e in sent] == [-1, 0, 1, -1, 3, 4, -1, 6]
    assert [e.capture_ts for e in sent[:3]] == [0.0, 0.2, 0.4]
    assert (gen.stats.sent, gen.stats.tracked, gen.stats.skipped) == (8, 5, 7)


def test_a_dropped_frame_breaks_the_tracking_chain():

    sent: list[Envelope] = []
    window = InFlightWindow(2)
    plan = ActivePlan(1, VideoConf(ntracking=4), (HOP,))

    def dispatch(env):
        sent.append(env)
        if env.seq == 0:
            window.release(0)  # frame 0 settles at once; frame 1 stays in flight

    FrameGenerator("j", ListSource(5), lambda: plan, dispatch, window, threading.Event(), pace=0).run()
    assert [(e.seq, e.track_from) for e in sent] == [(0, -1), (1, 0), (2, 1)]  # then the window is full


def test_track_store_tracks_from_the_frame_before_or_says_to_detect():
    frames, golden = _scene(3)
    store = TrackStore(max_jobs=2)
    assert store.track("j", "detect", 0, 1, frames[1]) is None  # nothing seen yet: detect
    store.remember("j", "detect", 0, frames[0], golden[0])
    moved = store.track("j", "detect", 0, 1, frames[1])
    assert frame_level_f1([moved], [golden[1]]) == 1.0
    assert store.track("j", "detect", 1, 2, frames[2]) is not None
    assert store.track("j", "detect", 0, 2, frames[2]) is not None  # the last few frames are kept
    for seq in (3, 4, 5):
        store.remember("j", "detect", seq, frames[0], golden[0])
    assert store.track("j", "detect", 0, 6, frames[0]) is None  # no longer kept: detect
    store.remember("k", "detect", 0, frames[0], [])
    store.remember("m", "detect", 0, frames[0], [])
    assert len(store) == 2 and store.track("j", "detect", 5, 6, frames[0]) is None  # evicted (LRU)


def test_a_tracked_frame_waits_for_its_frame_in_progress_in_this_process_and_no_other():
    frames, golden = _scene(2)
    store = TrackStore(wait_s=5.0)
    store.begin("j", "detect", 0)  # frame 0 is being detected by another task of this process
    got: list = []
    waiter = threading.Thread(target=lambda: got.append((store.wait_for("j", "detect", 0),
                                                         store.track("j", "detect", 0, 1, frames[1]))))
    waiter.start()
    time.sleep(0.3)
    assert not got, "the tracked frame waits while its source frame is in progress"
    store.remember("j", "detect", 0, frames[0], golden[0])
    store.end("j", "detect", 0)
    waiter.join(5)
    waited, moved = got[0]
    assert waited >= 0.25 and frame_level_f1([moved], [golden[1]]) == 1.0
    t0 = time.monotonic()  # a frame this process never had is not waited for
    assert store.wait_for("j", "detect", 7) < 0.05 and store.track("j", "detect", 7, 8, frames[1]) is None
    assert time.monotonic() - t0 < 0.1


def test_generator_sends_profiling_segments_of_consecutive_source_frames():

    sent: list[Envelope] = []
    hop = Hop(stage="detect", service="person_detection", node="cloud", inputs={"image": "generator.image"})
    plan = ActivePlan(1, VideoConf(fps=2), (hop,), segment_every_s=2.0, segment_frames=4)
    gen = FrameGenerator("j", ListSource(40), lambda: plan, sent.append, InFlightWindow(100), threading.Event(),
                         pace=0)
    gen.run()
    segments = [e for e in sent if e.kind == "profile"]
    assert len(segments) >= 2 and all(len(e.segment) == 4 for e in segments)
    assert segments[0].route[0].stage == "detect" and segments[0].segment_fps > 0
    assert gen.stats.segments == len(segments)
    assert sum(e.kind == "frame" for e in sent) == 8  # the 2 fps frames are unaffected


def test_a_jobs_first_segments_are_urgent_and_only_the_first_is_short():
    """The first `urgent_segments` are scored ahead of the frames (tasks/profiler.py); only the
    very first is cut to URGENT_SEGMENT_FRAMES, since it slows the frames longest."""
    from services.generator import URGENT_SEGMENT_FRAMES

    sent: list[Envelope] = []
    hop = Hop(stage="detect", service="person_detection", node="cloud", inputs={"image": "generator.image"})
    plan = ActivePlan(1, VideoConf(fps=2), (hop,), segment_every_s=2.0, segment_frames=8, urgent_segments=2)
    FrameGenerator("j", ListSource(80), lambda: plan, sent.append, InFlightWindow(100), threading.Event(),
                   pace=0).run()
    segments = [e for e in sent if e.kind == "profile"]
    assert [e.urgent for e in segments] == [True, True] + [False] * (len(segments) - 2) and len(segments) >= 4
    assert [len(e.segment) for e in segments] == [URGENT_SEGMENT_FRAMES] + [8] * (len(segments) - 1)


def test_a_fast_sources_segment_spans_a_second_for_the_golden_cost_of_ten_frames():
    sent: list[Envelope] = []
    hop = Hop(stage="detect", service="person_detection", node="cloud", inputs={"image": "generator.image"})
    plan = ActivePlan(1, VideoConf(fps=5), (hop,), segment_every_s=2.0, segment_frames=10)
    FrameGenerator("j", ListSource(200, fps=24.0), lambda: plan, sent.append, InFlightWindow(100),
                   threading.Event(), pace=0).run()
    segments = [e for e in sent if e.kind == "profile"]
    assert all(e.segment_golden_every == 3 for e in segments) and len(segments) >= 3
    assert [len(e.segment) for e in segments[:2]] == [16, 28]  # golden on 6, then 10 of them


def _box(cx: float, cy: float, cls: str = "person") -> dict:
    return {"box": [cx - 0.05, cy - 0.1, cx + 0.05, cy + 0.1], "cls": cls, "conf": 0.9}


def test_line_counter_keeps_identities_and_counts_crossings_by_direction():
    from services.line_count import LineCounter

    counter = LineCounter(line=(0.0, 0.5, 1.0, 0.5))  # horizontal, drawn left to right
    ids = []
    for t in range(12):  # one person walks up across the line, one down, one stays below
        dets = [_box(0.2, 0.8 - 0.05 * t), _box(0.6, 0.2 + 0.05 * t), _box(0.9, 0.9, "car")]
        ids.append([d["id"] for d in counter.update(dets)])
    assert all(frame == ids[0] for frame in ids) and len(set(ids[0])) == 3
    assert counter.count_result() == {"up": 1, "total": 2, "person": 2}


def test_line_counter_ignores_moves_beside_the_segment_and_ends_lost_tracks():
    from services.line_count import LineCounter

    counter = LineCounter(line=(0.0, 0.5, 0.3, 0.5), max_age=2)
    for t in range(10):  # crosses y = 0.5 at x = 0.7, beyond the segment's end
        counter.update([_box(0.7, 0.8 - 0.06 * t)])
    assert counter.count_result() == {"up": 0, "total": 0}
    for _ in range(3):
        counter.update([])
    assert counter.tracks == [] and counter.update([_box(0.1, 0.1)])[0]["id"] == 2


def test_job_counts_add_count_result_to_the_count_stage():
    from services.dag import DagSpec
    from services.line_count import JobCounts

    dag = DagSpec(stages=[
        {"name": "detect", "service": "person_detection", "inputs": {"image": "generator.image"}},
        {"name": "count", "service": "object_count", "inputs": {"detections": "detect.detections"},
         "params": {"line": [0.0, 0.5, 1.0, 0.5]}},
    ])
    counts = JobCounts()
    counts.start("j", dag)
    for t in range(8):
        outputs = {"detect": {"detections": [_box(0.5, 0.8 - 0.1 * t)]}, "count": {"counts": {"person": 1}, "total": 1}}
        counts.apply("j", outputs)
    assert outputs["count"]["count_result"] == {"up": 1, "total": 1, "person": 1}
    assert outputs["detect"]["detections"][0]["id"] == 1
    counts.forget("j")
    assert len(counts) == 0
    with pytest.raises(ValueError, match="fractions"):
        DagSpec(stages=[{"name": "c", "service": "object_count", "inputs": {"detections": "generator.image"},
                         "params": {"line": [0, 0, 2, 1]}}])


def test_without_a_line_there_is_no_count_result_but_tracks_get_ids():
    from services.dag import DagSpec
    from services.line_count import JobCounts

    dag = DagSpec(stages=[
        {"name": "detect", "service": "person_detection", "inputs": {"image": "generator.image"}},
        {"name": "count", "service": "object_count", "inputs": {"detections": "detect.detections"}},
    ])
    counts = JobCounts()
    counts.start("j", dag)
    outputs = {"detect": {"detections": [_box(0.5, 0.8)]}, "count": {"counts": {"person": 1}, "total": 1}}
    counts.apply("j", outputs)
    assert "count_result" not in outputs["count"]  # a seed client then reads the per-class counts
    assert outputs["detect"]["detections"][0]["id"] == 1
