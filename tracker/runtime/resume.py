"""Where a job's generator continues after its tracker (or edge) stopped.

A sequence number is never used twice: a frame the old process sent may still be on a queue
or in a worker, and a new frame with its number would be stored in its place (or dropped as
its duplicate). The old process records the next number it would use in the job's stats:
exactly when it stops cleanly, about once a second while it runs. After a crash the new
generator starts a margin past that number, wide enough for everything the old one can have
sent since (its window of unacknowledged frames, and the frames its aggregator had received
but not stored yet). The aggregator waits for the numbers in between like for any other
gap: the old frames that arrive are stored, the rest are recorded lost after `reorder_wait_s`
(after a crash that includes numbers that were never sent: counted, never silently gone).
"""
from __future__ import annotations

from dataclasses import dataclass

from tracker.runtime.aggregator import FLUSH_BATCH

# Generator counters carried over a restart, so that a job's stats do not start from zero.
GENERATOR_COUNTERS = ("frames_read", "frames_skipped", "frames_sent", "frames_dropped", "frames_dropped_broker",
                      "frames_tracked", "profile_segments")


@dataclass(frozen=True)
class ResumePoint:
    first_seq: int       # the generator's next sequence number
    expect_from: int     # the aggregator's next expected one (the last stored + 1)
    start_ts: float      # source time of the newest frame known sent: the generator skips up to it
    counters: dict       # the old generator's counters (GENERATOR_COUNTERS)


def resume_point(last: tuple[int, float] | None, stats: dict | None, max_in_flight: int) -> ResumePoint:
    """`last` = the store's (highest stored seq, latest capture_ts); `stats` = the job's stats."""
    stats = stats or {}
    stored_next = last[0] + 1 if last else 0
    # Frames sent but not stored are on their way (or lost and counted): not sent again. After a
    # crash up to a second of frames after the last recorded `sent_ts` is sent twice.
    start_ts = max(last[1] if last and last[1] >= 0 else 0.0, float(stats.get("sent_ts") or 0.0))
    recorded = int(stats.get("next_seq") or 0)
    if stats.get("stopped_cleanly") or (not recorded and not stored_next):
        first = max(stored_next, recorded)  # exact (or a job that never sent a frame)
    else:
        first = max(stored_next, recorded) + max_in_flight + FLUSH_BATCH
    counters = {k: stats[k] for k in GENERATOR_COUNTERS if isinstance(stats.get(k), int)}
    return ResumePoint(first, stored_next, start_ts, counters)
