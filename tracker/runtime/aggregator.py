"""The cloud's aggregator: finished frames from the results queue, put back in sequence order,
stored in batches with the planner's observations, counted into each job's stats, and shown
to viewers. Every per-job structure is freed by `forget` when the job ends."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from scheduler.interface import Observation, Plan, UserConstraint
from scheduler.observations import segment_observations
from services.aggregator import (FLUSH_BATCH, FLUSH_EVERY_S, ReorderBuffer, profile_rows, record_from_envelope,
                                rendered_jpeg)
from services.codec import Envelope
from services.dag import DagSpec
from services.line_count import JobCounts
from services.records import FrameRecord
from services.settings import Settings
from tasks.consumers import AckPublisher
from tracker.runtime.node_load import NodeLoad
from tracker.store.jobs import JobNotFound

log = logging.getLogger(__name__)

CONSTRAINT_TTL_S = 2.0  # how long a job's delay bound is cached for SLO counting
# While the store is away, received frames wait here (their generator slots are already free)
# and are retried with backoff; past this many the oldest are dropped and counted.
MAX_UNSAVED = 20_000
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 5.0
FORCED_FLUSH_WAIT_S = 60.0  # a job's end or a stop waits this long for a store call in progress

RecordObserver = Callable[[str, list[FrameRecord]], None]


@dataclass
class JobStats:
    """Rolling per-job counters between stats flushes."""

    frames_out: int = 0
    lost: int = 0
    late: int = 0  # arrived after being declared lost, then stored (and no longer counted lost)
    slo_violations: int = 0
    latency_sum: float = 0.0
    latency_n: int = 0  # frames in latency_sum (frames_out also counts those stored before a restart)
    stage_latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    last_out: list[float] = field(default_factory=list)  # wall times of recent outputs, for fps_out
    last_viewer_seq: int = -1
    segments_scored: int = 0

    def as_dict(self, now: float) -> dict:
        window = [t for t in self.last_out if t > now - 5.0]
        return {
            "frames_out": self.frames_out,
            "frames_lost": self.lost,
            "frames_late": self.late,
            "slo_violations": self.slo_violations,
            "fps_out": round(len(window) / 5.0, 2),
            "mean_latency_s": round(self.latency_sum / self.latency_n, 4) if self.latency_n else None,
            "segments_scored": self.segments_scored,
            "stage_latency_s": {k: round(sum(v) / len(v), 4) for k, v in self.stage_latency.items() if v},
        }


def _accuracy(outputs: dict | None) -> float | None:
    value = (outputs or {}).get("accuracy")
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else None


class Aggregator:
    def __init__(self, settings: Settings, store, hub, acks: AckPublisher, node_load: NodeLoad,
                 local_ack: Callable[[str, int], None]) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.acks = acks
        self.node_load = node_load
        self.local_ack = local_ack  # frees a window slot of a generator in this process
        self.reorder = ReorderBuffer(wait_s=settings.reorder_wait_s)
        self.counts = JobCounts()  # identities and line crossings, on frames in sequence order
        self.observers: list[RecordObserver] = []  # after each stored batch: recent results, metrics
        self._lock = threading.Lock()  # stats, pending, plans, constraints
        self._flush_lock = threading.Lock()
        self._active: set[str] = set()
        self._stats: dict[str, JobStats] = {}
        self._pending: list[tuple[FrameRecord, str | None]] = []  # emitted, not yet stored: (record, origin)
        self._plans: dict[int, tuple[str, Plan]] = {}  # plan id -> (job, plan), to label observations
        self._constraints: dict[str, tuple[float, UserConstraint]] = {}
        self._last_flush = 0.0
        self.frames_after_end = 0
        self._unsaved: list[tuple[FrameRecord, str | None]] = []  # a batch the store refused, retried
        self._retry_at = 0.0
        self._retry_s = RETRY_FIRST_S
        self.unsaved_dropped = 0  # over MAX_UNSAVED while the store was away

    # -- jobs ------------------------------------------------------------------------------------
    def start_job(self, job_uid: str, dag: DagSpec, next_seq: int, stored: tuple[int, int] = (0, 0),
                  maybe_unused: tuple[int, int] = (0, 0)) -> None:
        """Expect the job's frames from `next_seq` on (everything below is stored); `stored` =
        (frames with a result, frames recorded lost) already in the store, where the counts resume;
        `maybe_unused` = the numbers a resumed generator's predecessor may not have sent
        (tracker.runtime.resume)."""
        self.reorder.start_job(job_uid, next_seq, maybe_unused)
        self.counts.start(job_uid, dag)
        with self._lock:
            self._active.add(job_uid)
            self._stats.setdefault(job_uid, JobStats(frames_out=stored[0], lost=stored[1]))

    def remember_plan(self, job_uid: str, plan_id: int, plan: Plan) -> None:
        with self._lock:
            self._plans[plan_id] = (job_uid, plan)

    def forget(self, job_uid: str) -> None:
        self.reorder.forget(job_uid)
        self.counts.forget(job_uid)
        self.node_load.forget(job_uid)
        with self._lock:
            self._active.discard(job_uid)
            self._stats.pop(job_uid, None)
            self._constraints.pop(job_uid, None)
            for plan_id in [p for p, (job, _) in self._plans.items() if job == job_uid]:
                del self._plans[plan_id]

    def tracked_jobs(self) -> int:
        """Jobs this aggregator holds state for (a test reads it to see nothing leaks)."""
        with self._lock:
            held = len(self._active | set(self._stats) | set(self._constraints)
                       | {job for job, _ in self._plans.values()})
        return max(held, len(self.reorder), len(self.counts))

    # -- frames ----------------------------------------------------------------------------------
    def on_frame(self, env: Envelope) -> None:
        with self._lock:
            active = env.job in self._active
        if not active:  # in flight when its job ended: settled, so that the generator's slot frees
            self.frames_after_end += 1
            self._ack(env.origin, env.job, env.seq)
            return
        if env.kind == "profile":
            self._on_profile(env)
            return
        record = record_from_envelope(env, time.time())
        emitted = self.reorder.push(record, time.monotonic())
        with self._lock:
            st = self._stats.get(env.job)
            jpeg = None
            if st is not None and env.seq > st.last_viewer_seq:
                st.last_viewer_seq = env.seq
                jpeg = rendered_jpeg(env)
        if jpeg:
            self.hub.publish(env.job, env.seq, jpeg)
        self._queue_records(emitted.records + [dataclasses.replace(r, late=True) for r in emitted.late], env.origin)
        # Free the generator's window slot on receipt, not after the batched store: with acks
        # after a 0.1 s flush a window of 8 capped a job at ~40 frames/s (bench/pipeline.py).
        # The record is already pending, and a forced flush waits on _flush_lock, so an empty
        # window still means every received frame is stored before the job ends.
        self._ack(env.origin, env.job, env.seq)

    def _on_profile(self, env: Envelope) -> None:
        """A scored profiling segment: frame-level F1 of candidate configs, for the planner."""
        scored = profile_rows(env)
        if not scored:
            return
        stage, rows = scored
        plan = self._plan(env.plan)
        mapping = plan.flow_mapping.get(stage) if plan else None
        node = env.timings[-1].node if env.timings else (mapping.node if mapping else self.settings.node)
        obs = segment_observations(stage, node, mapping.grade if mapping else None, rows, env.width, env.height,
                                   env.segment_fps or 10.0, time.time())
        try:
            self.store.add_observations(env.job, obs)
        except Exception:
            log.exception("profiled accuracy of job %s not stored", env.job)
        with self._lock:
            if env.job in self._stats:
                self._stats[env.job].segments_scored += 1

    def _ack(self, origin: str | None, job_uid: str, seq: int) -> None:
        """Tell the frame's generator that it is settled: directly when the generator runs in
        this process, else through the broker to its node's ack queue."""
        if origin in (None, self.settings.node):
            self.local_ack(job_uid, seq)
        else:
            self.acks.ack(origin, job_uid, seq)

    def expire(self) -> None:
        """Declare lost every gap that waited longer than the reorder wait; then flush."""
        expired = self.reorder.expire(time.monotonic())
        if expired:
            self._queue_records(expired, None)
        self.flush()

    def _queue_records(self, records: list[FrameRecord], origin: str | None) -> None:
        if not records:
            return
        for r in records:  # in sequence order per job (the reorder buffer's output)
            if not r.lost and not r.late:  # a late frame's identities were carried past already
                self.counts.apply(r.job_uid, r.outputs)
        with self._lock:
            self._pending.extend((r, origin) for r in records)
        self.flush()

    # -- storing ---------------------------------------------------------------------------------
    def flush(self, force: bool = False) -> bool:
        """Store what is pending, one batch at a time. A plain flush never waits behind a store
        call in progress (the result consumer and the stats tick must not stall with it; the next
        flush takes what arrived meanwhile). A forced flush waits for it, at most
        FORCED_FLUSH_WAIT_S, and returns after what was pending is stored or held for a retry;
        False when it gave up waiting (a store call that does not return)."""
        locked = self._flush_lock.acquire(timeout=FORCED_FLUSH_WAIT_S) if force else self._flush_lock.acquire(False)
        if not locked:
            if force:
                with self._lock:
                    waiting = len(self._pending) + len(self._unsaved)
                log.error("a store call has not returned for %.0f s; %d frames not stored yet",
                          FORCED_FLUSH_WAIT_S, waiting)
            return not force
        try:
            now = time.monotonic()
            with self._lock:
                if self._unsaved and now < self._retry_at:
                    return True  # the store is away: the next try is due later
                if not (self._pending or self._unsaved) or (
                        not force and not self._unsaved and now - self._last_flush < FLUSH_EVERY_S
                        and len(self._pending) < FLUSH_BATCH):
                    return True
                batch, self._pending, self._unsaved = self._unsaved + self._pending, [], []
                self._last_flush = now
            self._store(batch)
            return True
        finally:
            self._flush_lock.release()

    def unsaved(self) -> int:
        """Frames received but not stored yet (the store refused them; they are retried)."""
        with self._lock:
            return len(self._unsaved)

    def _store(self, batch: list[tuple[FrameRecord, str | None]]) -> None:
        by_job: dict[str, list[FrameRecord]] = defaultdict(list)
        for record, _ in batch:
            by_job[record.job_uid].append(record)
        refused: list[tuple[FrameRecord, str | None]] = []
        for job_uid, records in by_job.items():
            try:
                self.store.save_frames(job_uid, [r for r in records if not r.late])
                self.store.replace_lost_frames(job_uid, [r for r in records if r.late])
            except JobNotFound:
                log.warning("%d frames of deleted job %s dropped", len(records), job_uid)
                continue
            except Exception as exc:
                # Stats, polls and viewers count only what the store holds: keep it for later.
                refused.extend(item for item in batch if item[0].job_uid == job_uid)
                log.warning("could not store %d frames of job %s (%s); retrying", len(records), job_uid,
                            type(exc).__name__)
                continue
            try:
                self.store.add_observations(job_uid, self._observations(job_uid, records))
            except Exception:
                log.exception("observations of job %s not stored", job_uid)
            self._count(job_uid, records)
            for observe in self.observers:
                try:
                    observe(job_uid, records)
                except Exception:
                    log.exception("record observer failed")
        for record, origin in batch:
            if record.lost:  # received frames were acked in on_frame
                self._ack(origin, record.job_uid, record.seq)
        self._hold(refused)

    def _hold(self, refused: list[tuple[FrameRecord, str | None]]) -> None:
        with self._lock:
            if not refused:
                self._retry_s = RETRY_FIRST_S
                return
            self._unsaved = refused + self._unsaved
            over = len(self._unsaved) - MAX_UNSAVED
            if over > 0:
                for record, _ in self._unsaved[:over]:
                    if record.job_uid in self._stats and not record.lost:
                        self._stats[record.job_uid].lost += 1
                del self._unsaved[:over]
                self.unsaved_dropped += over
                log.error("the store has been away too long: %d received frames dropped", over)
            self._retry_at = time.monotonic() + self._retry_s
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)

    def _plan(self, plan_id: int) -> Plan | None:
        """Plans of jobs whose generator runs on another node are not cached at dispatch."""
        with self._lock:
            cached = self._plans.get(plan_id)
        if cached is not None or plan_id < 0:
            return cached[1] if cached else None
        stored = self.store.get_plan(plan_id)
        if stored is None:
            return None
        with self._lock:
            if stored.job_uid in self._active:
                self._plans[plan_id] = (stored.job_uid, stored.plan)
        return stored.plan

    def _observations(self, job_uid: str, records: list[FrameRecord]) -> list[Observation]:
        out = []
        now = time.time()
        for r in records:
            plan = self._plan(r.plan_id)
            if r.lost or r.late or plan is None or r.produced == "tracked":
                # Tracked: its detector stage did not detect. Late: a model load or a requeue
                # held it, which says nothing about the plan's service time.
                continue
            for s in r.stages:
                mapping = plan.flow_mapping.get(s.stage)
                self.node_load.record(job_uid, s.node, s.service_s, now)
                # Golden F1 on the detected frame itself: no frame skipped or tracked in it,
                # so it is labelled as the every-frame, no-tracking config at this resolution.
                accuracy = _accuracy(r.outputs.get(s.stage))
                out.append(Observation(
                    stage=s.stage, node=s.node, grade=mapping.grade if mapping else None,
                    width=r.width, height=r.height, fps=0.0 if accuracy is not None else plan.video_conf.fps,
                    ntracking=0 if accuracy is not None else plan.video_conf.ntracking, quality=plan.video_conf.quality,
                    frame_bytes=r.frame_bytes, service_s=s.service_s, queue_s=s.queue_s, ts=now, seq=r.seq,
                    accuracy=accuracy,
                ))
        loads = {node: self.node_load.background_load(job_uid, node, now) for node in {o.node for o in out}}
        return [o.model_copy(update={"node_load": loads[o.node]}) if loads[o.node] is not None else o for o in out]

    def _count(self, job_uid: str, records: list[FrameRecord]) -> None:
        delay = self._constraint(job_uid).delay
        now = time.time()
        with self._lock:
            st = self._stats.get(job_uid)
            if st is None:
                return
            for r in records:
                if r.lost:
                    st.lost += 1
                    continue
                if r.late:
                    st.lost -= 1   # counted lost at the reorder wait; it is stored now
                    st.late += 1
                st.frames_out += 1
                st.latency_sum += r.latency_s
                st.latency_n += 1
                st.slo_violations += r.latency_s > delay
                st.last_out.append(now)
                for s in r.stages:
                    lat = st.stage_latency[s.stage]
                    lat.append(s.service_s)
                    del lat[:-200]
            del st.last_out[:-200]

    def _constraint(self, job_uid: str) -> UserConstraint:
        with self._lock:
            cached = self._constraints.get(job_uid)
        if cached and time.monotonic() - cached[0] < CONSTRAINT_TTL_S:
            return cached[1]
        try:
            c = self.store.get_job(job_uid).constraint
        except Exception:
            c = UserConstraint()
        with self._lock:
            if job_uid in self._active:
                self._constraints[job_uid] = (time.monotonic(), c)
        return c

    def stats(self, job_uid: str) -> dict | None:
        """The job's counters as stored in its stats (None for a job this aggregator does not hold)."""
        with self._lock:
            st = self._stats.get(job_uid)
            out = st.as_dict(time.time()) if st is not None else None
        if out is not None:
            out.update({k: v for k, v in self.reorder.stats(job_uid).items() if k in ("duplicates", "restart_unused")})
        return out

    def active_jobs(self) -> list[str]:
        with self._lock:
            return list(self._active)
