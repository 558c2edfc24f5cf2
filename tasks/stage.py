"""The stage task: run one DAG stage on this node, then forward the frame to the next
stage's node queue or publish it to the results queue.

The work itself (`execute_hop`) is a plain function, tested without Celery.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery, shared_task
from celery.exceptions import Reject

from services.accuracy import f1_score
from services.codec import BadEnvelope, Envelope, StageTiming, decode_envelope, encode_envelope
from services.dag import GENERATOR_NAMES, GENERATOR_STAGE
from services.registry import ServiceContext, get_service
from services.settings import Settings
from services.video_conf import decode_jpeg
from tasks.queues import EXCHANGE, STAGE_TASK, node_queue, results_queue

log = logging.getLogger(__name__)
_GENERATORS = {GENERATOR_STAGE, *GENERATOR_NAMES}
_HOST = os.uname().nodename


class StageFailed(RuntimeError):
    pass


def _resolve_inputs(env: Envelope, inputs: dict[str, str]) -> dict[str, Any]:
    resolved: dict[str, Any] = {}
    for field, ref in inputs.items():
        src, _, out = ref.partition(".")
        if src in _GENERATORS:
            value = env.image if out == "image" else env.clip if out == "clip" else None
        else:
            value = env.outputs.get(src, {}).get(out)
        if value is None:
            raise StageFailed(f"input {field!r} ({ref}) is missing on the frame")
        resolved[field] = value
    return resolved


def execute_hop(env: Envelope, ctx: ServiceContext, node: str, worker: str) -> Envelope:
    """Run env.route[0] and return the envelope advanced by one hop."""
    hop = env.route[0]
    started = time.time()
    service = get_service(hop.service)
    params = service.validate_params(hop.params)
    inputs = _resolve_inputs(env, hop.inputs)
    frame = None
    if service.image_input and service.image_input in inputs:
        frame = decode_jpeg(inputs[service.image_input])
    outputs = service.run(frame, inputs, params, ctx)
    finished = time.time()
    if env.profile and env.golden_image and "detections" in outputs:
        outputs["accuracy"] = _golden_f1(env, service, hop.params, inputs, outputs, ctx)
    env.outputs[hop.stage] = outputs
    env.timings.append(StageTiming(stage=hop.stage, node=node, worker=worker,
                                   enqueued=env.enqueued_at, started=started, finished=finished))
    env.route = env.route[1:]
    return env


def _golden_f1(env: Envelope, service, params: dict, inputs: dict, outputs: dict, ctx: ServiceContext) -> float:
    """F1 of this stage's detections against the golden config on the same frame.

    Runs after `finished` is taken, so the profiling cost never counts as stage latency."""
    golden_params = dict(params)
    if service.tunable_grade and "weights" not in golden_params:
        golden_params["grade"] = env.golden_grade
    golden_params.pop("imgsz", None)  # imgsz follows the (source-resolution) frame
    golden = service.run(decode_jpeg(env.golden_image), {**inputs, "image": env.golden_image},
                         service.validate_params(golden_params), ctx)
    return round(f1_score(outputs["detections"], golden["detections"]), 4)


def _strip_for_results(env: Envelope) -> Envelope:
    """The aggregator needs outputs, not the source frame: carrying ~60 KB back per frame cost
    a fifth of the pipeline's throughput (bench/pipeline.py). Viewers get rendered pictures,
    or, for a job that renders nothing, the raw frame straight from its generator."""
    env.image = None
    env.clip = []
    env.golden_image = None
    return env


@shared_task(name=STAGE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True, max_retries=0)
def run_stage(self, payload: Any) -> None:
    """Celery entry point: decode strictly, run one hop, pass the frame on."""
    settings: Settings = self.app.vdag_settings
    try:
        env = decode_envelope(payload)
    except BadEnvelope as exc:
        log.warning("rejected a message on %s: %s", self.request.delivery_info, exc)
        raise Reject(str(exc), requeue=False) from None
    if not env.route:
        log.warning("rejected frame %s/%s with an empty route", env.job, env.seq)
        raise Reject("empty route", requeue=False)
    from tasks.worker_state import service_context

    worker = f"{settings.node}/{_HOST}/{os.getpid()}"
    try:
        env = execute_hop(env, service_context(settings), settings.node, worker)
    except Exception as exc:  # a failing stage must not stall the job: report the frame
        stage = env.route[0].stage
        log.exception("stage %s failed on frame %s/%s", stage, env.job, env.seq)
        env.outputs[stage] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        env.route = []
    forward(self.app, env)


def forward(app: Celery, env: Envelope) -> None:
    """Send the frame to the next stage's node queue, or the finished frame to the results."""
    env.enqueued_at = time.time()
    if env.route:
        app.send_task(STAGE_TASK, args=[encode_envelope(env)], queue=node_queue(env.route[0].node))
        return
    publish_result(app, _strip_for_results(env))


def publish_result(app: Celery, env: Envelope) -> None:
    queue = results_queue(env.results_queue)
    with app.producer_or_acquire() as producer:
        producer.publish(encode_envelope(env), exchange=EXCHANGE, routing_key=queue.routing_key,
                         declare=[queue], serializer=None, content_type="application/x-msgpack",
                         content_encoding="binary", delivery_mode=2, retry=True)


def dispatch_frame(app: Celery, env: Envelope) -> None:
    """Generator side: enqueue a new frame on its first stage's node queue."""
    app.send_task(STAGE_TASK, args=[encode_envelope(env)], queue=node_queue(env.route[0].node))
