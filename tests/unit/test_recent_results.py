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
