"""The stage task: run the frame's DAG stages that are on this node, then forward it to the
next stage's node queue or publish it to the results queue.

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
from services.models import take_last_inference
from services.profiling import score_segment, step_options
from services.registry import ServiceContext, get_service
from services.settings import Settings
from services.video_conf import FPS_LEVELS, QUALITY_LEVELS, decode_jpeg, resolutions_below
from tasks.deliveries import ledger
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
    take_last_inference()  # forget what ran before this hop
    service = get_service(hop.service)
    params = service.validate_params(hop.params)
    inference = None
    if env.kind == "profile":
        outputs = {"profile": _profile_segment(env, service, hop.params, ctx)}
        finished = started  # profiling is not stage latency
    else:
        tracks = ctx.tracks if env.kind == "frame" and _tracks(service) else None
        if tracks is not None:  # before decoding: a frame tracked from this one must see it in progress
            tracks.begin(env.job, hop.stage, env.seq)
        try:
            inputs = _resolve_inputs(env, hop.inputs)
            frame = None
            if service.image_input and service.image_input in inputs:
                frame = decode_jpeg(inputs[service.image_input])
            if tracks is not None and env.track_from >= 0:
                # Waiting for the frame it is tracked from (in progress in this process) is queueing,
                # not the stage's service time.
                started += tracks.wait_for(env.job, hop.stage, env.track_from)
            outputs = _detect_or_track(env, hop.stage, service, params, inputs, frame, ctx)
        finally:
            if tracks is not None:
                tracks.end(env.job, hop.stage, env.seq)
        finished = time.time()
        inference = take_last_inference()  # before the golden run below predicts too
        if env.profile and env.golden_image and "detections" in outputs and not outputs.get("tracked"):
            outputs["accuracy"] = _golden_f1(env, service, hop.params, inputs, outputs, ctx)
    env.outputs[hop.stage] = outputs
    runtime, threads, batch = inference or (None, None, None)
    env.timings.append(StageTiming(stage=hop.stage, node=node, worker=worker, enqueued=env.enqueued_at,
                                   started=started, finished=finished, runtime=runtime, threads=threads,
                                   batch=batch))
    env.route = env.route[1:]
    return env


def _will_detect(env: Envelope) -> bool:
    return env.kind == "frame" and env.track_from < 0 and _tracks(get_service(env.route[0].service))


def _tracks(service) -> bool:
    """A detector on images: on a tracked frame its boxes come from the tracker instead."""
    return "detections" in service.outputs and service.image_input is not None


def _detect_or_track(env: Envelope, stage: str, service, params, inputs: dict, frame, ctx: ServiceContext) -> dict:
    """A tracked frame (seed ntracking) moves the boxes of the frame before it, as this process
    last saw them; without that frame here (another process had it, or it was dropped) it is
    detected. Every detected frame becomes the start of the next tracked ones."""
    tracks = ctx.tracks
    if tracks is None or frame is None or not _tracks(service):
        return service.run(frame, inputs, params, ctx)
    if env.track_from >= 0:
        moved = tracks.track(env.job, stage, env.track_from, env.seq, frame)
        if moved is not None:
            return {"detections": moved, "tracked": True}
    outputs = service.run(frame, inputs, params, ctx)
    tracks.remember(env.job, stage, env.seq, frame, outputs["detections"])
    return outputs


def _profile_segment(env: Envelope, service, params: dict, ctx: ServiceContext) -> list[dict]:
    """Score candidate configs, at every plan quality, on the segment against the golden config
    (services/profiling.py)."""
    frames = [decode_jpeg(b) for b in env.segment]
    gp = _golden_params(service, params, env.golden_grade)
    cp = service.validate_params({k: v for k, v in params.items() if k != "imgsz"})

    def run(p, image):
        return service.run(image, {"image": b""}, p, ctx)["detections"]

    golden = [run(gp, f) if i % env.segment_golden_every == 0 else None for i, f in enumerate(frames)]
    steps = step_options(env.segment_fps, FPS_LEVELS)
    return score_segment(frames, lambda image: run(cp, image), golden, resolutions_below(frames[0].shape[0]), steps,
                         qualities=QUALITY_LEVELS)


def _golden_f1(env: Envelope, service, params: dict, inputs: dict, outputs: dict, ctx: ServiceContext) -> float:
    """F1 of this stage's detections against the golden config on the same frame.

    Runs after `finished` is taken, so the profiling cost never counts as stage latency."""
    golden = service.run(decode_jpeg(env.golden_image), {**inputs, "image": env.golden_image},
                         _golden_params(service, params, env.golden_grade), ctx)
    return round(f1_score(outputs["detections"], golden["detections"]), 4)


def _golden_params(service, params: dict, grade: str):
    """The stage's params as the golden config: the golden grade where the grade is tunable,
    and the frame's own size (imgsz follows the source-resolution frame)."""
    golden = {k: v for k, v in params.items() if k != "imgsz"}
    if service.tunable_grade and "weights" not in golden:
        golden["grade"] = grade
    return service.validate_params(golden)


