"""Long-running kombu consumers in the tracker process: finished frames from the results
queue, and window acks for this node's generators. Both follow one loop shape: a named
thread, a stop event, a timeout on every blocking read, a log line on exit."""
from __future__ import annotations

import logging
import socket
import threading
from typing import Callable

import msgpack
from celery import Celery
from kombu import Consumer

from services.codec import BadEnvelope, Envelope, decode_envelope
from tasks.queues import EXCHANGE, ack_queue, results_queue

log = logging.getLogger(__name__)


class _QueueLoop(threading.Thread):
    def __init__(self, app: Celery, name: str, queue, prefetch: int = 64) -> None:
        super().__init__(name=name, daemon=True)
        self.app = app
        self.queue = queue
        self.prefetch = prefetch
        self.stop_event = threading.Event()
        self.ready = threading.Event()

    def handle(self, body: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_message(self, message) -> None:
        # The raw body: our payloads are msgpack envelopes decoded by our own strict codec.
        try:
            self.handle(message.body)
        except Exception:
            log.exception("%s: could not handle a message; dropped", self.name)
        message.ack()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    with Consumer(conn, queues=[self.queue], on_message=self._on_message,
                                  prefetch_count=self.prefetch):
                        self.ready.set()
                        while not self.stop_event.is_set():
                            try:
                                conn.drain_events(timeout=0.2)
                            except socket.timeout:
                                self.on_idle()
            except Exception as exc:  # broker restart, network blip: reconnect
                if self.stop_event.is_set():
                    break
                log.warning("%s: broker connection lost (%s); reconnecting", self.name, exc)
                self.stop_event.wait(1.0)
        log.info("%s stopped", self.name)

    def on_idle(self) -> None:
        pass

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self.join(timeout)


class ResultConsumer(_QueueLoop):
    """Feeds finished frames to `on_frame`; calls `on_tick` at least every 0.2 s."""

    def __init__(self, app: Celery, queue_name: str, on_frame: Callable[[Envelope], None],
                 on_tick: Callable[[], None]) -> None:
        super().__init__(app, "vdag-results", results_queue(queue_name))
        self.on_frame = on_frame
        self.on_tick = on_tick
        self.rejected = 0

    def handle(self, body: bytes) -> None:
        try:
            env = decode_envelope(body)
        except BadEnvelope as exc:
            self.rejected += 1
            log.warning("results: rejected a message: %s", exc)
            return
        self.on_frame(env)

    def _on_message(self, message) -> None:
        super()._on_message(message)
        self.on_tick()

    def on_idle(self) -> None:
        self.on_tick()


class AckListener(_QueueLoop):
    """Frees generator window slots on this node when the aggregator settles frames."""

    def __init__(self, app: Celery, node: str, on_ack: Callable[[str, int], None]) -> None:
        super().__init__(app, f"vdag-acks-{node}", ack_queue(node), prefetch=256)
        self.on_ack = on_ack

    def handle(self, body: bytes) -> None:
        msg = msgpack.unpackb(body, raw=False)
        if not (isinstance(msg, dict) and isinstance(msg.get("job"), str) and isinstance(msg.get("seq"), int)):
            raise ValueError("malformed ack")
        self.on_ack(msg["job"], msg["seq"])


class AckPublisher:
    """Aggregator side: tell a generator's node that frame (job, seq) is settled."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def ack(self, node: str, job_uid: str, seq: int) -> None:
        queue = ack_queue(node)
        with self.app.producer_or_acquire() as producer:
            producer.publish(msgpack.packb({"job": job_uid, "seq": seq}), exchange=EXCHANGE,
                             routing_key=queue.routing_key, declare=[queue], serializer=None,
                             content_type="application/x-msgpack", content_encoding="binary",
                             delivery_mode=1, retry=True)
