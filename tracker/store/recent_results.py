"""The newest stored frames of each job, kept in memory.

Result polling is the hot read path (clients poll several times a second while the job
runs), and almost every poll asks for the last few frames: serve those from memory, and
fall back to the database for anything older. The aggregator adds records right after it
stores them, in sequence order, so what is here is always a suffix of what is stored.
From the moment a job (re)starts, `start` says where its next frame will be: polls for newer
frames are answered here, empty, until the first comes, instead of asking the store (a job's
first results take seconds to come; polls of it at 200 a second then all went to the database,
and the queue they built up there set the poll p99 of a whole run).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from scheduler.interface import Plan
from services.records import FrameRecord


@dataclass(frozen=True)
class LivePlan:
    """What a result poll needs besides frames: the stage order and the plan in force."""

    stage_order: tuple[str, ...]
    plan_id: int
    plan: Plan
    source_fps: float | None = None  # the seed's frame_id is capture_ts x source fps


class RecentResults:
    def __init__(self, per_job: int = 512) -> None:
        self.per_job = per_job
        self._frames: dict[str, deque[FrameRecord]] = {}
        self._plans: dict[str, LivePlan] = {}
        self._next: dict[str, int] = {}  # job -> its next seq, while memory holds no frame of it
        self._lock = threading.Lock()

    def start(self, job_uid: str, next_seq: int) -> None:
        """The job runs from `next_seq`: every frame before it is in the store."""
        with self._lock:
            if not self._frames.get(job_uid):
                self._frames[job_uid] = deque(maxlen=self.per_job)
                self._next[job_uid] = next_seq

    def add(self, job_uid: str, records: list[FrameRecord]) -> None:
        with self._lock:
            ring = self._frames.setdefault(job_uid, deque(maxlen=self.per_job))
            for r in records:
                if r.late:  # replaces its lost placeholder where memory still holds it
                    if ring and ring[0].seq <= r.seq <= ring[-1].seq:
                        ring[r.seq - ring[0].seq] = r
                    continue
                expected = ring[-1].seq + 1 if ring else self._next.pop(job_uid, r.seq)
                if r.seq != expected:
                    ring.clear()  # a gap (e.g. after a restart): start a new contiguous run
                ring.append(r)

    def set_plan(self, job_uid: str, live: LivePlan) -> None:
        with self._lock:
            self._plans[job_uid] = live

    def plan(self, job_uid: str) -> LivePlan | None:
        with self._lock:
            return self._plans.get(job_uid)

    def tracked_jobs(self) -> int:
        with self._lock:
            return len(set(self._frames) | set(self._plans) | set(self._next))

    def forget(self, job_uid: str) -> None:
        with self._lock:
            self._frames.pop(job_uid, None)
            self._plans.pop(job_uid, None)
            self._next.pop(job_uid, None)

    def _first(self, job_uid: str) -> int | None:
        """The first seq memory answers for (held, or next to come); None: memory knows nothing."""
        ring = self._frames.get(job_uid)
        return ring[0].seq if ring else self._next.get(job_uid)

    def after(self, job_uid: str, after_seq: int, limit: int) -> list[FrameRecord] | None:
        """Frames with seq > after_seq, or None when memory does not hold all of them."""
        with self._lock:
            first = self._first(job_uid)
            if first is None or after_seq + 1 < first:
                return None
            ring = self._frames[job_uid]
            start = after_seq + 1 - first
            return [ring[i] for i in range(max(start, 0), min(start + limit, len(ring)))]

    def recent(self, job_uid: str, n: int) -> list[FrameRecord] | None:
        with self._lock:
            first = self._first(job_uid)
            if first is None or (len(self._frames[job_uid]) < n and first > 0):
                return None
            return list(self._frames[job_uid])[-n:]

    def total(self, job_uid: str) -> int | None:
        """Stored frames of the job: sequence numbers are gap-free (lost frames are stored too)."""
        with self._lock:
            ring = self._frames.get(job_uid)
            return ring[-1].seq + 1 if ring else self._next.get(job_uid)
