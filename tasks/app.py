"""The Celery app: msgpack only, late acks, explicit node queues, no result backend.

Settings measured rather than assumed (DESIGN.md section 5): prefetch 4 (prefetch 1 with
the solo pool stalled), the default broker pool (pool_limit=0 cut throughput ~3x), and a
plain results queue instead of a result backend (which halved throughput).
"""
from __future__ import annotations

from celery import Celery

from services.settings import Settings
from tasks.queues import STAGE_TASK, node_queue


def make_celery(settings: Settings) -> Celery:
    app = Celery("vdag", broker=settings.broker_url)
    app.conf.update(
        task_serializer="msgpack",
        accept_content=["msgpack"],
        result_serializer="msgpack",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_time_limit=120,
        task_soft_time_limit=90,
        worker_prefetch_multiplier=settings.prefetch,
        task_create_missing_queues=False,
        task_queues=[node_queue(settings.node)],
        task_default_queue=node_queue(settings.node).name,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # Remote control (pidbox queues) lets the elasticity controller grow/shrink pools;
        # kombu's in-process memory transport has no use for it.
        worker_enable_remote_control=not settings.broker_url.startswith("memory://"),
        broker_connection_retry_on_startup=True,
        # A pool process loads and runs the detector once before it is up (tasks.worker_state
        # .warm_up): on a busy 2-core host that takes 10-50 s, far past Celery's 4 s default.
        worker_proc_alive_timeout=120.0,
        broker_heartbeat=30,
    )
    if settings.broker_url.startswith("memory://"):
        # kombu's memory transport polls; its 1 s default gave 29 frames/s (DESIGN.md 5).
        app.conf.broker_transport_options = {"polling_interval": 0.001}
    # The stage task is a shared task: it reads this app's settings at run time.
    app.vdag_settings = settings
    import tasks.stage  # noqa: F401  (registers the shared task with every app)
    import tasks.worker_state  # noqa: F401  (its worker_process_init handler must exist before the pool forks)

    return app


__all__ = ["make_celery", "STAGE_TASK"]
