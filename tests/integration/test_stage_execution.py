"""execute_hop on a real model: input wiring, timings, golden-config profiling."""
from __future__ import annotations

import time

import cv2
import pytest

from services.codec import Envelope, Hop
from services.models import ModelCache
from services.profiling import SEGMENT_QUALITY
from services.registry import ServiceContext
from services.video_conf import encode_jpeg, resize_to
from tasks.stage import StageFailed, execute_hop
from tests.support.pipeline import VTEST

pytestmark = pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc provides vtest.avi")


@pytest.fixture(scope="module")
def frame():
    cap = cv2.VideoCapture(str(VTEST))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, image = cap.read()
    assert ok
    return image


@pytest.fixture(scope="module")
def ctx():
    from services.weights import trained_person_weights

    return ServiceContext(device="cpu", models=ModelCache(), person_weights=trained_person_weights())


def _env(image, golden=None, **kw) -> Envelope:
    return Envelope(job="j", seq=0, plan=1, capture_ts=0, sent_at=0, width=image.shape[1], height=image.shape[0],
                    image=encode_jpeg(image, 85), golden_image=golden, profile=golden is not None, **kw)


def test_two_hops_wire_outputs_to_inputs_and_record_timings(frame, ctx):
    env = _env(frame, route=[
        Hop(stage="detect", service="person_detection", node="edge-1", inputs={"image": "generator.image"}),
        Hop(stage="count", service="object_count", node="cloud", inputs={"detections": "detect.detections"}),
    ])
    env = execute_hop(env, ctx, "edge-1", "edge-1/h/1")
    assert [h.stage for h in env.route] == ["count"] and env.timings[0].node == "edge-1"
    env = execute_hop(env, ctx, "cloud", "cloud/h/2")
    assert env.outputs["count"]["total"] == len(env.outputs["detect"]["detections"]) >= 1
    assert [t.stage for t in env.timings] == ["detect", "count"] and not env.route
    assert "accuracy" not in env.outputs["detect"]


def test_a_task_runs_every_stage_on_its_node_and_hands_the_frame_on_at_the_next_node(frame, tmp_path):
    """A stage after a detection on the same node runs at once in the same task, not queued
    behind the node's next detections."""
    from services.settings import Settings
    from tasks.stage import run_hops_here

    settings = Settings(node="cloud", data_dir=tmp_path, runtime="pytorch")
    env = _env(frame, route=[
        Hop(stage="detect", service="person_detection", node="cloud", inputs={"image": "generator.image"}),
        Hop(stage="count", service="object_count", node="cloud", inputs={"detections": "detect.detections"}),
        Hop(stage="count_edge", service="object_count", node="edge-1", inputs={"detections": "detect.detections"}),
    ])
    env.enqueued_at = time.time()
    env = run_hops_here(env, settings, "cloud/h/1")
    assert [t.stage for t in env.timings] == ["detect", "count"] and [h.stage for h in env.route] == ["count_edge"]
    detect, count = env.timings
    assert count.started - count.enqueued < 0.05 and count.enqueued >= detect.finished
    assert env.outputs["count"]["total"] == len(env.outputs["detect"]["detections"]) >= 1


def test_profiled_frame_scores_the_plan_against_the_golden_config(frame, ctx):
    small = resize_to(frame, "360p")
    hop = Hop(stage="detect", service="person_detection", node="cloud", inputs={"image": "generator.image"})
    same = execute_hop(_env(frame, golden=encode_jpeg(frame, 95), route=[hop]), ctx, "cloud", "w")
    low = execute_hop(_env(small, golden=encode_jpeg(frame, 95), route=[hop]), ctx, "cloud", "w")
    assert same.outputs["detect"]["accuracy"] >= 0.9
    assert 0.0 <= low.outputs["detect"]["accuracy"] < same.outputs["detect"]["accuracy"]


def test_missing_input_is_a_clear_error(frame, ctx):
    env = _env(frame, route=[Hop(stage="count", service="object_count", node="cloud",
                                 inputs={"detections": "detect.detections"})])
    with pytest.raises(StageFailed, match="detect.detections"):
        execute_hop(env, ctx, "cloud", "w")


def _frames(start: int, n: int) -> list:
    cap = cv2.VideoCapture(str(VTEST))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    out = [cap.read()[1] for _ in range(n)]
    assert all(f is not None for f in out)
    return out


