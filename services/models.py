"""Loading YOLO models: the device, torch's threads, a per-process cache of loaded models (in
the fastest runtime the device has). Which file a weights name means is services/weights.py.

torch and ultralytics are imported inside functions, so importing this module (or the
service registry that imports it) stays cheap for the tracker and the planner.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from services.runtime_trial import ChoiceFile, RuntimeTrial, host_key, size_key
from services.weights import coco_names, resolve_weights, user_weights

if TYPE_CHECKING:
    from services.batching import PredictBatcher

log = logging.getLogger(__name__)

_FROM_ENV = object()  # ModelCache's models_dir when not given: Settings from the environment


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


@dataclass
class LoadedModel:
    """One model, in one runtime or more, and the lock that serialises its use.

    An ultralytics model keeps its predictor (and that predictor's state) on the instance,
    so two threads predicting on one instance would interfere. `model` is the preferred
    runtime's instance (the export once there is one), `runtime` the runtime of the last call.
    A background export adds a runtime (`add_export`); with a `trial`, each input size is then
    served by whichever runtime measured faster there (services/runtime_trial.py).
    """

    weights: str
    device: str
    model: Any
    runtime: str = "pytorch"
    exported: Path | None = None  # what the preferred export was loaded from
    lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: PredictBatcher | None = None  # shares predict calls between this process's tasks
    trial: RuntimeTrial | None = None
    _models: dict[str, Any] = field(default_factory=dict)  # runtime -> instance
    _loaders: dict[str, Callable[[], Any]] = field(default_factory=dict)  # runtime -> load on first use
    _exports: dict[str, Path] = field(default_factory=dict)
    _set_up: set[str] = field(default_factory=set)  # runtimes whose threads are set up
    _threads_seen: dict[str, int] = field(default_factory=dict)
    _names: dict[int, str] | None = None  # the same in every runtime: exports carry the weights' names

    def __post_init__(self) -> None:
        self._models.setdefault(self.runtime, self.model)
        if self.exported is not None:
            self._exports.setdefault(self.runtime, self.exported)

    @property
    def names(self) -> dict[int, str]:
        """The class names, read once under the lock. ultralytics sets up an exported model's
        predictor on its first use, and its `names` read meanwhile from another thread fails
        (a threads-pool worker lost its first frames after a background export that way)."""
        if self._names is None:
            with self.lock:
                if self._names is None:
                    self._names = dict(self.model.names)
        return self._names

    def predict(self, frame, **kwargs) -> Any:
        """One frame's result; with a batcher, in one predict call with the frames that other
        tasks of this process bring meanwhile (services/batching.py)."""
        if self.batcher is not None:
            result, size = self.batcher.predict(self, frame, **kwargs)
        else:
            result, size = self.predict_batch([frame], **kwargs)[0], 1
        _last_inference.value = (self.runtime, self._threads_seen.get(self.runtime), size)
        return result

    def predict_batch(self, frames: Sequence[Any], **kwargs) -> list[Any]:
        with self.lock:
            size = size_key(kwargs.get("imgsz"), getattr(frames[0], "shape", None))
            runtime = self.trial.pick(size, len(frames)) if self.trial is not None else self.runtime
            model = self._instance(runtime)
            if runtime == "pytorch" and self.device.startswith("cuda"):
                kwargs.setdefault("half", True)  # FP16 where TensorRT is absent
            if runtime == "pytorch" and runtime not in self._set_up:
                # Observed inside predict, after ultralytics' predictor setup has had its say.
                model.add_callback("on_predict_batch_start", self._observe_torch_threads)
                self._set_up.add(runtime)
            source = frames[0] if len(frames) == 1 else list(frames)
            t0 = time.perf_counter()
            results = model.predict(source, device=self.device, verbose=False, **kwargs)
            took = time.perf_counter() - t0
            keep_torch_threads()
            if runtime == "openvino" and runtime not in self._set_up:
                from services.runtimes import set_openvino_threads

                # After the first predict: ultralytics builds the compiled model in its predictor.
                if set_openvino_threads(model, self._exports[runtime], configured_threads()):
                    self._threads_seen[runtime] = configured_threads()
                self._set_up.add(runtime)
            if self.trial is not None and len(frames) == 1:
                self.trial.record(size, runtime, took)
            self.runtime = runtime
            return list(results)

    def _instance(self, runtime: str) -> Any:
        if runtime not in self._models:
            self._models[runtime] = self._loaders.pop(runtime)()
        return self._models[runtime]

    def _observe_torch_threads(self, _predictor: Any) -> None:
        import torch

        self._threads_seen["pytorch"] = torch.get_num_threads()

    def add_export(self, model: Any, runtime: str, exported: Path, trial: RuntimeTrial | None = None) -> None:
        """Serve from `model` (a finished background export) from the next frame on; with a
        `trial`, each size from whichever of it and PyTorch measures faster there."""
        with self.lock:
            if trial is None:  # nothing else will serve: free it
                self._models.clear()
            self._models[runtime], self._exports[runtime] = model, exported
            self.model, self.runtime, self.exported, self.trial = model, runtime, exported, trial

    def add_loader(self, runtime: str, load: Callable[[], Any]) -> None:
        """A runtime to load when a trial first serves from it."""
        with self.lock:
            self._loaders[runtime] = load


_last_inference = threading.local()


def take_last_inference() -> tuple[str, int | None, int] | None:
    """(runtime, threads, batch size) of this thread's last predict since the last call, for the stage's timing."""
    info = getattr(_last_inference, "value", None)
    _last_inference.value = None
    return info


_torch_threads: int | None = None


def set_torch_threads(n: int | None) -> None:
    """The intra-op thread count inference should use in this process (None: every core but
    one, which the tracker, aggregator and profiler on the same host need: on 2 shared cores
    two OpenMP threads stall at every barrier when another process takes a core, and delays
    went from 0.1 s to 5 s in bench/adaptive_real.py)."""
    global _torch_threads
    _torch_threads = n
    keep_torch_threads()


def configured_threads() -> int:
    return _torch_threads or max(1, (os.cpu_count() or 1) - 1)


def keep_torch_threads() -> None:
    """ultralytics' select_device, run at each predictor setup, sets torch to cpu_count - 1
    threads: on a 2-core node inference silently ran on one (person model at 320: 131 vs 84 ms
    a frame, DESIGN.md s.7). Put the configured count back after it."""
    import torch

    want = configured_threads()
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)


class ModelCache:
    """Models loaded once per worker process, keyed by (resolved weights, device).

    `models_dir` is where jobs' own checkpoints may come from; by default VDAG_MODELS_DIR
    (Settings.models_dir), read when a job first names weights. `runtime` (services/runtimes.py)
    is what models run in; "pytorch" unless asked, so that only workers export models.
    `exports_dir` holds exports that cannot lie beside their weights. `batcher` is given to
    every model loaded, so that concurrent tasks share predict calls.
    """

    def __init__(self, models_dir: str | Path | None = _FROM_ENV, runtime: str = "pytorch",  # type: ignore[assignment]
                 exports_dir: str | Path = "var/exports", batcher: PredictBatcher | None = None,
                 runtime_trials: bool = True) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._models_dir = models_dir
        self.runtime = runtime
        self.exports_dir = Path(exports_dir)
        self._exports: list[threading.Thread] = []
        self.batcher = batcher
        self.runtime_trials = runtime_trials  # False: follow the decisions on file, time nothing

    @property
    def models_dir(self) -> Path | None:
        if self._models_dir is _FROM_ENV:
            from services.settings import settings_from_env

            self._models_dir = settings_from_env().models_dir
        return None if self._models_dir is None else Path(self._models_dir)

    def get(self, weights: str, device: str = "cpu") -> LoadedModel:
        """Operator-chosen weights only (a grade, person_weights): any path is loaded."""
        return self._get(resolve_weights(weights), device)

    def get_user(self, weights: str, device: str = "cpu") -> LoadedModel:
        """Weights named by a job. Checked again here, not only at submit: a message put on
        the queue directly never passed the tracker."""
        return self._get(user_weights(weights, self.models_dir), device)

    def _get(self, resolved: str, device: str) -> LoadedModel:
        key = (resolved, pick_device(device))
        with self._lock:
            # Loading under the lock: two first requests for one model must not both load it.
            if key not in self._models:
                self._models[key] = self._load(*key)
                self._models[key].batcher = self.batcher
            return self._models[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def _load(self, weights: str, device: str) -> LoadedModel:
        from services import runtimes

        runtime = runtimes.choose_runtime(self.runtime, device)
        # "auto" measures the export against PyTorch at each size; a runtime named is kept.
        tried = (self.runtime or "auto").strip().lower() == "auto"
        if runtime != "pytorch":
            root = runtimes.exports_dir(weights, self.exports_dir)
            found = runtimes.cached_export(weights, runtime, root)
            if found is not None:
                log.info("loading model %s in %s from %s", weights, runtimes.label(runtime), found)
                loaded = LoadedModel(weights, device, runtimes.load_exported(found), runtime=runtime, exported=found)
                if tried:
                    loaded.add_loader("pytorch", lambda: _load_pytorch(weights, device))
                    loaded.trial = _trial(weights, runtime, root, device, self.runtime_trials)
                return loaded
        loaded = LoadedModel(weights=weights, device=device, model=_load_pytorch(weights, device))
        if runtime != "pytorch":
            thread = threading.Thread(target=_export_then_add, daemon=True, name=f"vdag-export-{Path(weights).stem}",
                                      args=(loaded, runtime, root, tried, self.runtime_trials))
            thread.start()
            self._exports.append(thread)
        return loaded

    def trials_in_progress(self) -> bool:
        """Whether a model is still timing its runtimes at a size it has served."""
        with self._lock:
            models = list(self._models.values())
        return any(m.trial is not None and m.trial.in_progress() for m in models)

    def exports_pending(self) -> bool:
        return any(thread.is_alive() for thread in self._exports)

    def wait_for_exports(self, timeout: float | None = None) -> None:
        """Until every background export has been swapped in (or failed): for `vdag profile`
        and benches, which must time the runtime a worker will serve with."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._exports):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _load_pytorch(weights: str, device: str) -> Any:
    from ultralytics import YOLO

    log.info("loading model %s on %s", weights, device)
    model = YOLO(weights)
    if weights.endswith((".yaml", ".yml")) and len(model.names) == 80:
        # An architecture YAML carries no class names; give it COCO's so that class
        # filters such as ["person"] mean the same as with the trained checkpoint.
        model.model.names = coco_names()
    model.to(device)
    return model


def _trial(weights: str, runtime: str, root: Path, device: str, explore: bool) -> RuntimeTrial:
    from services import runtimes

    choices = ChoiceFile(root, host_key(device, configured_threads()), runtimes.export_key(weights, runtime))
    return RuntimeTrial([runtime, "pytorch"], decided=choices.load(), on_decide=choices.save, explore=explore)


def _export_then_add(loaded: LoadedModel, runtime: str, root: Path, tried: bool, explore: bool) -> None:
    from services import runtimes

    try:
        path = runtimes.export_with_log(loaded.weights, runtime, root, loaded.device)
        trial = _trial(loaded.weights, runtime, root, loaded.device, explore) if tried else None
        loaded.add_export(runtimes.load_exported(path), runtime, path, trial)
    except Exception:  # a failed export costs speed, never the model
        log.exception("export of %s to %s failed; it stays on PyTorch", loaded.weights, runtimes.label(runtime))


_default_cache: ModelCache | None = None
_default_cache_lock = threading.Lock()


def default_cache() -> ModelCache:
    """The process's cache, for callers (tests, benches) that do not pass their own."""
    global _default_cache
    with _default_cache_lock:
        if _default_cache is None:
            _default_cache = ModelCache()
        return _default_cache
