"""The Celery app: msgpack only, late acks, explicit node queues, no result backend.

Settings measured rather than assumed (DESIGN.md section 5): prefetch 4 (prefetch 1 with
the solo pool stalled), the default broker pool (pool_limit=0 cut throughput ~3x), and a
plain results queue instead of a result backend (which halved throughput).
"""
from __future__ import annotations

import functools

from celery import Celery
from celery.worker.consumer import Consumer

from services.settings import Settings
from tasks.queues import STAGE_TASK, node_queue


# Reconnect tries at most 1 s apart while the broker is away. kombu's default backoff (2, 4,
# 6 ... s) put a worker's tries 6, 12 and 20 s after the loss: a broker back at 7 s was seen
# at 12 or 20 s (one resume of 20.5 s in tests/integration/test_fault_broker.py).
RECONNECT_INTERVALS = {"interval_start": 0.0, "interval_step": 0.5, "interval_max": 1.0}


class PromptReconnectConsumer(Consumer):
    """The worker's consumer, reconnecting at RECONNECT_INTERVALS (Celery passes none)."""

    def ensure_connected(self, conn):
        conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT_INTERVALS)
        return super().ensure_connected(conn)


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
    else:
        # Read by kombu's default_channel: the tracker's consumers and publishers reconnect as
        # promptly as the worker.
        app.conf.broker_transport_options = dict(RECONNECT_INTERVALS)
        app.conf.worker_consumer = "tasks.app:PromptReconnectConsumer"
    # The stage task is a shared task: it reads this app's settings at run time.
    app.vdag_settings = settings
    import tasks.stage  # noqa: F401  (registers the shared task with every app)
    import tasks.worker_state  # noqa: F401  (its worker_process_init handler must exist before the pool forks)

    return app


__all__ = ["make_celery", "STAGE_TASK"]
