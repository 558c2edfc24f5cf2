"""A job's generator thread and what it needs of a plan: the part of the runtime an edge
runs too (tracker.cluster.edge). The cloud's runtime adds the aggregator and job control."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from celery import Celery
from kombu.exceptions import OperationalError

from scheduler.interface import Plan
from services.codec import Envelope, Hop
from services.dag import DagSpec
from services.generator import SEGMENT_SERVICES, ActivePlan, DispatchUnavailable, FrameGenerator, InFlightWindow
from services.registry import get_service
from services.settings import Settings
from services.sources import SourceError, open_source
from tasks.stage import dispatch_frame
from tracker.runtime.resume import SeqReservation
from tracker.store.jobs import JobState

log = logging.getLogger(__name__)

CLIP_FRAMES = 4  # frames per ClipGenerator message: the current one and the three before
# After a failed publish, frames are dropped (and counted) without trying for this long: one
# publish attempt (Celery's own short retry) per interval until the broker is back.
BROKER_RETRY_S = 0.5


def build_route(dag: DagSpec, plan: Plan) -> tuple[Hop, ...]:
    """The stages in topological order, each on its planned node, with the planned grade."""
    hops = []
    for name in dag.topological_order():
        stage = dag.stage(name)
        mapping = plan.flow_mapping[name]
        params = dict(stage.params)
        if mapping.grade and "weights" not in params and get_service(stage.service).tunable_grade:
            params["grade"] = mapping.grade
        hops.append(Hop(stage=name, service=stage.service, node=mapping.node, params=params, inputs=stage.inputs))
    return tuple(hops)


OnJobEnd = Callable[[str, JobState, str], None]


def active_plan(settings: Settings, dag: DagSpec, plan_id: int, plan: Plan, planned: bool) -> ActivePlan:
    """What a generator (cloud or edge) needs of a plan. Accuracy profiling only helps a
    planner that is choosing, so fixed plans are not profiled.

    Where segments are scored, no frame also runs the golden config on the frame path: that
    run sits between the stage and the next one, in the worker that serves them both, and
    added 0.3 s to each profiled frame and the frames tracked from it (vtest.avi on PyTorch,
    D = 0.5 s: 17 of 22 late frames) for 4 of the job's 224 accuracy observations."""
    profiled = planned and has_detection_stage(dag)
    segments = profiled and settings.profile_segment_every_s > 0 and scored_by_segments(dag)
    return ActivePlan(plan_id=plan_id, video_conf=plan.video_conf, route=build_route(dag, plan),
                      profile_every=settings.profile_every if profiled and not segments else 0,
                      golden_grade=settings.golden_grade,
                      segment_every_s=settings.profile_segment_every_s if segments else 0.0,
                      segment_frames=settings.profile_segment_frames,
                      urgent_segments=settings.profile_urgent_segments)


def renders(dag: DagSpec) -> bool:
    """Whether some stage draws a picture for the viewers (an `image` output)."""
    return any("image" in get_service(s.service).outputs for s in dag.stages)


def has_detection_stage(dag: DagSpec) -> bool:
    """Stages whose accuracy can be profiled against the golden config."""
    return any("detections" in get_service(s.service).outputs for s in dag.stages)


def scored_by_segments(dag: DagSpec) -> bool:
    """A stage whose candidate configs profiling segments score (services.generator)."""
    return any(s.service in SEGMENT_SERVICES for s in dag.stages)


