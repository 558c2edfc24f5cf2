"""The aggregator's logic: per job, put frames back in sequence order, wait a bounded time
for a missing frame and then declare it lost, store each frame once however often it is
delivered, and turn stage timings into planner observations.

Pure logic: the consumer loop (tasks/results.py) feeds it, the tracker stores what it emits.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from services.codec import Envelope
from services.records import FrameRecord, StageRecord

# The tracker stores received frames in batches: after FLUSH_EVERY_S, or sooner once FLUSH_BATCH
# are pending. So up to FLUSH_BATCH received frames may be unstored when a tracker dies, which
# a restarted generator's sequence numbers allow for (tracker/runtime/resume.py).
FLUSH_EVERY_S = 0.1
FLUSH_BATCH = 32


def _jsonable(value: Any) -> Any:
    """Outputs go to a JSON column; bytes (images) are dropped, the viewer gets them instead."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not isinstance(v, (bytes, bytearray, memoryview))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def record_from_envelope(env: Envelope, received_at: float) -> FrameRecord:
    stages = [
        StageRecord(
            stage=t.stage,
            node=t.node,
            worker=t.worker,
            queue_s=max(t.started - t.enqueued, 0.0),
            service_s=max(t.finished - t.started, 0.0),
            runtime=t.runtime,
            threads=t.threads,
            batch=t.batch,
        )
        for t in env.timings
    ]
    tracked = any(isinstance(out, dict) and out.get("tracked") is True for out in env.outputs.values())
    return FrameRecord(
        job_uid=env.job,
        seq=env.seq,
        plan_id=env.plan,
        capture_ts=env.capture_ts,
        width=env.width,
        height=env.height,
        latency_s=max(received_at - env.sent_at, 0.0),
        outputs={stage: _jsonable(out) for stage, out in env.outputs.items()},
        stages=stages,
        frame_bytes=env.frame_bytes,
        produced="tracked" if tracked else "detected",
    )


def rendered_jpeg(env: Envelope) -> bytes | None:
    """The picture for viewers: the last stage that produced an image, else the source frame."""
    for timing in reversed(env.timings):
        image = env.outputs.get(timing.stage, {}).get("image")
        if isinstance(image, (bytes, bytearray)):
            return bytes(image)
    return env.image


def profile_rows(env: Envelope) -> tuple[str, list[dict]] | None:
    """(stage, scored candidate rows) of a profiling segment's result, else None."""
    if env.kind != "profile":
        return None
    for stage, out in env.outputs.items():
        rows = out.get("profile")
        if isinstance(rows, list):
            return stage, [r for r in rows if isinstance(r, dict)]
    return None


LATE_MEMORY = 4096  # declared-lost seqs per job remembered, so that their late result is stored
# A restarted generator's predecessor's frames are already on the queues or gone with it: its
# gaps (numbers below the end of its reservation) are waited for this long at most (any that
# turn up later are still stored, late).
RESTART_GAP_WAIT_S = 2.0


@dataclass
class Emitted:
    records: list[FrameRecord] = field(default_factory=list)  # in sequence order, lost ones included
    duplicates: int = 0
    # Frames that arrived after they were declared lost (a cold model load, a pool grow, a
    # requeue): stored in place of the lost row, out of sequence order.
    late: list[FrameRecord] = field(default_factory=list)


class _JobOrder:
    def __init__(self, next_seq: int, maybe_unused: tuple[int, int] = (0, 0)) -> None:
        self.next_seq = next_seq
        self.pending: dict[int, FrameRecord] = {}
        self.gap_since: float | None = None  # when we started waiting for next_seq
        # Numbers a restarted generator's predecessor reserved and may not have used
        # (tracker.runtime.resume): not waited for; those that arrive are stored as they come.
        self.unused_lo, self.unused_hi = maybe_unused if maybe_unused[0] < maybe_unused[1] else (0, 0)
        self.unused_seen: set[int] = set()
        self.duplicates = 0
        self.lost = 0
        self.late = 0
        self.emitted = 0
        self.declared_lost: dict[int, None] = {}  # insertion-ordered: the oldest go first

    def maybe_unused(self, seq: int) -> bool:
        return self.unused_lo <= seq < self.unused_hi

    def step_over_unused(self) -> None:
        if self.next_seq == self.unused_lo < self.unused_hi:
            self.next_seq = self.unused_hi


