"""Where a resumed generator continues (tracker.runtime.resume): never at a sequence number
the old process may have used."""
from __future__ import annotations

from tracker.runtime.aggregator import FLUSH_BATCH
from tracker.runtime.resume import resume_point


def test_a_job_that_never_sent_starts_at_zero():
    at = resume_point(None, {}, max_in_flight=8)
    assert (at.first_seq, at.expect_from, at.start_ts, at.counters) == (0, 0, 0.0, {})


def test_after_a_clean_stop_it_continues_exactly_where_the_generator_stopped():
    at = resume_point((9, 0.9), {"next_seq": 12, "sent_ts": 1.1, "stopped_cleanly": True, "frames_sent": 12},
                      max_in_flight=8)
    # 10 and 11 were in flight at the stop: the aggregator waits for them, the generator neither
    # reuses their numbers nor sends their source frames again.
    assert (at.first_seq, at.expect_from, at.start_ts) == (12, 10, 1.1)
    assert at.counters == {"frames_sent": 12}


def test_after_a_crash_it_leaves_room_for_everything_the_old_process_can_have_sent():
    stats = {"next_seq": 12, "stopped_cleanly": False, "frames_read": 40, "fps_in": 9.5}
    at = resume_point((9, 0.9), stats, max_in_flight=8)
    assert at.first_seq == 12 + 8 + FLUSH_BATCH and at.expect_from == 10
    assert at.counters == {"frames_read": 40}, "rates are not carried, counters are"
    # Stats older than the stored frames (the last publish was lost with the process).
    assert resume_point((99, 9.9), {"next_seq": 12}, max_in_flight=8).first_seq == 100 + 8 + FLUSH_BATCH
