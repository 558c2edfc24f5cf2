"""Inference runtimes: each model runs in the fastest one its device has, exported once by
ultralytics and cached on disk.

Every model first loads in PyTorch. With runtime "auto" a CPU worker then moves it to
OpenVINO (1.2-3x faster per frame, bench/throughput.py), a CUDA worker to TensorRT when it is
installed, else PyTorch in FP16. An export is made once per (weights file hash, runtime,
runtime version), in the background while PyTorch serves, or ahead with `vdag export`.
Whether the export then serves a given input size is measured (services/runtime_trial.py).

Exports have dynamic input shapes: ultralytics letterboxes a dynamic model like a PyTorch
one (padding only to the stride, at the frame's own aspect), so one export serves every
resolution the planner picks, nothing is padded to a square, and the boxes match PyTorch's
(tests/integration/test_runtimes.py).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "pytorch", "openvino", "onnx", "tensorrt")
_EXPORT_FORMAT = {"openvino": "openvino", "onnx": "onnx", "tensorrt": "engine"}
_PACKAGE = {"pytorch": "torch", "openvino": "openvino", "onnx": "onnxruntime", "tensorrt": "tensorrt"}
_LABEL = {"pytorch": "PyTorch", "openvino": "OpenVINO", "onnx": "ONNX Runtime", "tensorrt": "TensorRT"}
_DONE = "export.done"  # written last: a directory without it is an export that did not finish


class RuntimeUnavailable(ValueError):
    """The runtime asked for cannot run on this worker (package missing, wrong device)."""


def label(runtime: str) -> str:
    return _LABEL.get(runtime, runtime)


def installed(runtime: str) -> bool:
    return importlib.util.find_spec(_PACKAGE[runtime]) is not None


def version(runtime: str) -> str:
    return importlib.metadata.version(_PACKAGE[runtime])


def choose_runtime(setting: str | None, device: str) -> str:
    """The runtime a worker on `device` loads models in: "auto" = the fastest one installed."""
    setting = (setting or "auto").strip().lower()
    if setting not in RUNTIMES:
        raise RuntimeUnavailable(f"runtime must be one of {', '.join(RUNTIMES)}, got {setting!r}")
    on_gpu = device.startswith("cuda")
    if setting == "auto":
        if on_gpu:
            return "tensorrt" if installed("tensorrt") else "pytorch"
        return "openvino" if installed("openvino") else "pytorch"
    if not installed(setting):
        raise RuntimeUnavailable(f"runtime {setting} needs the Python package {_PACKAGE[setting]!r}, which is not installed")
    if setting == "tensorrt" and not on_gpu:
        raise RuntimeUnavailable(f"runtime tensorrt needs a CUDA device; this worker's device is {device}")
    if setting == "openvino" and on_gpu:
        raise RuntimeUnavailable(f"runtime openvino runs on the CPU; this worker's device is {device}")
    return setting


def export_key(weights: str, runtime: str) -> str:
    """What an export depends on: the weights' bytes (a model .yaml: its name), the runtime, its version."""
    source = Path(weights)
    h = hashlib.sha256()
    if source.is_file() and source.suffix == ".pt":
        with source.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        h.update(source.name.encode())
    return f"{source.stem}-{h.hexdigest()[:16]}-{runtime}-{version(runtime)}"


def exports_dir(weights: str, fallback: Path) -> Path:
    """Beside the weights when that directory is writable, else `fallback` (a model .yaml
    lives inside the ultralytics package)."""
    source = Path(weights)
    if source.suffix == ".pt" and source.is_file() and os.access(source.parent, os.W_OK):
        return source.parent / ".vdag-exports"
    return Path(fallback)


def cached_export(weights: str, runtime: str, root: Path) -> Path | None:
    target = Path(root) / export_key(weights, runtime)
    if not (target / _DONE).is_file():
        return None
    return next(p for p in sorted(target.iterdir()) if p.name != _DONE)


def export(weights: str, runtime: str, root: Path, device: str = "cpu") -> Path:
    """Export `weights` for `runtime` into `root` (or find it there); returns what YOLO() loads.

    One process exports a key at a time (an flock), into a temporary directory renamed when
    complete, so a worker pool that starts together exports once and never reads half a file.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = export_key(weights, runtime)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = cached_export(weights, runtime, root)
        if found is not None:
            return found
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
        try:
            produced = _ultralytics_export(weights, runtime, work, device)
            final = work / "out"
            final.mkdir()
            produced = Path(shutil.move(str(produced), str(final / produced.name)))
            (final / _DONE).write_text(f"{weights}\n")
            target = root / key
            shutil.rmtree(target, ignore_errors=True)  # an unfinished one from a killed process
            os.replace(final, target)
            return target / produced.name
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _ultralytics_export(weights: str, runtime: str, work: Path, device: str) -> Path:
    from ultralytics import YOLO

    from services.weights import coco_names

    # ultralytics writes the export beside its source file: give it a copy in `work`.
    source = work / (Path(weights).stem + ".pt")
    if weights.endswith((".yaml", ".yml")):
        model = YOLO(weights)
        if len(model.names) == 80:
            model.model.names = coco_names()
        model.save(str(source))
    else:
        shutil.copyfile(weights, source)
    kwargs: dict[str, Any] = {"format": _EXPORT_FORMAT[runtime], "dynamic": True, "device": device, "verbose": False}
    if runtime == "tensorrt":
        kwargs.update(half=True, imgsz=1280, batch=8)  # dynamic TensorRT: the largest shape it accepts
    out = YOLO(str(source)).export(**kwargs)
    return Path(out)


def load_exported(path: Path) -> Any:
    from ultralytics import YOLO

    return YOLO(str(path), task="detect")


def set_openvino_threads(yolo: Any, path: Path, threads: int) -> bool:
    """Recompile an OpenVINO model (after its first predict built the predictor) to use
    `threads` inference threads: OpenVINO takes every core by default, which on a host shared
    with a tracker or with other pool processes stalls as badly as oversubscribed torch does.
    Unpinned: with one thread OpenVINO pins the predicting thread to core 0 for each inference,
    in every process alike, so a worker and its segment profiler took turns on core 0 while the
    other core idled (2-core host: the job's first segment scored in 23-33 s; unpinned, 12.8 s)."""
    try:
        backend = yolo.predictor.model.backend
        core = backend.compile_model.func.__self__  # ultralytics keeps partial(core.compile_model, ...)
        config = dict(backend.compile_model.keywords.get("config") or {})
        xml = next(Path(path).glob("*.xml"))
    except (AttributeError, StopIteration, TypeError) as exc:
        log.warning("could not set OpenVINO's thread count (%s); it uses every core", exc)
        return False
    config["INFERENCE_NUM_THREADS"] = threads
    config["ENABLE_CPU_PINNING"] = False
    device_name = backend.compile_model.keywords.get("device_name", "CPU")
    backend.ov_compiled_model = core.compile_model(core.read_model(str(xml)), device_name=device_name, config=config)
    return True


def export_with_log(weights: str, runtime: str, root: Path, device: str) -> Path:
    t0 = time.perf_counter()
    log.info("exporting %s to %s %s in %s (once per weights file; PyTorch serves meanwhile)",
             Path(weights).name, label(runtime), version(runtime), root)
    path = export(weights, runtime, root, device)
    log.info("%s exported to %s in %.1f s: %s", Path(weights).name, label(runtime), time.perf_counter() - t0, path)
    return path
