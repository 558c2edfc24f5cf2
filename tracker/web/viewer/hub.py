"""Fan-out of rendered JPEG frames to every live viewer of a job.

The aggregator thread calls `publish(job_uid, seq, jpeg)` once per rendered frame. Each
viewer holds a `Subscription` with its own small bounded queue, so every concurrent
viewer sees every frame (no frame stealing between viewers, unlike seed 003's single
queue per job). A viewer that falls behind loses its OLDEST queued frames, and each
loss is counted on its subscription. `publish` never blocks on a viewer.

There is no thread per viewer: a viewer's request thread waits on its subscription's
condition variable (sharing the hub lock) with a timeout. A viewer with a frame-rate cap
(`min_interval_s`) holds only the newest frame and is woken about once per frame it is handed,
not once per frame published: it sleeps until its next frame is due, and a frame published
before then replaces the held one without a wake-up (10 viewers capped at 30 fps of a job
rendering ~100 fps were 1000 wake-ups a second for 300 frames sent, all of it CPU the pipeline
lost; 600 while a held frame still woke its viewer once before it was due).

Lifecycle of a job in the hub:
- `publish` keeps the last frame (`latest`), so a new viewer sees a picture at once.
- `close_job` ends every current subscription of the job: their `get()` hands out what
  is still queued, then raises `StreamEnded`. The last frame is kept; a viewer that
  subscribes to a closed job gets that frame and then `StreamEnded`.
- A `publish` on a closed job re-opens it (the job runs again).
- `forget_job` drops everything the hub holds for a job (the job was deleted).
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_MAXSIZE = 4
MAX_MAXSIZE = 256
KEEP_CLOSED = 256  # ended jobs whose last frame stays (their pages show it); older ones are dropped


class StreamEnded(Exception):
    """The job's stream was closed (job stopped or deleted, or the hub shut down)."""


@dataclass(frozen=True)
class SubscriberStats:
    id: int
    job_uid: str
    delivered: int
    dropped: int
    queued: int
    since: float  # wall time the subscription was opened
    skipped: int = 0  # frames replaced by a newer one under the viewer's frame-rate cap