class ReorderBuffer:
    """Thread-safe per-job reordering with bounded wait and de-duplication."""

    def __init__(self, wait_s: float = 2.0, max_pending: int = 1024) -> None:
        self.wait_s = wait_s
        self.max_pending = max_pending
        self._jobs: dict[str, _JobOrder] = {}
        self._lock = threading.Lock()

    def start_job(self, job_uid: str, next_seq: int = 0, maybe_unused: tuple[int, int] = (0, 0)) -> None:
        """Resume point after a restart: everything below next_seq is already stored; the
        numbers in `maybe_unused` = [lo, hi) may never have been sent."""
        with self._lock:
            job = self._jobs[job_uid] = _JobOrder(next_seq, maybe_unused)
            job.step_over_unused()

    def generator_restarted(self, job_uid: str, maybe_unused: tuple[int, int]) -> None:
        """A job's generator restarted elsewhere (an edge) at maybe_unused[1]."""
        with self._lock:
            job = self._jobs.get(job_uid)
            if job is None or maybe_unused[0] >= maybe_unused[1] or maybe_unused[1] <= job.next_seq:
                return
            job.unused_lo, job.unused_hi = max(maybe_unused[0], job.next_seq), maybe_unused[1]
            job.unused_seen = set()
            job.step_over_unused()

    def forget(self, job_uid: str) -> None:
        with self._lock:
            self._jobs.pop(job_uid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def stats(self, job_uid: str) -> dict:
        with self._lock:
            j = self._jobs.get(job_uid)
            if j is None:
                return {}
            return {"frames_out": j.emitted, "frames_lost": j.lost, "duplicates": j.duplicates,
                    "frames_late": j.late, "reorder_pending": len(j.pending),
                    "restart_unused": j.unused_hi - j.unused_lo - len(j.unused_seen)}

    def push(self, record: FrameRecord, now: float | None = None) -> Emitted:
        now = time.monotonic() if now is None else now
        with self._lock:
            job = self._jobs.setdefault(record.job_uid, _JobOrder(0))
            if job.maybe_unused(record.seq) and record.seq not in job.unused_seen:
                job.unused_seen.add(record.seq)  # sent before the restart after all: stored as it comes
                job.emitted += 1
                return Emitted(records=[record])
            if record.seq < job.next_seq and record.seq in job.declared_lost:
                del job.declared_lost[record.seq]
                job.lost -= 1
                job.late += 1
                job.emitted += 1
                return Emitted(late=[record])
            if record.seq < job.next_seq or record.seq in job.pending or job.maybe_unused(record.seq):
                job.duplicates += 1
                return Emitted(duplicates=1)
            job.pending[record.seq] = record
            out = self._drain(job, now)
            if len(job.pending) > self.max_pending:  # far behind: stop waiting for the gap
                out.extend(self._skip_gap(job))
                out.extend(self._drain(job, now))
            return Emitted(records=out)

    def expire(self, now: float | None = None) -> list[FrameRecord]:
        """Declare lost every gap that waited longer than wait_s; call periodically."""
        now = time.monotonic() if now is None else now
        out: list[FrameRecord] = []
        with self._lock:
            for job in self._jobs.values():
                while job.pending and job.gap_since is not None and now - job.gap_since >= (
                        RESTART_GAP_WAIT_S if job.next_seq < job.unused_hi else self.wait_s):
                    out.extend(self._skip_gap(job))
                    out.extend(self._drain(job, now))
        return out

    def _drain(self, job: _JobOrder, now: float) -> list[FrameRecord]:
        out = []
        while job.next_seq in job.pending:
            out.append(job.pending.pop(job.next_seq))
            job.next_seq += 1
            job.emitted += 1
            job.step_over_unused()
        job.gap_since = (job.gap_since or now) if job.pending else None
        if out and job.pending:
            job.gap_since = now  # a new gap starts waiting from now
        return out

    def _skip_gap(self, job: _JobOrder) -> list[FrameRecord]:
        first_present = min(job.pending)
        lost = []
        for seq in range(job.next_seq, first_present):
            if job.maybe_unused(seq):
                continue
            any_rec = job.pending[first_present]
            lost.append(FrameRecord(job_uid=any_rec.job_uid, seq=seq, plan_id=-1, capture_ts=-1.0, width=0,
                                    height=0, latency_s=0.0, outputs={}, stages=[], lost=True))
        job.lost += len(lost)
        for r in lost:
            job.declared_lost[r.seq] = None
        while len(job.declared_lost) > LATE_MEMORY:
            del job.declared_lost[next(iter(job.declared_lost))]
        job.next_seq = first_present
        job.gap_since = None
        return lost
