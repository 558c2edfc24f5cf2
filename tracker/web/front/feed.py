"""What the API front process is told by the tracker core: new results, plans and rendered frames.

The core's aggregator and runtime keep writing to a `RecentResults` and a `ViewerHub` as
they always have; here both are mirrored, call for call, into the front process, which
applies the same calls to its own copies and serves result polls and MJPEG streams from
them (tracker.web.front.process). A poll there never waits for the core's GIL.

The link is a pipe to the core's own child process: local, never a network socket, so its
messages are plain pickles of our own record types. A sender thread owns the pipe; calls
reach it through a bounded queue, so the data plane never blocks on the front. When that
queue is full a rendered frame or a batch of records is dropped and counted: the front's
recent-results ring restarts at the next batch and polls of the missing frames read the
store; a viewer misses a picture. Calls that end a job's stream or free its state wait a
moment for room instead, since dropping them would leave a viewer hanging.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from tracker.store.recent_results import RecentResults
from tracker.web.viewer.hub import ViewerHub

log = logging.getLogger(__name__)

FEED_QUEUE = 2048
CONTROL_PUT_TIMEOUT_S = 2.0
# What the front may be asked to do, by target: any other message is refused there.
MIRRORED: dict[str, frozenset[str]] = {
    "recent": frozenset({"start", "add", "set_plan", "forget"}),
    "hub": frozenset({"publish", "close_job", "forget_job"}),
}
DROPPABLE = frozenset({("recent", "add"), ("hub", "publish")})
_STOP = object()


class FeedSender:
    """The core's end: `send(target, method, *args)` from any thread, one thread writes the pipe.
    `attach(conn)` gives it the pipe of a (re)started front; until then, and after the pipe
    breaks, calls are counted as dropped."""

    def __init__(self, conn=None, maxsize: int = FEED_QUEUE) -> None:
        self._conn = conn
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name="vdag-front-feed", daemon=True)
        self.dropped = 0  # calls not delivered because the queue was full or the front gone
        self.sent = 0

    @property
    def broken(self) -> bool:
        return self._conn is None

    def attach(self, conn) -> None:
        self._conn = conn
        if not self._thread.is_alive():
            self._thread.start()

    def send(self, target: str, method: str, *args: Any) -> None:
        if self._conn is None:
            self.dropped += 1
            return
        try:
            if (target, method) in DROPPABLE:
                self._queue.put_nowait((target, method, args))
            else:
                self._queue.put((target, method, args), timeout=CONTROL_PUT_TIMEOUT_S)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("API front feed full: %d calls dropped so far (last: %s.%s)", self.dropped, target, method)

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, then end the writer thread."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            self._conn = None  # the writer is stuck on a front that reads nothing
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            conn = self._conn
            if conn is None:
                self.dropped += 1
                continue
            try:
                conn.send(item)
                self.sent += 1
            except (OSError, ValueError, EOFError) as exc:  # the front process went away
                if self._conn is conn:
                    log.error("API front feed broken (%s): dropping until the front is back", exc)
                    self._conn = None
                self.dropped += 1
        log.info("API front feed stopped: %d sent, %d dropped", self.sent, self.dropped)


class MirroredRecentResults(RecentResults):
    """The core's recent results; every change is also sent to the front."""

    def __init__(self, feed: FeedSender, per_job: int = 512) -> None:
        super().__init__(per_job)
        self._feed = feed

    def start(self, job_uid: str, next_seq: int) -> None:
        super().start(job_uid, next_seq)
        self._feed.send("recent", "start", job_uid, next_seq)

    def add(self, job_uid: str, records: list) -> None:
        super().add(job_uid, records)
        self._feed.send("recent", "add", job_uid, records)

    def set_plan(self, job_uid: str, live) -> None:
        super().set_plan(job_uid, live)
        self._feed.send("recent", "set_plan", job_uid, live)

    def forget(self, job_uid: str) -> None:
        super().forget(job_uid)
        self._feed.send("recent", "forget", job_uid)


class MirroredHub(ViewerHub):
    """The core's viewer hub; published frames and job ends are also sent to the front."""

    def __init__(self, feed: FeedSender) -> None:
        super().__init__()
        self._feed = feed

    def publish(self, job_uid: str, seq: int, jpeg: bytes) -> None:
        super().publish(job_uid, seq, jpeg)
        self._feed.send("hub", "publish", job_uid, seq, jpeg)

    def close_job(self, job_uid: str) -> None:
        super().close_job(job_uid)
        self._feed.send("hub", "close_job", job_uid)

    def forget_job(self, job_uid: str) -> None:
        super().forget_job(job_uid)
        self._feed.send("hub", "forget_job", job_uid)


def apply(message: Any, recent: RecentResults, hub: ViewerHub) -> None:
    """The front's end: one received call, applied to its own copies."""
    target, method, args = message
    if method not in MIRRORED.get(target, ()):
        raise ValueError(f"unexpected feed call {target}.{method}")
    getattr(recent if target == "recent" else hub, method)(*args)
