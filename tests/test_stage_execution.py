"""execute_hop on a real model: input wiring, timings, golden-config profiling."""
from __future__ import annotations

import cv2
import pytest

from services.codec import Envelope, Hop
from services.models import ModelCache
from services.registry import ServiceContext
from services.video_conf import encode_jpeg, resize_to
from tasks.stage import StageFailed, execute_hop
from tests.pipeline_support import VTEST

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
    from services.models import trained_person_weights

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
