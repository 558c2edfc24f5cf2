"""Where a job's generator continues after its tracker (or edge) stopped.

A sequence number is never used twice: a frame the old process sent may still be on a queue
or in a worker, and a new frame with its number would be stored in its place (or dropped as
its duplicate). So numbers are handed out in blocks, each recorded in the job's stats as
`seq_reserved` before its first number is used (a hi-lo allocator, `SeqReservation`). After a
crash the new generator starts at the old reservation's end: exact at any frame rate, where a
margin sized for the old process's window was not (at 40+ frames/s it sent more than the margin
between two stats records).

The numbers between the last one known sent (the highest stored, or the `next_seq` recorded
about once a second) and the reservation's end may or may not have been used. The aggregator
stores those that arrive and counts the rest as `restart_unused` (services/aggregator.py),
never as lost frames that did not exist. Numbers below are known sent: waited for like any
other gap, stored, or recorded lost.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from services.aggregator import FLUSH_BATCH

log = logging.getLogger(__name__)

# Generator counters carried over a restart, so that a job's stats do not start from zero.
GENERATOR_COUNTERS = ("frames_read", "frames_skipped", "frames_sent", "frames_dropped", "frames_dropped_broker",
                      "frames_tracked", "profile_segments", "frames_unreserved")
# Numbers reserved at a time. The next block is asked for half-way through the current one,
# so a store (or cloud) away for as long as 512 frames take (51 s at 10 fps, 17 s at 30) costs
# nothing; past that the generator drops frames, counted, until the reservation is recorded.
SEQ_BLOCK = 1024
RETRY_S = 1.0


@dataclass(frozen=True)
class ResumePoint:
    first_seq: int       # the generator's next sequence number
    expect_from: int     # the aggregator's next expected one (the last stored + 1)
    sent_before: int     # every number below was sent; from here to first_seq, maybe not
    start_ts: float      # source time of the newest frame known sent: the generator skips up to it
    counters: dict       # the old generator's counters (GENERATOR_COUNTERS)


def resume_point(last: tuple[int, float] | None, stats: dict | None, max_in_flight: int) -> ResumePoint:
    """`last` = the store's (highest stored seq, latest capture_ts); `stats` = the job's stats."""
    stats = stats or {}
    stored_next = last[0] + 1 if last else 0
    # Frames sent but not stored are on their way (or lost and counted): not sent again. After a
    # crash up to a second of frames after the last recorded `sent_ts` is sent twice.
    start_ts = max(last[1] if last and last[1] >= 0 else 0.0, float(stats.get("sent_ts") or 0.0))
    sent_before = max(stored_next, int(stats.get("next_seq") or 0))
    reserved = stats.get("seq_reserved")
    if stats.get("stopped_cleanly"):
        first = sent_before  # exact
    elif isinstance(reserved, int):
        first = max(sent_before, reserved)  # a crash in a job's first second included
    elif not sent_before:
        first = 0  # a job that never sent a frame
    else:  # recorded by a version before reservations: room for its window and unstored frames
        first = sent_before + max_in_flight + FLUSH_BATCH
    counters = {k: stats[k] for k in GENERATOR_COUNTERS if isinstance(stats.get(k), int)}
    return ResumePoint(first, stored_next, sent_before, start_ts, counters)


class SeqReservation:
    """`reservation(seq)` is True when `seq` may be used. `record(until)` writes the new end of
    the reservation where a restart reads it (the store, or the cloud for an edge) and raises if
    it cannot; until it succeeds, the numbers already reserved are used up and then refused."""

    def __init__(self, record: Callable[[int], None], first_seq: int, block: int = SEQ_BLOCK,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.record = record
        self.block = block
        self.until = first_seq  # nothing reserved yet
        self.clock = clock
        self._next_try = float("-inf")

    def __call__(self, seq: int) -> bool:
        if seq >= self.until - self.block // 2 and self.clock() >= self._next_try:
            try:
                self.record(seq + self.block)
                self.until = seq + self.block
            except Exception as exc:  # the store or the cloud away: keep using what is reserved
                self._next_try = self.clock() + RETRY_S
                log.warning("could not reserve sequence numbers past %d (%s); %d left", seq, exc,
                            max(0, self.until - seq))
        return seq < self.until