def test_tracked_frames_get_boxes_from_the_tracker_and_counts_from_every_stage():
    from services.weights import trained_person_weights
    from services.tracking import TrackStore

    ctx = ServiceContext(device="cpu", models=ModelCache(), person_weights=trained_person_weights(),
                         tracks=TrackStore())
    route = [Hop(stage="detect", service="person_detection", node="cloud", inputs={"image": "generator.image"}),
             Hop(stage="count", service="object_count", node="cloud", inputs={"detections": "detect.detections"})]
    frames = [resize_to(f, "480p") for f in _frames(300, 4)]
    done = []
    for seq, f in enumerate(frames):
        env = _env(f, route=list(route)).model_copy(update={"seq": seq, "track_from": seq - 1})
        done.append(execute_hop(execute_hop(env, ctx, "cloud", "w"), ctx, "cloud", "w"))
    n = len(done[0].outputs["detect"]["detections"])
    assert n >= 3 and "tracked" not in done[0].outputs["detect"]  # nothing before frame 0: detected
    for env in done[1:]:
        assert env.outputs["detect"]["tracked"] is True and len(env.outputs["detect"]["detections"]) == n
        assert env.outputs["count"]["total"] == n
    # People walk: tracked boxes move, but stay near where the detector put them.
    first = done[0].outputs["detect"]["detections"][0]["box"]
    later = done[-1].outputs["detect"]["detections"][0]["box"]
    assert first != later and max(abs(a - b) for a, b in zip(first, later)) < 0.1
    # A frame whose predecessor this process never saw is detected, not tracked.
    stray = execute_hop(_env(frames[2], route=list(route)).model_copy(update={"seq": 9, "track_from": 7}),
                        ctx, "cloud", "w")
    assert "tracked" not in stray.outputs["detect"]


def test_frames_run_together_by_a_threads_pool_are_tracked_from_their_detected_frame():
    """A threads pool (cross-job batching) runs a detected frame and the frames tracked from it
    at once: they wait for it instead of running the detector again, and the wait is queueing,
    not the stage's service time."""
    import threading
    import time

    from services.weights import trained_person_weights
    from services.tracking import TrackStore

    ctx = ServiceContext(device="cpu", models=ModelCache(), person_weights=trained_person_weights(),
                         tracks=TrackStore())
    hop = Hop(stage="detect", service="person_detection", node="cloud", inputs={"image": "generator.image"})
    frames = [resize_to(f, "480p") for f in _frames(300, 4)]
    execute_hop(_env(frames[0], route=[hop]).model_copy(update={"job": "warm"}), ctx, "cloud", "w")  # load the model
    done: dict[int, Envelope] = {}

    def run(seq: int) -> None:
        env = _env(frames[seq], route=[hop]).model_copy(update={"seq": seq, "track_from": seq - 1})
        done[seq] = execute_hop(env, ctx, "cloud", f"thread-{seq}")

    threads = [threading.Thread(target=run, args=(seq,)) for seq in range(4)]
    for t in threads:  # taken in queue order, as a pool's threads take them, while frame 0 is detected
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(60)
    assert "tracked" not in done[0].outputs["detect"]
    assert [done[s].outputs["detect"].get("tracked") for s in (1, 2, 3)] == [True, True, True]
    detect_s = done[0].timings[0].finished - done[0].timings[0].started
    for seq in (1, 2, 3):
        t = done[seq].timings[0]
        assert t.finished - t.started < detect_s / 2, "waiting for frame 0 is not counted as service time"


def test_profiling_segment_scores_configs_against_the_golden_detector(ctx):
    frames = _frames(400, 6)
    env = Envelope(job="j", seq=0, plan=1, capture_ts=0, sent_at=0, width=768, height=576, kind="profile",
                   segment=[encode_jpeg(f, SEGMENT_QUALITY) for f in frames], segment_fps=10.0,
                   route=[Hop(stage="detect", service="person_detection", node="cloud",
                              inputs={"image": "generator.image"})])
    rows = execute_hop(env, ctx, "cloud", "w").outputs["detect"]["profile"]
    by = {(r["resolution"], r["quality"], r["step"], r["ntracking"]): r["f1"] for r in rows}
    assert by[("source", 90, 1, 0)] >= 0.9  # the golden config, JPEG-coded as a q90 plan sends it
    assert by[("360p", 90, 1, 0)] < by[("source", 90, 1, 0)]
    assert {(r["resolution"], r["quality"]) for r in rows} == {
        ("360p", 90), ("480p", 90), ("source", 60), ("source", 75), ("source", 90)}
    assert all(r["step"] * (r["ntracking"] + 1) <= 6 for r in rows)


def test_inference_keeps_the_configured_torch_threads(frame):
    """ultralytics sets cpu_count - 1 threads at predictor setup; the worker's count comes back."""
    import os

    import torch

    from services.models import set_torch_threads

    from services.weights import trained_person_weights

    want = os.cpu_count() or 1
    set_torch_threads(want)
    ctx = ServiceContext(device="cpu", models=ModelCache(), person_weights=trained_person_weights())
    hop = Hop(stage="detect", service="person_detection", node="cloud", inputs={"image": "generator.image"})
    execute_hop(_env(frame, route=[hop]), ctx, "cloud", "w")  # a fresh model: the predictor is set up here
    assert torch.get_num_threads() == want
    set_torch_threads(None)
