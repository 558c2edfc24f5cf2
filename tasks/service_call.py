"""One service on one frame, answered synchronously, through the same path as a job's frames:
the frame goes to the node's queue as a one-hop envelope, a worker runs the stage task, and
the finished envelope comes back on this caller's own reply queue (the seed's
/execute_task/<service>, served by tracker.web.service_api)."""
from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import cv2
import numpy as np
from celery import Celery

from services.codec import Envelope, Hop
from services.dag import GENERATOR_STAGE
from services.registry import get_service
from tasks.consumers import ResultConsumer
from tasks.stage import dispatch_frame

REQUEST_STAGE = "request"  # non-image inputs ride on the envelope as this pseudo stage's outputs


class ServiceTimeout(TimeoutError):
    pass


class ServiceCaller:
    def __init__(self, app: Celery, reply_queue: str) -> None:
        self.app = app
        self.reply_queue = reply_queue
        self._waiting: dict[str, tuple[threading.Event, list[Envelope]]] = {}
        self._lock = threading.Lock()
        self.consumer = ResultConsumer(app, reply_queue, self._on_reply, lambda: None)

    def start(self) -> "ServiceCaller":
        self.consumer.start()
        self.consumer.ready.wait(10)
        return self

    def stop(self) -> None:
        self.consumer.stop()

    def _on_reply(self, env: Envelope) -> None:
        with self._lock:
            waiter = self._waiting.get(env.job)
        if waiter is not None:  # else a reply to a call that timed out, or to an earlier process
            waiter[1].append(env)
            waiter[0].set()

    def call(self, service: str, node: str, inputs: dict[str, Any], params: dict[str, Any] | None = None,
             timeout_s: float = 60.0) -> dict[str, Any]:
        """The stage's outputs; raises ServiceTimeout when no worker on `node` answers in time,
        RuntimeError with the stage's error when it failed."""
        svc = get_service(service)
        image = inputs.get(svc.image_input) if svc.image_input else None
        height, width = _jpeg_size(image) if isinstance(image, bytes) else (1, 1)
        rest = {k: v for k, v in inputs.items() if k != svc.image_input}
        hop_inputs = {f: (f"{GENERATOR_STAGE}.image" if f == svc.image_input else f"{REQUEST_STAGE}.{f}")
                      for f in inputs if f in svc.inputs}
        uid = "svc-" + secrets.token_hex(8)
        now = time.time()
        env = Envelope(job=uid, seq=0, plan=0, capture_ts=0.0, sent_at=now, read_at=now, width=width, height=height,
                       image=image, route=[Hop(stage=service, service=service, node=node, params=params or {},
                                               inputs=hop_inputs)],
                       outputs={REQUEST_STAGE: rest}, origin=node, results_queue=self.reply_queue,
                       frame_bytes=len(image) if isinstance(image, bytes) else 0)
        done = threading.Event()
        replies: list[Envelope] = []
        with self._lock:
            self._waiting[uid] = (done, replies)
        try:
            dispatch_frame(self.app, env)
            if not done.wait(timeout_s):
                raise ServiceTimeout(f"no worker on node {node!r} answered within {timeout_s:g} s")
        finally:
            with self._lock:
                self._waiting.pop(uid, None)
        outputs = replies[0].outputs.get(service) or {}
        if "error" in outputs and len(outputs) == 1:
            raise RuntimeError(outputs["error"])
        return outputs


def _jpeg_size(data: bytes) -> tuple[int, int]:
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if frame is None:
        raise ValueError("not a JPEG (or PNG) image")
    return frame.shape[0], frame.shape[1]
