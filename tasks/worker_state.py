"""Per-process worker state. Models load after fork (CUDA does not survive fork) and are
cached per (weights, device) for the life of the process."""
from __future__ import annotations

import os
import threading

from celery.signals import worker_process_init

from services.registry import ServiceContext
from services.settings import Settings

_lock = threading.Lock()
_context: ServiceContext | None = None
_context_pid: int | None = None


def service_context(settings: Settings) -> ServiceContext:
    global _context, _context_pid
    with _lock:
        if _context is None or _context_pid != os.getpid():
            from services.models import ModelCache, pick_device, trained_person_weights
            from services.tracking import TrackStore

            _context = ServiceContext(
                device=pick_device(settings.device),
                models=ModelCache(models_dir=settings.models_dir),
                person_weights=settings.person_weights or trained_person_weights(),
                tracks=TrackStore(),
            )
            _context_pid = os.getpid()
            # Several worker processes on one host share the cores (tasks.worker.pool_torch_threads).
            from services.models import set_torch_threads

            set_torch_threads(settings.torch_threads)
        return _context


_profiler = None
_profiler_pid: int | None = None


def segment_profiler(settings: Settings, publish):
    """This process's niced profiling child (tasks/profiler.py), started on first use."""
    global _profiler, _profiler_pid
    with _lock:
        if _profiler is None or _profiler_pid != os.getpid():
            from tasks.profiler import SegmentProfiler

            _profiler, _profiler_pid = SegmentProfiler(settings, publish), os.getpid()
        return _profiler


@worker_process_init.connect
def _forget_parent_models(**_: object) -> None:
    global _context, _profiler
    with _lock:
        _context = None
        _profiler = None
