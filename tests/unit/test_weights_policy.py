"""A job's `weights` param is network input and loading a .pt unpickles it: only a bare name
in the models directory or an ultralytics model YAML may be loaded. Real files, real models."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from services.codec import Envelope, Hop
from services.dag import DagSpec
from services.models import ModelCache
from services.registry import ServiceContext, get_service
from services.settings import Settings, settings_from_env
from services.video_conf import encode_jpeg
from services.weights import coco_names, resolve_weights, shipped_model_yaml, user_weights
from tasks.stage import execute_hop
from tracker.runtime.job_control import RecordedEffects
from tracker.web.app import create_app

BAD_NAMES = [
    ("../../etc/passwd.pt", "bare file name"),
    ("/etc/passwd.pt", "bare file name"),
    ("/tmp/models/best.pt", "bare file name"),
    ("sub/best.pt", "bare file name"),
    ("sub\\best.pt", "bare file name"),
    ("~/best.pt", "bare file name"),
    ("..", "bare file name"),
    (".hidden.pt", "bare file name"),
    ("best.pt\x00.yaml", "bare file name"),
    ("evil.yaml", "not a model config shipped with ultralytics"),
    ("coco.yaml", "not a model config shipped with ultralytics"),  # shipped, but a dataset
    ("best.onnx", ".pt checkpoint or a .yaml model"),
]


class _Tripwire:
    """Unpickling this creates `marker`: proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A models directory with one real, small checkpoint (YOLO11n, untrained, COCO names)."""
    from ultralytics import YOLO

    d = tmp_path_factory.mktemp("models")
    model = YOLO(shipped_model_yaml("yolo11n.yaml"))
    model.model.names = coco_names()
    model.save(str(d / "tiny.pt"))
    return d


@pytest.fixture
def tripwire(tmp_path) -> tuple[Path, Path]:
    """(a hostile .pt outside the models directory, the file its unpickling would create)."""
    marker = tmp_path / "unpickled"
    evil = tmp_path / "outside" / "evil.pt"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps({"model": _Tripwire(marker)}))
    return evil, marker


# -- submit-time check (the params model) ----------------------------------------------------

@pytest.mark.parametrize("service", ["yolo_detection", "person_detection", "car_detection"])
@pytest.mark.parametrize("name, message", BAD_NAMES)
def test_bad_weights_are_refused_by_every_detector(service, name, message):
    with pytest.raises(ValueError, match=f"param weights: .*{message}"):
        get_service(service).validate_params({"weights": name})


@pytest.mark.parametrize("name", ["tiny.pt", "best_v2.pt", "yolo11n.pt", "yolo11n.yaml", "yolov8s.yaml", "yolo11.yaml"])
def test_bare_names_and_shipped_yamls_pass_submit(name):
    # A .pt is only named here; whether the worker's models directory has it is checked there.
    assert get_service("yolo_detection").validate_params({"weights": name}).weights == name


def test_grade_and_weights_together_is_still_its_own_error():
    for weights in ("best.pt", "/etc/passwd.pt"):
        with pytest.raises(ValueError, match="grade or weights"):
            get_service("person_detection").validate_params({"grade": "n", "weights": weights})


# -- load-time check (the worker) ------------------------------------------------------------

@pytest.mark.parametrize("name, message", BAD_NAMES)
def test_user_weights_refuses_what_submit_refuses(models_dir, name, message):
    with pytest.raises(ValueError, match=message):
        user_weights(name, models_dir)


def test_name_missing_from_the_models_dir_is_refused(models_dir):
    with pytest.raises(ValueError, match=r"'best\.pt' is not in the models directory .*copy the checkpoint there"):
        user_weights("best.pt", models_dir)
    with pytest.raises(ValueError, match="no job-supplied checkpoints"):
        user_weights("tiny.pt", None)


def test_official_names_and_yamls_mean_what_a_grade_means(models_dir):
    assert user_weights("yolo11n.pt", models_dir) == resolve_weights("n")
    shipped = user_weights("yolo11n.yaml", None)
    assert os.path.isabs(shipped) and Path(shipped).parent.joinpath("yolo11.yaml").is_file()


def test_hostile_pickle_outside_the_models_dir_is_never_unpickled(models_dir, tripwire, tmp_path):
    evil, marker = tripwire
    link_dir = tmp_path / "linked-models"
    link_dir.mkdir()
    os.symlink(evil, link_dir / "evil.pt")  # a name inside, a file outside
    cache = ModelCache(models_dir=link_dir)
    for name in (str(evil), f"../outside/{evil.name}", "evil.pt"):
        with pytest.raises(ValueError, match="bare file name|leads out of the models directory"):
            cache.get_user(name, "cpu")
    assert not marker.exists() and len(cache) == 0
    with pytest.raises(Exception):  # control: the file really is a live pickle
        ModelCache().get(str(evil), "cpu")  # operator path: trusted, so loaded
    assert marker.exists()


def test_checkpoint_in_the_models_dir_loads_and_detects(models_dir):
    cache = ModelCache(models_dir=models_dir)
    loaded = cache.get_user("tiny.pt", "cpu")
    assert loaded.weights == os.path.realpath(models_dir / "tiny.pt")
    ctx = ServiceContext(device="cpu", models=cache)
    frame = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    svc = get_service("person_detection")
    out = svc.run(frame, {}, svc.validate_params({"weights": "tiny.pt", "conf": 0.001, "imgsz": 128}), ctx)
    assert {d["cls"] for d in out["detections"]} <= {"person"}
    assert cache.get_user("tiny.pt", "cpu") is loaded and len(cache) == 1


def test_a_hand_crafted_queue_message_is_refused_by_the_worker(models_dir, tripwire):
    evil, marker = tripwire
    image = np.zeros((48, 64, 3), np.uint8)
    ctx = ServiceContext(device="cpu", models=ModelCache(models_dir=models_dir))
    for params in ({"weights": str(evil)}, {"weights": "../../etc/passwd.pt"}, {"weights": "nope.pt"}):
        env = Envelope(job="j", seq=0, plan=1, capture_ts=0, sent_at=0, width=64, height=48,
                       image=encode_jpeg(image, 85),
                       route=[Hop(stage="det", service="yolo_detection", node="cloud", params=params,
                                  inputs={"image": "generator.image"})])
        with pytest.raises(ValueError, match="bare file name|not in the models directory"):
            execute_hop(env, ctx, "cloud", "w")
    assert not marker.exists() and len(ctx.models) == 0


# -- settings --------------------------------------------------------------------------------

def test_models_dir_setting(tmp_path, monkeypatch):
    assert Settings().models_dir == Path("models")
    monkeypatch.setenv("VDAG_MODELS_DIR", "/srv/vdag/models")
    assert settings_from_env().models_dir == Path("/srv/vdag/models")
    monkeypatch.setenv("VDAG_MODELS_DIR", "")
    assert settings_from_env().models_dir is None
    monkeypatch.setenv("VDAG_MODELS_DIR", str(tmp_path))
    assert ModelCache().models_dir == tmp_path  # what a worker's cache uses when not told


# -- the REST API ----------------------------------------------------------------------------

def test_submit_with_a_weights_path_is_a_422_and_stores_nothing(tmp_path):
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/vdag.db", allowed_video_dirs=(tmp_path,)),
                     effects=RecordedEffects())
    client = app.test_client()

    def submit(weights: str):
        stages = [{"name": "det", "service": "person_detection", "params": {"weights": weights},
                   "inputs": {"image": "generator.image"}}]
        return client.post("/api/v1/jobs", json={"source": "synthetic://64x48@10/20", "stages": stages,
                                                 "constraints": {"delay": 0.5, "accuracy": 0.6}})

    r = submit("../../etc/passwd.pt")
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "validation_failed"
    assert "weights must be a bare file name" in error["message"] and "passwd" in error["message"]
    r = submit("evil.yaml")
    assert r.status_code == 422 and "not a model config shipped" in r.get_json()["error"]["message"]
    assert client.get("/api/v1/jobs").get_json()["total"] == 0
    assert submit("tiny.pt").status_code == 201  # a bare name: the worker looks it up
    assert DagSpec.model_validate({"stages": [{"name": "d", "service": "yolo_detection",
                                               "params": {"weights": "yolo11n.yaml"},
                                               "inputs": {"image": "generator.image"}}]})
