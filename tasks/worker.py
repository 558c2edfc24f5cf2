"""Starting workers: a real `celery worker` process for a node, or an in-process worker
thread for the embedded default (kombu's memory transport lives inside one process)."""
from __future__ import annotations

import logging
import os
import threading

from celery import Celery
from celery.worker import WorkController

from tasks.queues import node_queue_name

log = logging.getLogger(__name__)


def worker_argv(node: str, concurrency: int, pool: str = "prefork", loglevel: str = "INFO",
                instance: str | None = None) -> list[str]:
    """`instance` makes the nodename unique when several workers serve one node on one host:
    remote control gives each nodename an exclusive pidbox queue, so a duplicate cannot start."""
    host = f"%h-{instance}" if instance else "%h"
    return [
        "worker", "-Q", node_queue_name(node), "-n", f"{node}@{host}", "-P", pool,
        f"--concurrency={concurrency}", f"--loglevel={loglevel}",
        "--without-gossip", "--without-mingle",
    ]


def pool_torch_threads(concurrency: int) -> int:
    """Every core but one, shared by a prefork pool's processes: a worker's host also runs a
    tracker, generators or the segment profiler, and two OpenMP threads on 2 contended cores
    stall at every barrier (p50 delay 0.17 s -> 4.1 s in tests/integration/test_planner_real.py). A host
    that runs nothing else can give them all: VDAG_TORCH_THREADS."""
    spare = max(1, (os.cpu_count() or 1) - 1)
    return max(1, spare // max(concurrency, 1))


def run_worker(app: Celery, node: str, concurrency: int, pool: str = "prefork", loglevel: str = "INFO") -> None:
    """Blocks: the `vdag worker` command."""
    if pool == "threads":  # the one pool that sends no worker_process_init: warm up here
        from tasks.worker_state import prepare_worker_process

        prepare_worker_process(app)
    app.worker_main(worker_argv(node, concurrency, pool, loglevel, instance=str(os.getpid())))


class _ReadyWorkController(WorkController):
    def __init__(self, *args, **kwargs) -> None:
        self.started = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer) -> None:
        self.started.set()


class InProcessWorker:
    """A worker on a thread of this process (threads pool), for the embedded default."""

    def __init__(self, app: Celery, node: str, concurrency: int = 2) -> None:
        self.app = app
        self.node = node
        self.pool = "threads" if concurrency > 1 else "solo"
        self.controller = _ReadyWorkController(
            app=app, hostname=f"{node}@embedded", pool=self.pool,
            concurrency=concurrency, queues=[node_queue_name(node)], loglevel="WARNING",
            without_heartbeat=True, without_mingle=True, without_gossip=True, ready_callback=None,
        )
        self.thread = threading.Thread(target=self.controller.start, name=f"vdag-worker-{node}", daemon=True)

    def start(self, timeout: float = 30.0) -> "InProcessWorker":
        """Returns once the worker consumes; `timeout` beyond the warm-up's own bounded waits
        (a first export, the profiling child's models)."""
        settings = getattr(self.app, "vdag_settings", None)
        if settings is not None and settings.warm_up:
            timeout += 2 * settings.warm_up_wait_s
        # Pool threads look tasks up through Celery's current app, which is thread-local
        # with the process default as fallback: make ours the default.
        self.app.set_default()
        if self.pool == "threads":  # the solo pool sends worker_process_init in-process; this one none
            from tasks.worker_state import prepare_worker_process

            prepare_worker_process(self.app)
        self.thread.start()
        if not self.controller.started.wait(timeout):
            raise RuntimeError(f"in-process worker for {self.node} did not start in {timeout}s")
        log.info("in-process worker for node %s started", self.node)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        from tasks.worker_state import close_segment_profiler

        self.controller.stop(in_sighandler=False)
        self.thread.join(timeout)
        close_segment_profiler()
        log.info("in-process worker for node %s stopped", self.node)
