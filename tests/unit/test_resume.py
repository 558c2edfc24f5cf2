"""Where a resumed generator continues (tracker.runtime.resume): never at a sequence number
the old process may have used, and how numbers are reserved before use."""
from __future__ import annotations

from services.aggregator import FLUSH_BATCH
from tracker.runtime.resume import RETRY_S, SeqReservation, resume_point


def test_a_job_that_never_sent_starts_at_zero():
    at = resume_point(None, {}, max_in_flight=8)
    assert (at.first_seq, at.expect_from, at.sent_before, at.start_ts, at.counters) == (0, 0, 0, 0.0, {})


def test_after_a_clean_stop_it_continues_exactly_where_the_generator_stopped():
    at = resume_point((9, 0.9), {"next_seq": 12, "seq_reserved": 1036, "sent_ts": 1.1, "stopped_cleanly": True,
                                 "frames_sent": 12}, max_in_flight=8)
    # 10 and 11 were in flight at the stop: the aggregator waits for them, the generator neither
    # reuses their numbers nor sends their source frames again.
    assert (at.first_seq, at.expect_from, at.sent_before, at.start_ts) == (12, 10, 12, 1.1)
    assert at.counters == {"frames_sent": 12}


def test_after_a_crash_it_continues_past_everything_the_old_process_reserved():
    stats = {"next_seq": 12, "seq_reserved": 1036, "stopped_cleanly": False, "frames_read": 40, "fps_in": 9.5}
    at = resume_point((9, 0.9), stats, max_in_flight=8)
    assert (at.first_seq, at.expect_from, at.sent_before) == (1036, 10, 12)
    assert at.counters == {"frames_read": 40}, "rates are not carried, counters are"
    # Stats older than the stored frames (the last publish was lost with the process).
    at = resume_point((99, 9.9), {"next_seq": 12, "seq_reserved": 1036}, max_in_flight=8)
    assert (at.first_seq, at.sent_before) == (1036, 100)


def test_a_crash_before_anything_was_stored_or_recorded_still_skips_the_reservation():
    at = resume_point(None, {"next_seq": 0, "seq_reserved": 1024, "stopped_cleanly": False}, max_in_flight=8)
    assert (at.first_seq, at.expect_from, at.sent_before) == (1024, 0, 0)


def test_stats_from_before_reservations_leave_a_margin_for_the_old_window():
    at = resume_point((9, 0.9), {"next_seq": 12, "stopped_cleanly": False}, max_in_flight=8)
    assert (at.first_seq, at.sent_before) == (12 + 8 + FLUSH_BATCH, 12)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_numbers_are_used_only_once_recorded_and_renewed_half_way():
    recorded: list[int] = []
    reserve = SeqReservation(recorded.append, first_seq=100, block=8, clock=_Clock())
    assert reserve(100) and recorded == [108], "the first number reserves a block"
    assert all(reserve(s) for s in range(101, 104)) and recorded == [108]
    assert reserve(104) and recorded == [108, 112], "half-way through, the next block"


def test_with_the_store_away_it_uses_up_its_block_then_refuses_and_retries_each_second():
    clock, recorded, away = _Clock(), [], [True]

    def record(until: int) -> None:
        if away[0]:
            raise ConnectionError("store away")
        recorded.append(until)

    reserve = SeqReservation(record, first_seq=0, block=8, clock=clock)
    away[0] = False
    assert reserve(0) and recorded == [8]
    away[0] = True
    assert [reserve(s) for s in range(4, 10)] == [True] * 4 + [False] * 2, "up to the recorded end, no further"
    away[0] = False
    assert not reserve(8) and recorded == [8], "the next try waits RETRY_S"
    clock.t += RETRY_S
    assert reserve(8) and recorded == [8, 16]


def test_a_failing_recorder_never_lets_a_number_through_unrecorded():
    def record(until: int) -> None:
        raise OSError("no store")

    reserve = SeqReservation(record, first_seq=5, block=8, clock=_Clock())
    assert not any(reserve(5) for _ in range(3)), "a generator that never recorded a block sends nothing"
