"""Runs jobs on this node: generators, the aggregator, the scheduler loop, node upkeep.

The one place where the data plane (tasks/, services/), the planner (scheduler/) and the
store meet. Request handlers reach it only through the JobControl methods.
Start order is written out in `start`, and `stop` undoes it in reverse.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable

from celery import Celery

from scheduler.interface import Observation, Plan, PlanningInput, SourceInfo, UserConstraint
from scheduler.observations import profile_observations, segment_observations
from services import node_profile
from services.aggregator import ReorderBuffer, profile_rows, record_from_envelope, rendered_jpeg
from services.codec import Envelope, Hop
from services.dag import DagSpec
from services.generator import ActivePlan, FrameGenerator, InFlightWindow
from services.line_count import JobCounts
from services.records import FrameRecord
from services.settings import Settings
from services.sources import SourceError, open_source, probe_source
from tasks.consumers import AckListener, AckPublisher, ResultConsumer
from tasks.stage import dispatch_frame
from tracker.jobs import Job, JobState
from tracker.recent_results import LivePlan, RecentResults

log = logging.getLogger(__name__)

STATS_EVERY_S = 1.0
LOAD_WINDOW_S = 5.0  # how far back a job's own busy time on a node is summed, for node_load
NODES_EVERY_S = 1.0  # how often the node table is re-read for node_load
CLIP_FRAMES = 4  # frames per ClipGenerator message: the current one and the three before
FLUSH_EVERY_S = 0.1
PROFILES_EVERY_S = 10.0  # how often `vdag profile` results are re-read from data_dir/profiles


def build_route(dag: DagSpec, plan: Plan) -> tuple[Hop, ...]:
    """The stages in topological order, each on its planned node, with the planned grade."""
    hops = []
    for name in dag.topological_order():
        stage = dag.stage(name)
        mapping = plan.flow_mapping[name]
        params = dict(stage.params)
        if mapping.grade and "weights" not in params:
            from services.registry import get_service

            if get_service(stage.service).tunable_grade:
                params["grade"] = mapping.grade
        hops.append(Hop(stage=name, service=stage.service, node=mapping.node, params=params, inputs=stage.inputs))
    return tuple(hops)


@dataclass
class _JobStats:
    """Rolling per-job counters the aggregator keeps between stats flushes."""

    frames_out: int = 0
    lost: int = 0
    slo_violations: int = 0
    latency_sum: float = 0.0
    stage_latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    last_out: list[float] = field(default_factory=list)  # wall times of recent outputs, for fps_out
    last_viewer_seq: int = -1
    segments_scored: int = 0


OnJobEnd = Callable[[str, JobState, str], None]


def active_plan(settings: Settings, dag: DagSpec, plan_id: int, plan: Plan, planned: bool) -> ActivePlan:
    """What a generator (cloud or edge) needs of a plan. Accuracy profiling only helps a
    planner that is choosing, so fixed plans are not profiled."""
    profiled = planned and has_detection_stage(dag)
    return ActivePlan(plan_id=plan_id, video_conf=plan.video_conf, route=build_route(dag, plan),
                      profile_every=settings.profile_every if profiled else 0, golden_grade=settings.golden_grade,
                      segment_every_s=settings.profile_segment_every_s if profiled else 0.0,
                      segment_frames=settings.profile_segment_frames)


def renders(dag: DagSpec) -> bool:
    """Whether some stage draws a picture for the viewers (an `image` output)."""
    from services.registry import get_service

    return any("image" in get_service(s.service).outputs for s in dag.stages)


def has_detection_stage(dag: DagSpec) -> bool:
    """Stages whose accuracy can be profiled against the golden config."""
    from services.registry import get_service

    return any("detections" in get_service(s.service).outputs for s in dag.stages)


def _accuracy(outputs: dict | None) -> float | None:
    value = (outputs or {}).get("accuracy")
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else None


class JobRunner:
    """One job's generator thread. It reports end of file and source failure through
    `on_end(job_uid, state, reason)`: the cloud moves the job in its store, an edge tells
    the cloud (tracker.edge). Frames go to the cloud's `results_queue`; acks come back
    to this node (`settings.node`)."""

    def __init__(self, settings: Settings, celery: Celery, job_uid: str, dag: DagSpec, source: str,
                 active: ActivePlan, first_seq: int, start_ts: float, pace: float, backpressure: str,
                 on_end: OnJobEnd, results_queue: str | None = None,
                 preview: Callable[[str, int, bytes], None] | None = None) -> None:
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

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _dispatch(self, env: Envelope) -> None:
        dispatch_frame(self.celery, env)
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


class Runtime:
    """JobControl for the API, and the owner of every background thread of a tracker."""

    def __init__(self, settings: Settings, store, hub, celery: Celery, planner=None,
                 pace: float = 1.0, backpressure: str = "drop", scheduler_interval_s: float | None = 2.0) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.celery = celery
        self.planner = planner  # a factory of planners; None = the Bayesian planner
        self.scheduler_interval_s = scheduler_interval_s  # None: no scheduler, fixed plans only
        self.pace = pace
        self.backpressure = backpressure
        self.reorder = ReorderBuffer(wait_s=settings.reorder_wait_s)
        self.counts = JobCounts()  # identities and line crossings, on frames in sequence order
        self.acks = AckPublisher(celery)
        self.runners: dict[str, JobRunner] = {}
        self._runners_lock = threading.Lock()
        self._stats: dict[str, _JobStats] = defaultdict(_JobStats)
        self._stats_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: list[tuple[FrameRecord, str]] = []  # emitted, not yet stored: (record, origin)
        self._plans: dict[int, Plan] = {}  # plan id -> plan, to label observations
        self._constraints: dict[str, tuple[float, UserConstraint]] = {}  # cached for SLO counting
        # node_load of observations: (cpu_ratio, n_process) per node, re-read every NODES_EVERY_S, and
        # each job's recent busy time per node, (wall time, service seconds).
        self._node_loads: tuple[float, dict[str, tuple[float, int]]] = (0.0, {})
        self._busy: dict[tuple[str, str], deque[tuple[float, float]]] = defaultdict(deque)
        self._last_flush = self._last_stats = 0.0
        self._profiles: tuple[float, dict[str, dict]] = (-1e9, {})
        self.result_consumer: ResultConsumer | None = None
        self.ack_listener: AckListener | None = None
        self.scheduler = None
        # Called with (job_uid, records) after each batch is stored: metrics, elasticity.
        self.recent = RecentResults()  # newest stored frames and plans, for result polls
        self.record_observers: list[Callable[[str, list[FrameRecord]], None]] = [self.recent.add]

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Runtime":
        self.start_result_consumer()
        self.start_ack_listener()
        if self.scheduler_interval_s is not None:
            self.start_scheduler()
        self.resume_jobs()
        return self

    def start_result_consumer(self) -> None:
        self.result_consumer = ResultConsumer(self.celery, self.settings.results_queue, self.on_frame, self.on_tick)
        self.result_consumer.start()
        self.result_consumer.ready.wait(10)
        log.info("aggregator consuming results")

    def start_ack_listener(self) -> None:
        self.ack_listener = AckListener(self.celery, self.settings.node, self.on_ack)
        self.ack_listener.start()
        self.ack_listener.ready.wait(10)

    def start_scheduler(self) -> None:
        from tracker.scheduling import make_scheduler_loop

        self.scheduler = make_scheduler_loop(self, self.planner, self.scheduler_interval_s)
        self.scheduler.start()
        log.info("scheduler loop started")

    def resume_jobs(self) -> None:
        items, _ = self.store.list_jobs(state=JobState.EXEC, limit=10_000, offset=0)
        for job in items:
            log.info("resuming job %s", job.uid)
            self.start_generator(job.uid)

    def stop(self) -> None:
        with self._runners_lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.stop()
        log.info("generators stopped")
        if self.scheduler:
            self.scheduler.stop()
            log.info("scheduler stopped")
        if self.ack_listener:
            self.ack_listener.stop()
        if self.result_consumer:
            self.result_consumer.stop()
            self._flush(force=True)
            log.info("aggregator stopped")

    # -- JobControl --------------------------------------------------------------------------
    def job_submitted(self, job_uid: str) -> None:
        job = self.store.get_job(job_uid)
        if job.source_info is None:
            try:
                self.store.set_source_info(job_uid, probe_source(job.source))
            except SourceError as exc:
                self.store.transition(job_uid, JobState.FAILED, f"video source failed: {exc}")
                return
        if job.fixed_plan is not None:
            self.save_plan(job_uid, job.fixed_plan)
        elif self.scheduler:
            self.scheduler.wake(job_uid)

    def job_stopped(self, job_uid: str) -> None:
        with self._runners_lock:
            runner = self.runners.pop(job_uid, None)
        if runner:
            runner.stop()
        self._forget_busy(job_uid)
        self.counts.forget(job_uid)
        self.hub.close_job(job_uid)

    def constraint_changed(self, job_uid: str) -> None:
        if self.scheduler:
            self.scheduler.wake(job_uid)

    def plan_pushed(self, job_uid: str) -> None:
        current = self.store.current_plan(job_uid)
        if current:
            self._apply_plan(job_uid, *current)

    # -- plans and generators -------------------------------------------------------------
    def save_plan(self, job_uid: str, plan: Plan) -> int:
        plan_id = self.store.add_plan(job_uid, plan)
        self._apply_plan(job_uid, plan_id, plan)
        return plan_id

    def _active_plan(self, job: Job, plan_id: int, plan: Plan) -> ActivePlan:
        self._plans[plan_id] = plan
        return active_plan(self.settings, job.dag, plan_id, plan, planned=job.fixed_plan is None)

    def _apply_plan(self, job_uid: str, plan_id: int, plan: Plan) -> None:
        job = self.store.get_job(job_uid)
        fps = (job.source_info or {}).get("fps")
        self.recent.set_plan(job_uid, LivePlan(tuple(job.dag.topological_order()), plan_id, plan, fps))
        if job.state == JobState.UNSCHED:
            self.store.transition(job_uid, JobState.EXEC, f"planned by {plan.planner}")
            self.start_generator(job_uid)
            return
        with self._runners_lock:
            runner = self.runners.get(job_uid)
        if runner:
            runner.set_plan(self._active_plan(job, plan_id, plan))

    def start_generator(self, job_uid: str) -> None:
        job = self.store.get_job(job_uid)
        current = self.store.current_plan(job_uid)
        if current is None:
            return
        dag = job.dag
        last = self.store.last_result_position(job_uid)  # (seq, capture_ts) or None
        first_seq = last[0] + 1 if last else 0
        start_ts = last[1] if last and last[1] >= 0 else 0.0
        self.reorder.start_job(job_uid, first_seq)
        self.counts.start(job_uid, dag)
        if job.node != self.settings.node:
            return  # another node reads this job's source (tracker.edge polls for it)
        runner = JobRunner(self.settings, self.celery, job_uid, dag, job.source, self._active_plan(job, *current),
                           first_seq, start_ts, self.pace, self.backpressure, on_end=self.finish_job,
                           preview=None if renders(dag) else self.hub.publish)
        with self._runners_lock:
            old = self.runners.pop(job_uid, None)
            self.runners[job_uid] = runner
        if old:
            old.stop()
        runner.start()

    def finish_job(self, job_uid: str, state: JobState, reason: str) -> None:
        self._flush(force=True)
        self.publish_stats(job_uid)
        try:
            self.store.transition(job_uid, state, reason)
        except Exception as exc:  # cancelled meanwhile, or deleted
            log.info("job %s not moved to %s: %s", job_uid, state.value, exc)
        with self._runners_lock:
            self.runners.pop(job_uid, None)
        self._forget_busy(job_uid)
        self.counts.forget(job_uid)
        self.hub.close_job(job_uid)
        log.info("job %s %s: %s", job_uid, state.value, reason)

    # -- aggregator -------------------------------------------------------------------------
    def on_frame(self, env: Envelope) -> None:
        now = time.monotonic()
        if env.kind == "profile":
            self._on_profile(env)
            return
        record = record_from_envelope(env, time.time())
        emitted = self.reorder.push(record, now)
        with self._stats_lock:
            st = self._stats[env.job]
            if env.seq > st.last_viewer_seq:
                st.last_viewer_seq = env.seq
                jpeg = rendered_jpeg(env)
                if jpeg:
                    self.hub.publish(env.job, env.seq, jpeg)
        self._queue_records(emitted.records, env.origin)
        # Free the generator's window slot on receipt, not after the batched store: with acks
        # after a 0.1 s flush a window of 8 capped a job at ~40 frames/s (bench/pipeline.py).
        # The record is already pending, and finish_job's forced flush waits on _flush_lock,
        # so an empty window still means every received frame is stored before DONE.
        self._ack(env.origin, env.job, env.seq)

    def _on_profile(self, env: Envelope) -> None:
        """A scored profiling segment: frame-level F1 of candidate configs, for the planner."""
        scored = profile_rows(env)
        if not scored:
            return
        stage, rows = scored
        plan = self._plans.get(env.plan) or self._stored_plan(env.plan)
        mapping = plan.flow_mapping.get(stage) if plan else None
        node = env.timings[-1].node if env.timings else (mapping.node if mapping else self.settings.node)
        obs = segment_observations(stage, node, mapping.grade if mapping else None, rows, env.width, env.height,
                                   env.segment_fps or 10.0, time.time())
        try:
            self.store.add_observations(env.job, obs)
        except Exception:
            log.exception("profiled accuracy of job %s not stored", env.job)
        with self._stats_lock:
            self._stats[env.job].segments_scored += 1

    def _ack(self, origin: str | None, job_uid: str, seq: int) -> None:
        """Tell the frame's generator that it is settled: directly when the generator runs in
        this process, else through the broker to its node's ack queue."""
        if origin in (None, self.settings.node):
            self.on_ack(job_uid, seq)
        else:
            self.acks.ack(origin, job_uid, seq)

    def on_ack(self, job_uid: str, seq: int) -> None:
        with self._runners_lock:
            runner = self.runners.get(job_uid)
        if runner:
            runner.window.release(seq)

    def on_tick(self) -> None:
        now = time.monotonic()
        expired = self.reorder.expire(now)
        if expired:
            self._queue_records(expired, None)
        self._flush()
        if now - self._last_stats >= STATS_EVERY_S:
            self._last_stats = now
            for job_uid in list(self._stats):
                self.publish_stats(job_uid)

    def _queue_records(self, records: list[FrameRecord], origin: str | None) -> None:
        if not records:
            return
        for r in records:  # in sequence order per job (the reorder buffer's output)
            if not r.lost:
                self.counts.apply(r.job_uid, r.outputs)
        with self._stats_lock:
            self._pending.extend((r, origin) for r in records)
        self._flush()

    def _flush(self, force: bool = False) -> None:
        with self._flush_lock:  # one batch at a time: a forced flush returns after what was pending is stored
            self._flush_locked(force)

    def _flush_locked(self, force: bool) -> None:
        now = time.monotonic()
        with self._stats_lock:
            if not self._pending or (not force and now - self._last_flush < FLUSH_EVERY_S and len(self._pending) < 32):
                return
            batch, self._pending = self._pending, []
            self._last_flush = now
        by_job: dict[str, list[FrameRecord]] = defaultdict(list)
        for record, _ in batch:
            by_job[record.job_uid].append(record)
        for job_uid, records in by_job.items():
            try:
                self.store.save_frames(job_uid, records)
                self.store.add_observations(job_uid, self._observations(job_uid, records))
            except Exception:
                log.exception("could not store %d frames of job %s", len(records), job_uid)
            self._count(job_uid, records)
            for observe in self.record_observers:
                try:
                    observe(job_uid, records)
                except Exception:
                    log.exception("record observer failed")
        for record, origin in batch:
            if record.lost:  # received frames were acked in on_frame
                self._ack(origin, record.job_uid, record.seq)

    def _observations(self, job_uid: str, records: list[FrameRecord]) -> list[Observation]:
        out = []
        now = time.time()
        for r in records:
            plan = self._plans.get(r.plan_id) or self._stored_plan(r.plan_id)
            if r.lost or plan is None or r.produced == "tracked":
                continue  # its detector stage tracked instead of detecting: no service-time sample
            for s in r.stages:
                mapping = plan.flow_mapping.get(s.stage)
                self._busy[(job_uid, s.node)].append((now, s.service_s))
                # Golden F1 on the detected frame itself: no frame skipped or tracked in it,
                # so it is labelled as the every-frame, no-tracking config at this resolution.
                accuracy = _accuracy(r.outputs.get(s.stage))
                out.append(Observation(
                    stage=s.stage, node=s.node, grade=mapping.grade if mapping else None,
                    width=r.width, height=r.height, fps=0.0 if accuracy is not None else plan.video_conf.fps,
                    ntracking=0 if accuracy is not None else plan.video_conf.ntracking, quality=plan.video_conf.quality,
                    frame_bytes=r.frame_bytes, service_s=s.service_s, queue_s=s.queue_s, ts=now,
                    accuracy=accuracy,
                ))
        loads = {node: self._background_load(job_uid, node, now) for node in {o.node for o in out}}
        return [o.model_copy(update={"node_load": loads[o.node]}) if loads[o.node] is not None else o for o in out]

    def _forget_busy(self, job_uid: str) -> None:
        for key in [k for k in list(self._busy) if k[0] == job_uid]:
            self._busy.pop(key, None)

    def worker_busy(self, node: str, now: float | None = None) -> float | None:
        """Busy share of a node's worker processes over the last LOAD_WINDOW_S, summed over
        every job this aggregator sees. This, not the host's CPU utilisation, is the planner's
        node load: the planner treats load as work queued on the node's workers, while other
        processes sharing the CPU only slow the service times, which it learns from
        observations (reading psutil's CPU here counted that contention twice and made every
        plan look infeasible on a busy host)."""
        now = time.time() if now is None else now
        nodes = self._node_table(now)
        if node not in nodes:
            return None
        total = 0.0
        for (_, busy_node), busy in list(self._busy.items()):
            if busy_node == node:
                total += sum(t for at, t in list(busy) if at >= now - LOAD_WINDOW_S)
        return round(min(total / LOAD_WINDOW_S / nodes[node][1], 1.0), 3)

    def _node_table(self, now: float) -> dict[str, tuple[float, int]]:
        read_at, nodes = self._node_loads
        if now - read_at >= NODES_EVERY_S:
            try:
                nodes = {n.name: (n.cpu_ratio, max(n.n_process, 1)) for n in self.store.list_nodes()}
            except Exception:
                log.debug("node table not readable for node_load", exc_info=True)
            self._node_loads = (now, nodes)
        return nodes

    def _background_load(self, job_uid: str, node: str, now: float) -> float | None:
        """The node's load apart from this job's own work: the workers' busy share minus this
        job's own, the same quantity the planner subtracts at decision time (fps x own work /
        n_process); None when the node is unknown."""
        nodes = self._node_table(now)
        busy = self._busy[(job_uid, node)]
        while busy and busy[0][0] < now - LOAD_WINDOW_S:
            busy.popleft()
        if node not in nodes:
            return None
        n_process = nodes[node][1]
        own = sum(t for _, t in busy) / LOAD_WINDOW_S / n_process
        return round(min(max((self.worker_busy(node, now) or 0.0) - own, 0.0), 1.0), 3)

    def _stored_plan(self, plan_id: int) -> Plan | None:
        """Plans of jobs whose generator runs on another node are not cached at dispatch."""
        if plan_id < 0:
            return None
        stored = self.store.get_plan(plan_id)
        if stored is not None:
            self._plans[plan_id] = stored.plan
        return stored.plan if stored else None

    def _count(self, job_uid: str, records: list[FrameRecord]) -> None:
        delay = self._constraint(job_uid).delay
        now = time.time()
        with self._stats_lock:
            st = self._stats[job_uid]
            for r in records:
                if r.lost:
                    st.lost += 1
                    continue
                st.frames_out += 1
                st.latency_sum += r.latency_s
                st.slo_violations += r.latency_s > delay
                st.last_out.append(now)
                for s in r.stages:
                    lat = st.stage_latency[s.stage]
                    lat.append(s.service_s)
                    del lat[:-200]
            del st.last_out[:-200]

    def _constraint(self, job_uid: str) -> UserConstraint:
        cached = self._constraints.get(job_uid)
        if cached and time.monotonic() - cached[0] < 2.0:
            return cached[1]
        try:
            c = self.store.get_job(job_uid).constraint
        except Exception:
            c = UserConstraint()
        self._constraints[job_uid] = (time.monotonic(), c)
        return c

    def publish_stats(self, job_uid: str) -> None:
        with self._stats_lock:
            st = self._stats.get(job_uid)
            if st is None:
                return
            window = [t for t in st.last_out if t > time.time() - 5.0]
            stats = {
                "frames_out": st.frames_out,
                "frames_lost": st.lost,
                "slo_violations": st.slo_violations,
                "fps_out": round(len(window) / 5.0, 2),
                "mean_latency_s": round(st.latency_sum / st.frames_out, 4) if st.frames_out else None,
                "segments_scored": st.segments_scored,
                "stage_latency_s": {k: round(sum(v) / len(v), 4) for k, v in st.stage_latency.items() if v},
            }
        with self._runners_lock:
            runner = self.runners.get(job_uid)
        if runner and runner.generator:
            stats.update(runner.generator.stats.as_dict())
            stats["in_flight"] = len(runner.window)
            stats["window_expired"] = runner.window.expired
        stats.update({k: v for k, v in self.reorder.stats(job_uid).items() if k == "duplicates"})
        try:
            self.store.update_stats(job_uid, stats)
        except Exception:
            log.debug("stats for %s not stored", job_uid, exc_info=True)

    # -- planning inputs ---------------------------------------------------------------------
    def _profile_observations(self, job: Job, nodes: set[str]) -> list[Observation]:
        """`vdag profile` measurements of the nodes this job may use, as the oldest latency
        observations (ts 0): the planner starts from this node's hardware, and the job's own
        measurements, newer, take over as they come."""
        now = time.monotonic()
        if now - self._profiles[0] > PROFILES_EVERY_S:
            self._profiles = (now, node_profile.load_all(self.settings.data_dir / "profiles"))
        return profile_observations(self._profiles[1], job.dag, nodes)

    def planning_input(self, job: Job) -> PlanningInput:
        now = time.time()
        nodes = [n.info() for n in self.store.list_nodes()]
        for n in nodes:
            busy = self.worker_busy(n.name, now)
            n.cpu_ratio = busy if busy is not None else 0.0  # see worker_busy
        current = self.store.current_plan(job.uid)
        src = job.source_info or {}
        return PlanningInput(
            job_uid=job.uid,
            dag=job.dag,
            nodes=nodes,
            source=SourceInfo(**{k: src[k] for k in ("width", "height", "fps") if k in src}),
            constraint=job.constraint,
            observations=self._profile_observations(job, {n.name for n in nodes})
            + self.store.recent_observations(job.uid, limit=500),
            last_plan=current[1] if current else None,
            now=time.time(),
        )