class Subscription:
    """One viewer of one job. Use as a context manager, or call `close()` in a finally."""

    def __init__(self, hub: "ViewerHub", sub_id: int, job_uid: str, maxsize: int, min_interval_s: float = 0.0) -> None:
        self._hub = hub
        self.id = sub_id
        self.job_uid = job_uid
        self.maxsize = maxsize
        self.min_interval_s = max(0.0, float(min_interval_s))
        self.delivered = 0  # frames handed out by get()
        self.dropped = 0  # frames discarded because this viewer's queue was full
        self.skipped = 0  # frames replaced by a newer one before the cap let them out
        self._due = 0.0  # monotonic time the cap lets the next frame out
        self.since = time.time()
        self._queue: deque[tuple[int, bytes]] = deque()
        self._cond = threading.Condition(hub._lock)  # shares the hub lock
        self._ended = False  # the job was closed: drain, then StreamEnded
        self._closed = False  # the viewer went away

    # -- called by the hub with its lock held ------------------------------------------
    def _offer(self, seq: int, jpeg: bytes) -> None:
        if self.min_interval_s:
            # Capped: only the newest frame waits. Before it is due the waiter sleeps on a
            # timer that ends at the due time (see get), so only a frame that comes later wakes it.
            was_empty = not self._queue
            if self._queue:
                self._queue.popleft()
                self.skipped += 1
            self._queue.append((seq, jpeg))
            if was_empty and time.monotonic() >= self._due:
                self._cond.notify()
            return
        if len(self._queue) >= self.maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((seq, jpeg))
        self._cond.notify()

    def _end(self) -> None:
        self._ended = True
        self._cond.notify_all()

    # -- called by the viewer ------------------------------------------------------------
    def get(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """Next frame as `(seq, jpeg)`; None after `timeout` seconds without one.

        Raises StreamEnded once the job is closed and this viewer's queue is drained,
        or when the subscription itself was closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise StreamEnded(self.job_uid)
                now = time.monotonic()
                if self._queue and (self._ended or now >= self._due):
                    self.delivered += 1
                    if self.min_interval_s:  # on a grid of the interval; after a pause, from now
                        self._due = max(self._due + self.min_interval_s, now + 0.75 * self.min_interval_s)
                    return self._queue.popleft()
                if self._ended:
                    raise StreamEnded(self.job_uid)
                # Not yet due: sleep until it is, held frame or not (_offer does not wake us before).
                until = self._due if self._queue or now < self._due else None
                if deadline is not None:
                    until = deadline if until is None else min(until, deadline)
                    if now >= deadline:
                        return None
                self._cond.wait(None if until is None else max(0.0, until - now))

    def close(self) -> None:
        """Unsubscribe. Idempotent; safe from any thread."""
        self._hub._unsubscribe(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> SubscriberStats:
        with self._cond:
            return self._stats_locked()

    def _stats_locked(self) -> SubscriberStats:
        return SubscriberStats(self.id, self.job_uid, self.delivered, self.dropped, len(self._queue), self.since,
                               self.skipped)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Subscription #{self.id} job={self.job_uid!r} delivered={self.delivered} "
            f"dropped={self.dropped}>"
        )


class ViewerHub:
    """Thread-safe fan-out of JPEG frames, one bounded queue per viewer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, list[Subscription]] = {}
        self._latest: dict[str, tuple[int, bytes]] = {}
        self._closed_jobs: dict[str, None] = {}  # an ordered set
        self._published: dict[str, int] = {}
        self._ids = itertools.count(1)

    def publish(self, job_uid: str, seq: int, jpeg: bytes) -> None:
        """Hand one rendered frame to every viewer of the job. Never blocks on a viewer."""
        if not isinstance(jpeg, (bytes, bytearray, memoryview)):
            raise TypeError(f"jpeg must be bytes, not {type(jpeg).__name__}")
        frame = (int(seq), bytes(jpeg))
        with self._lock:
            self._closed_jobs.pop(job_uid, None)
            self._latest[job_uid] = frame
            self._published[job_uid] = self._published.get(job_uid, 0) + 1
            for sub in self._subs.get(job_uid, ()):
                sub._offer(*frame)

    def subscribe(
        self, job_uid: str, maxsize: int = DEFAULT_MAXSIZE, *, with_latest: bool = False,
        min_interval_s: float = 0.0,
    ) -> Subscription:
        """A new viewer of the job. With `with_latest`, its queue starts with the last frame.
        With `min_interval_s`, get() hands out at most one frame per that many seconds, the
        newest (a frame-rate cap); maxsize then does not apply."""
        if not 1 <= maxsize <= MAX_MAXSIZE:
            raise ValueError(f"maxsize must be between 1 and {MAX_MAXSIZE}, got {maxsize}")
        with self._lock:
            sub = Subscription(self, next(self._ids), job_uid, maxsize, min_interval_s)
            if with_latest and job_uid in self._latest:
                sub._offer(*self._latest[job_uid])
            if job_uid in self._closed_jobs:
                sub._end()
            self._subs.setdefault(job_uid, []).append(sub)
        log.debug("viewer #%d subscribed to job %s", sub.id, job_uid)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub._closed:
                return
            sub._closed = True
            sub._queue.clear()
            sub._cond.notify_all()
            subs = self._subs.get(sub.job_uid)
            if subs is not None:
                subs.remove(sub)
                if not subs:
                    del self._subs[sub.job_uid]
        log.debug(
            "viewer #%d left job %s (delivered=%d dropped=%d)",
            sub.id, sub.job_uid, sub.delivered, sub.dropped,
        )

    def close_job(self, job_uid: str) -> None:
        """The job stopped: end every viewer's stream once its queue is drained. The last
        frames of the newest KEEP_CLOSED ended jobs stay for their pages; older ones go."""
        with self._lock:
            self._closed_jobs.pop(job_uid, None)
            self._closed_jobs[job_uid] = None  # insertion order: oldest first
            subs = list(self._subs.get(job_uid, ()))
            for sub in subs:
                sub._end()
            while len(self._closed_jobs) > KEEP_CLOSED:
                oldest = next(iter(self._closed_jobs))
                del self._closed_jobs[oldest]
                self._latest.pop(oldest, None)
                self._published.pop(oldest, None)
        log.info("viewer streams of job %s closed (%d viewers)", job_uid, len(subs))

    def forget_job(self, job_uid: str) -> None:
        """The job was deleted: end its streams and drop its last frame and counters."""
        self.close_job(job_uid)
        with self._lock:
            self._latest.pop(job_uid, None)
            self._published.pop(job_uid, None)
            self._closed_jobs.pop(job_uid, None)

    def close(self) -> None:
        """Shutdown: end every stream of every job."""
        with self._lock:
            jobs = list(self._subs)
        for job_uid in jobs:
            self.close_job(job_uid)

    def tracked_jobs(self) -> int:
        with self._lock:
            return len({uid for uid, subs in self._subs.items() if subs} | set(self._latest) | set(self._published)
                       | set(self._closed_jobs))

    def latest(self, job_uid: str) -> tuple[int, bytes] | None:
        with self._lock:
            return self._latest.get(job_uid)

    def is_closed(self, job_uid: str) -> bool:
        with self._lock:
            return job_uid in self._closed_jobs

    def published(self, job_uid: str) -> int:
        with self._lock:
            return self._published.get(job_uid, 0)

    def subscriber_count(self, job_uid: str | None = None) -> int:
        with self._lock:
            if job_uid is not None:
                return len(self._subs.get(job_uid, ()))
            return sum(len(s) for s in self._subs.values())

    def stats(self, job_uid: str | None = None) -> list[SubscriberStats]:
        """Per-viewer counters (delivered, dropped, queued) of one job or of all jobs."""
        with self._lock:
            subs = (
                list(self._subs.get(job_uid, ()))
                if job_uid is not None
                else [s for lst in self._subs.values() for s in lst]
            )
            return [s._stats_locked() for s in subs]
