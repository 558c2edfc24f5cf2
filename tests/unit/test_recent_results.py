from services.records import FrameRecord
from tracker.store.recent_results import RecentResults


def _r(seq: int) -> FrameRecord:
    return FrameRecord(job_uid="j", seq=seq, plan_id=1, capture_ts=seq, width=1, height=1, latency_s=0, outputs={})


def test_serves_a_suffix_and_defers_older_reads_to_the_store():
    recent = RecentResults(per_job=4)
    assert recent.after("j", -1, 10) is None and recent.total("j") is None
    recent.add("j", [_r(i) for i in range(6)])  # keeps 2..5
    assert [r.seq for r in recent.after("j", 3, 10)] == [4, 5]
    assert [r.seq for r in recent.after("j", 1, 2)] == [2, 3]
    assert recent.after("j", 5, 10) == []
    assert recent.after("j", 0, 10) is None  # seq 1 is only in the store
    assert [r.seq for r in recent.recent("j", 3)] == [3, 4, 5] and recent.recent("j", 10) is None
    assert recent.total("j") == 6


def test_a_gap_starts_a_new_run_and_forget_drops_the_job():
    recent = RecentResults()
    recent.add("j", [_r(0), _r(1)])
    recent.add("j", [_r(7)])
    assert recent.after("j", 1, 10) is None and [r.seq for r in recent.after("j", 6, 10)] == [7]
    recent.forget("j")
    assert recent.total("j") is None


def test_a_started_job_is_answered_from_memory_before_its_first_frame():
    recent = RecentResults()
    recent.start("j", 0)
    assert recent.after("j", -1, 10) == [] and recent.recent("j", 10) == [] and recent.total("j") == 0
    recent.add("j", [_r(0), _r(1)])
    assert [r.seq for r in recent.after("j", -1, 10)] == [0, 1] and recent.total("j") == 2
    # Resumed at 40 (0..39 stored before): newer polls from memory, older ones from the store.
    recent.forget("j")
    recent.start("j", 40)
    assert recent.after("j", 39, 10) == [] and recent.total("j") == 40
    assert recent.after("j", 30, 10) is None and recent.recent("j", 10) is None
    recent.add("j", [_r(43)])  # not where it was expected: memory holds only what follows
    assert recent.after("j", 39, 10) is None and [r.seq for r in recent.after("j", 42, 10)] == [43]
    recent.start("j", 0)  # a start while memory holds frames changes nothing
    assert recent.total("j") == 44
    recent.forget("j")
    assert recent.after("j", -1, 10) is None and recent.tracked_jobs() == 0