def _strip_for_results(env: Envelope) -> Envelope:
    """The aggregator needs outputs, not the source frame: carrying ~60 KB back per frame cost
    a fifth of the pipeline's throughput (bench/pipeline.py). Viewers get rendered pictures,
    or, for a job that renders nothing, the raw frame straight from its generator."""
    env.image = None
    env.clip = []
    env.golden_image = None
    env.segment = []
    return env


@shared_task(name=STAGE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True, max_retries=0)
def run_stage(self, payload: Any) -> None:
    """Celery entry point: decode strictly, run the hops on this node, pass the frame on."""
    settings: Settings = self.app.vdag_settings
    try:
        env = decode_envelope(payload)
    except BadEnvelope as exc:
        log.warning("rejected a message on %s: %s", self.request.delivery_info, exc)
        raise Reject(str(exc), requeue=False) from None
    if not env.route:
        log.warning("rejected frame %s/%s with an empty route", env.job, env.seq)
        raise Reject("empty route", requeue=False)
    if env.kind == "profile" or env.profile:
        profiler = segment_profiler_of(self.app)
        if env.kind == "profile":  # scored on idle capacity by a niced child, not on this frame path
            profiler.submit(env)
            return
        profiler.start()  # a job that profiles is running (its first frame is marked): load the child's models
    worker = f"{settings.node}/{_HOST}/{os.getpid()}"
    deliveries = ledger(settings.data_dir)
    attempt = deliveries.start(self.request.id)
    try:
        if deliveries.given_up(attempt):  # it took down a process each time: report it, stop trying
            stage = env.route[0].stage
            log.error("frame %s/%s given up at stage %s: %d worker processes died on it", env.job, env.seq,
                      stage, attempt - 1)
            env.outputs[stage] = {"error": f"given up: {attempt - 1} worker processes died on this frame"}
            env.route = []
        else:
            try:
                env = run_hops_here(env, settings, worker)
            except Exception as exc:  # a failing stage must not stall the job: report the frame
                stage = env.route[0].stage
                log.exception("stage %s failed on frame %s/%s", stage, env.job, env.seq)
                env.outputs[stage] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                env.route = []
        forward(self.app, env)
    finally:
        deliveries.finish(self.request.id)


def run_hops_here(env: Envelope, settings: Settings, worker: str) -> Envelope:
    """Run the frame's hops while they are on this node. A next stage sent back through this
    node's queue waits there behind the detections already queued: vtest.avi on a one-process
    worker, a 0.4-s detection made the count after it wait 0.5 s, so a frame took two
    detections' time and a plan the model (one wait per node) read as safe at D = 0.5 s was late."""
    from tasks.worker_state import profiling_stopped, service_context, task_running

    while True:
        # Tasks running together may share a predict call; a segment being scored waits.
        with task_running(_will_detect(env)), profiling_stopped():
            env = execute_hop(env, service_context(settings), settings.node, worker)
        if not env.route or env.route[0].node != settings.node:
            return env
        env.enqueued_at = time.time()


def segment_profiler_of(app: Celery):
    """This worker process's niced segment-profiling child; what it scores goes to the results."""
    from tasks.worker_state import segment_profiler

    return segment_profiler(app.vdag_settings, lambda done: publish_result(app, _strip_for_results(done)))


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
