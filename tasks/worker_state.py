"""Per-process worker state. Models load after fork (CUDA does not survive fork) and are
cached per (weights, device) for the life of the process."""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager

from celery import current_app
from celery.signals import worker_process_init

from services.registry import ServiceContext
from services.settings import Settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_context: ServiceContext | None = None
_context_pid: int | None = None


def service_context(settings: Settings, runtime_trials: bool = True) -> ServiceContext:
    """This process's models and trackers. `runtime_trials=False`: follow the runtime choices
    on file without timing any (services/runtime_trial.py), for the niced segment profiler."""
    global _context, _context_pid
    with _lock:
        if _context is None or _context_pid != os.getpid():
            from services.batching import PredictBatcher
            from services.models import ModelCache, pick_device
            from services.weights import trained_person_weights
            from services.tracking import TrackStore

            batcher = None
            if settings.batch_window_ms > 0 and settings.max_batch > 1:
                batcher = PredictBatcher(settings.batch_window_ms / 1e3, settings.max_batch, peers=running_tasks)
            _context = ServiceContext(
                device=pick_device(settings.device),
                models=ModelCache(models_dir=settings.models_dir, runtime=settings.runtime,
                                  exports_dir=settings.data_dir / "exports", batcher=batcher,
                                  runtime_trials=runtime_trials),
                person_weights=settings.person_weights or trained_person_weights(),
                tracks=TrackStore(),
            )
            _context_pid = os.getpid()
            # Several worker processes on one host share the cores (tasks.worker.pool_torch_threads).
            from services.models import set_torch_threads

            set_torch_threads(settings.torch_threads)
        return _context


_running = 0  # tasks running in this process now that will predict: the most that can share a batch
_running_lock = threading.Lock()


def running_tasks() -> int:
    return _running


@contextmanager
def task_running(predicts: bool):
    """Around a task; `predicts`: its frame is headed for a detector (not tracked, not another
    kind of stage), so a batch may wait for it."""
    global _running
    with _running_lock:
        _running += predicts
    try:
        yield
    finally:
        with _running_lock:
            _running -= predicts


_profiler = None
_profiler_pid: int | None = None


def segment_profiler(settings: Settings, publish):
    """This process's niced profiling child (tasks/profiler.py), started on first use."""
    global _profiler, _profiler_pid
    with _lock:
        if _profiler is None or _profiler_pid != os.getpid():
            from tasks.profiler import SegmentProfiler

            _profiler, _profiler_pid = SegmentProfiler(
                settings, publish, nice=settings.profile_nice, urgent_nice=settings.profile_first_nice), os.getpid()
        return _profiler


@contextmanager
def profiling_stopped():
    """Around a frame: this process's profiling child, if it has one, scores only while no
    frame runs here (tasks/profiler.py)."""
    mine = _profiler if _profiler_pid == os.getpid() else None
    if mine is None:
        yield
        return
    mine.frame_started()
    try:
        yield
    finally:
        mine.frame_done()


def close_segment_profiler() -> None:
    """End this process's profiling child, if it started one. Its reader thread holds the
    child's pipes, so a child merely forgotten never sees end-of-file and lives on (~1.2 GB)."""
    global _profiler
    with _lock:
        mine = _profiler if _profiler_pid == os.getpid() else None
        _profiler = None
    if mine is not None:
        mine.close()


@worker_process_init.connect
def _forget_parent_models(**_: object) -> None:
    # Sent in each prefork child, and in-process by a solo pool at every start (the embedded
    # worker). A threads pool sends nothing: tasks.worker calls prepare_worker_process itself.
    prepare_worker_process(current_app)


def prepare_worker_process(app) -> None:
    """Before this process takes tasks: forget models loaded before (a solo pool's earlier
    start; a forked child's parent), then warm up the detector and the profiling child."""
    global _context
    # An earlier start's profiling child in this process is ours and is ended; a forked pool
    # child's inherited one is its parent's to end (close_segment_profiler checks the pid).
    close_segment_profiler()
    with _lock:
        _context = None
    settings = getattr(app, "vdag_settings", None)
    if settings is not None and settings.warm_up:
        warm_up(settings)
        if settings.profile_segment_every_s > 0:
            # The child loads its models now, while the node is idle, and this process takes
            # tasks once it has: at nice 19 on a busy node loading took 20-35 s, and the
            # planner's first accuracy from the video as long.
            from tasks.stage import segment_profiler_of

            if not segment_profiler_of(app).start(wait_s=settings.warm_up_wait_s):
                log.warning("profiling child of process %d not ready after %.0f s; taking tasks anyway",
                            os.getpid(), settings.warm_up_wait_s)


def warm_up(settings: Settings) -> float | None:
    """Load the person detector and run it once before this process takes a task: the first
    frames of a job (and of a pool that just grew) then pay inference, not a 10-50 s model
    load that the reorder wait would count as lost and the planner as a slow node.
    Returns the seconds it took, None when there is no detector to warm."""
    import numpy as np

    from services.detection import detect

    ctx = service_context(settings)
    if not ctx.person_weights:
        return None
    t0 = time.perf_counter()
    blank = np.zeros((480, 640, 3), np.uint8)
    try:
        model = ctx.models.get(ctx.person_weights, ctx.device)
        detect(blank, model, conf=0.25, imgsz=None)
        if model.runtime == "pytorch" and ctx.models.exports_pending():
            # A node's first start exports the model to its fastest runtime (~8-30 s, once per
            # weights file). Serving on PyTorch meanwhile made the demo's first frames 2-7 s
            # late and the planner's first latencies describe a node that was about to change;
            # waiting here delays only this process's first task, and only on that first start.
            ctx.models.wait_for_exports(settings.warm_up_wait_s)
            detect(blank, model, conf=0.25, imgsz=None)  # the runtime's own first-inference compile
    except Exception:  # a broken checkpoint must not keep the process from serving other stages
        log.exception("warm-up of %s failed", ctx.person_weights)
        return None
    took = time.perf_counter() - t0
    log.info("process %d warm: person detector loaded and run once in %.1f s (%s)", os.getpid(), took,
             model.runtime)
    return took