class JobRunner:
    """One job's generator thread. It reports end of file and source failure through
    `on_end(job_uid, state, reason)`: the cloud moves the job in its store, an edge tells
    the cloud (tracker.cluster.edge). Frames go to the cloud's `results_queue`; acks come back
    to this node (`settings.node`)."""

    def __init__(self, settings: Settings, celery: Celery, job_uid: str, dag: DagSpec, source: str,
                 active: ActivePlan, first_seq: int, start_ts: float, pace: float, backpressure: str,
                 on_end: OnJobEnd, results_queue: str | None = None,
                 preview: Callable[[str, int, bytes], None] | None = None, counters: dict | None = None,
                 record_reservation: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.preview = preview
        self.celery = celery
        self.on_end = on_end
        self.results_queue = results_queue or settings.results_queue
        self.job_uid = job_uid
        self.dag = dag
        self.source = source
        self._active = active
        self._lock = threading.Lock()
        self.stop_event = threading.Event()
        self.window = InFlightWindow(settings.max_in_flight, expire_s=max(30.0, 4 * settings.reorder_wait_s))
        self.generator: FrameGenerator | None = None
        self.first_seq, self.start_ts, self.pace, self.backpressure = first_seq, start_ts, pace, backpressure
        self.counters = counters or {}  # a resumed job's generator counters before this process
        # Where this generator records the sequence numbers it may use (the store, or the cloud).
        self.reservation = SeqReservation(record_reservation, first_seq) if record_reservation else None
        self._broker_errors = _connection_errors(celery)
        self._broker_down_since: float | None = None
        self._next_try = 0.0
        self.thread = threading.Thread(target=self._run, name=f"vdag-gen-{job_uid}", daemon=True)

    @property
    def active(self) -> ActivePlan:
        with self._lock:
            return self._active

    def set_plan(self, active: ActivePlan) -> None:
        with self._lock:
            self._active = active

    def start(self) -> None:
        self.thread.start()

    def stats(self) -> dict:
        """The generator's counters over the whole job, across restarts."""
        out = self.generator.stats.as_dict() if self.generator else {}
        for key, before in self.counters.items():
            out[key] = out.get(key, 0) + before
        return out

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _dispatch(self, env: Envelope) -> None:
        now = time.monotonic()
        if self._broker_down_since is not None and now < self._next_try:
            raise DispatchUnavailable("broker away")
        try:
            dispatch_frame(self.celery, env)
        except self._broker_errors as exc:
            if self._broker_down_since is None:
                self._broker_down_since = now
                log.warning("job %s: the broker cannot take frames (%s); dropping and counting them until "
                            "it is back", self.job_uid, exc)
            self._next_try = time.monotonic() + BROKER_RETRY_S
            raise DispatchUnavailable(str(exc)) from exc
        if self._broker_down_since is not None:
            log.warning("job %s: the broker is back after %.1f s; producing again", self.job_uid,
                        now - self._broker_down_since)
            self._broker_down_since = None
        if self.preview and env.kind == "frame" and env.image:
            self.preview(self.job_uid, env.seq, env.image)

    def _run(self) -> None:
        try:
            source = open_source(self.source)
            self.generator = FrameGenerator(
                self.job_uid, source, lambda: self.active, self._dispatch,
                self.window, self.stop_event, origin_node=self.settings.node,
                results_queue=self.results_queue, pace=self.pace,
                backpressure=self.backpressure, first_seq=self.first_seq, start_ts=self.start_ts,
                clip_len=CLIP_FRAMES if self.dag.generator == "ClipGenerator" else 0,
                reserve=self.reservation,
            )
            self.generator.run()
        except SourceError as exc:
            self.on_end(self.job_uid, JobState.FAILED, f"video source failed: {exc}")
            return
        except Exception as exc:
            log.exception("generator of job %s crashed", self.job_uid)
            self.on_end(self.job_uid, JobState.FAILED, f"generator error: {type(exc).__name__}: {exc}")
            return
        if self.stop_event.is_set():
            return
        # End of file: let the frames in flight arrive (bounded), then close the job.
        deadline = time.monotonic() + self.settings.reorder_wait_s + 30.0
        while len(self.window) and time.monotonic() < deadline and not self.stop_event.is_set():
            self.stop_event.wait(0.05)
        self.on_end(self.job_uid, JobState.DONE, "end of video")


def _connection_errors(celery: Celery) -> tuple[type[BaseException], ...]:
    """What a publish raises while the broker is away: kombu's wrapper, socket errors and the
    transport's own connection errors (py-amqp's RecoverableConnectionError is not an OSError)."""
    with celery.connection_for_write() as conn:
        return (OperationalError, OSError, *conn.connection_errors)
