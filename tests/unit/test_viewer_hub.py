"""The viewer hub alone: fan-out to every subscriber, bounded queues that drop the oldest,
a publisher that never blocks, and the end of a job's stream."""
from __future__ import annotations

import threading
import time

import pytest

from tests.support.viewer import JOB, fake_jpeg
from tracker.web.viewer.hub import StreamEnded, ViewerHub


@pytest.fixture
def hub() -> ViewerHub:
    return ViewerHub()


def test_fan_out_every_subscriber_gets_every_frame(hub: ViewerHub) -> None:
    subs = [hub.subscribe(JOB) for _ in range(10)]
    got: list[list[int]] = [[] for _ in subs]

    def reader(i: int) -> None:
        while True:
            try:
                item = subs[i].get(timeout=2)
            except StreamEnded:
                return
            if item is not None:
                got[i].append(item[0])

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(10)]
    for t in readers:
        t.start()
    for seq in range(200):
        hub.publish(JOB, seq, fake_jpeg(seq, 100))
        time.sleep(0.002)  # ~500 fps: modest for in-process readers
    hub.close_job(JOB)
    for t in readers:
        t.join(5)
        assert not t.is_alive()
    for sub, seqs in zip(subs, got):
        assert seqs == list(range(200)), f"{sub}: missed {sorted(set(range(200)) - set(seqs))[:10]}"
        assert sub.delivered == 200 and sub.dropped == 0
        sub.close()
    assert hub.subscriber_count() == 0


def test_slow_subscriber_drops_oldest_and_counts(hub: ViewerHub) -> None:
    fast, slow = hub.subscribe(JOB, maxsize=4), hub.subscribe(JOB, maxsize=4)
    for seq in range(10):
        hub.publish(JOB, seq, fake_jpeg(seq, 10))
        assert fast.get(timeout=0)[0] == seq  # the fast viewer keeps up
    # The slow viewer never read: it holds the 4 newest frames and counted 6 drops.
    assert slow.dropped == 6 and fast.dropped == 0
    assert [slow.get(timeout=0)[0] for _ in range(4)] == [6, 7, 8, 9]
    assert slow.get(timeout=0.01) is None
    assert (slow.delivered, fast.delivered) == (4, 10)
    stats = {s.id: s for s in hub.stats(JOB)}
    assert stats[slow.id].dropped == 6 and stats[fast.id].delivered == 10


def test_publish_never_blocks_on_a_stuck_viewer(hub: ViewerHub) -> None:
    with hub.subscribe(JOB, maxsize=2) as stuck:
        t0 = time.perf_counter()
        for seq in range(5000):
            hub.publish(JOB, seq, b"x")
        assert time.perf_counter() - t0 < 2
        assert stuck.dropped == 4998 and stuck.stats().queued == 2


def test_close_job_drains_then_ends_and_wakes_waiters(hub: ViewerHub) -> None:
    sub = hub.subscribe(JOB)
    other = hub.subscribe("job-2")
    hub.publish(JOB, 1, b"a")
    waiter_result: list[object] = []
    idle = hub.subscribe(JOB)
    idle.get(timeout=0)  # empty its queue

    def wait_on_idle() -> None:
        idle.get(timeout=0)
        try:
            waiter_result.append(idle.get(timeout=10))
        except StreamEnded as exc:
            waiter_result.append(exc)

    t = threading.Thread(target=wait_on_idle)
    t.start()
    time.sleep(0.05)
    hub.close_job(JOB)
    t.join(2)
    assert not t.is_alive() and isinstance(waiter_result[0], StreamEnded)
    assert sub.get(timeout=0) == (1, b"a")  # queued frame still handed out
    with pytest.raises(StreamEnded):
        sub.get(timeout=1)
    assert other.get(timeout=0) is None  # other jobs untouched
    # A new viewer of the closed job sees the last frame, then the end.
    with hub.subscribe(JOB, with_latest=True) as late:
        assert late.get(timeout=0) == (1, b"a")
        with pytest.raises(StreamEnded):
            late.get(timeout=0)
    # Publishing again re-opens the job.
    hub.publish(JOB, 2, b"b")
    assert not hub.is_closed(JOB)


def test_subscription_lifecycle_and_latest(hub: ViewerHub) -> None:
    assert hub.latest(JOB) is None
    hub.publish(JOB, 7, b"seven")
    assert hub.latest(JOB) == (7, b"seven")
    with hub.subscribe(JOB, with_latest=True) as sub:
        assert hub.subscriber_count(JOB) == 1
        assert sub.get(timeout=0) == (7, b"seven")
    assert hub.subscriber_count() == 0
    sub.close()  # idempotent
    with pytest.raises(StreamEnded):
        sub.get(timeout=0)
    with pytest.raises(ValueError):
        hub.subscribe(JOB, maxsize=0)
    with pytest.raises(TypeError):
        hub.publish(JOB, 1, "not bytes")  # type: ignore[arg-type]
    hub.forget_job(JOB)
    assert hub.latest(JOB) is None and hub.published(JOB) == 0


def test_a_capped_viewer_gets_the_newest_frame_at_its_rate_and_few_wakeups(hub: ViewerHub) -> None:
    """20 fps cap, a job publishing ~400 fps for half a second: about 10 frames handed out, each
    the newest at that moment, at least ~the interval apart, and the reader thread woken about
    once per frame handed out, not once per frame published."""
    sub = hub.subscribe(JOB, min_interval_s=0.05)
    wakeups = 0
    wait = sub._cond.wait

    def counted_wait(timeout=None):
        nonlocal wakeups
        wakeups += 1
        return wait(timeout)

    sub._cond.wait = counted_wait
    got: list[tuple[int, float]] = []

    def reader() -> None:
        while True:
            try:
                item = sub.get(timeout=2)
            except StreamEnded:
                return
            if item is not None:
                got.append((item[0], time.monotonic()))

    t = threading.Thread(target=reader)
    t.start()
    published = 200
    for seq in range(published):
        hub.publish(JOB, seq, fake_jpeg(seq))
        time.sleep(0.0025)
    time.sleep(0.1)
    hub.close_job(JOB)
    t.join(5)
    gaps = [b - a for (_, a), (_, b) in zip(got, got[1:])]
    assert 6 <= len(got) <= 16, got
    assert min(gaps) >= 0.035
    assert got[-1][0] == published - 1  # the newest frame, sent once it was due
    assert [s for s, _ in got] == sorted(s for s, _ in got)
    assert sub.delivered + sub.skipped == published and sub.dropped == 0
    # About one per frame handed out (14 for 12 here); 24 while a held frame still woke the
    # reader once before it was due.
    assert wakeups <= 1.5 * len(got) + 2, (wakeups, len(got))
