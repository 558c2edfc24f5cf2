"""Job control (every state transition and its side effects), the node-load estimator and the
aggregator's per-job state, on a real store."""
from __future__ import annotations

import time

import pytest

from scheduler.interface import Plan
from services.codec import Envelope, StageTiming
from services.dag import DagSpec
from services.settings import Settings
from tracker.runtime.aggregator import Aggregator
from tracker.runtime.job_control import JobControl, RecordedEffects
from tracker.runtime.node_load import NodeLoad
from tracker.store import JobEnded
from tracker.store.jobs import JobState
from tracker.web.viewer.hub import ViewerHub

DAG = DagSpec(stages=[{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}}])
PLAN = Plan.model_validate({"video_conf": {"resolution": "360p"}, "flow_mapping": {"probe": {"node": "cloud"}},
                            "planner": "test", "reason": "test"})


class FailingSource(RecordedEffects):
    def job_submitted(self, job):
        super().job_submitted(job)
        return "video source failed: no such camera"


def _states(store, uid: str) -> list[str]:
    return [t.to_state.value for t in store.transitions(uid)]


def test_a_planned_job_goes_exec_and_a_lost_plan_goes_back_to_unsched(store):
    effects = RecordedEffects()
    control = JobControl(store, effects)
    job = control.submit(dag=DAG, source="synthetic://64x48@10/20")
    assert job.state is JobState.UNSCHED and effects.calls == [("submitted", job.uid), ("replan", job.uid)]
    control.apply_plan(job.uid, PLAN)
    control.apply_plan(job.uid, PLAN.model_copy(update={"reason": "again"}))
    assert store.get_job(job.uid).state is JobState.EXEC
    assert control.plan_lost(job.uid, "node edge-1 down")
    assert store.get_job(job.uid).state is JobState.UNSCHED
    assert store.get_job(job.uid).state_reason == "node edge-1 down"
    assert effects.calls[-2:] == [("paused", job.uid), ("replan", job.uid)]
    assert not control.plan_lost(job.uid, "again")  # only a running job loses its plan
    control.apply_plan(job.uid, PLAN)
    assert _states(store, job.uid) == ["UNSCHED", "EXEC", "UNSCHED", "EXEC"]


def test_fixed_plans_start_at_once_and_are_kept_when_a_node_goes_down(store):
    control = JobControl(store, RecordedEffects())
    job = control.submit(dag=DAG, source="synthetic://64x48@10/20", fixed_plan=PLAN)
    assert job.state is JobState.EXEC
    assert not control.plan_lost(job.uid, "node down")
    assert store.get_job(job.uid).state is JobState.EXEC


def test_a_source_that_cannot_open_fails_the_job(store):
    control = JobControl(store, FailingSource())
    job = control.submit(dag=DAG, source="rtsp://camera.local/x")
    assert job.state is JobState.FAILED and "no such camera" in job.state_reason
    assert ("settling", job.uid) in control.effects.calls and ("stopped", job.uid) in control.effects.calls


def test_finish_settles_first_and_tolerates_an_ended_job(store):
    effects = RecordedEffects()
    control = JobControl(store, effects)
    uid = control.submit(dag=DAG, source="synthetic://64x48@10/20", fixed_plan=PLAN).uid
    control.finish(uid, JobState.DONE, "end of video")
    assert effects.calls[-2:] == [("settling", uid), ("stopped", uid)]
    assert store.get_job(uid).state is JobState.DONE
    control.finish(uid, JobState.FAILED, "late report")  # already DONE: logged, not raised
    assert store.get_job(uid).state is JobState.DONE
    with pytest.raises(JobEnded):
        control.cancel(uid)
    control.delete(uid)
    assert store.find_job(uid) is None and effects.calls[-1] == ("deleted", uid)


def test_node_load_is_the_workers_busy_share_with_an_injected_clock():
    now = [1000.0]
    load = NodeLoad(lambda: [("edge", 2)], window_s=5.0, clock=lambda: now[0])
    assert load.worker_busy("nowhere") is None
    for _ in range(10):
        load.record("a", "edge", 0.5)  # 5 s of work in the window on 2 processes: half busy
    load.record("b", "edge", 1.0)
    assert load.worker_busy("edge") == pytest.approx(0.6)
    assert load.background_load("a", "edge") == pytest.approx(0.1)  # only b's share
    assert load.shares("a", "edge") == pytest.approx((0.6, 0.5))  # what the planner subtracts for a
    assert load.shares("c", "edge") == pytest.approx((0.6, 0.0)) and ("c", "edge") not in load._busy
    now[0] += 6.0  # the window moved past every sample
    assert load.worker_busy("edge") == 0.0
    load.forget("a")
    load.forget("b")
    assert load.jobs() == set()


def _frame(uid: str, seq: int, plan_id: int) -> Envelope:
    return Envelope(job=uid, seq=seq, plan=plan_id, capture_ts=seq / 10, sent_at=0.0, width=64, height=48,
                    outputs={"probe": {"width": 64, "height": 48, "brightness": 0.5}},
                    timings=[StageTiming(stage="probe", node="cloud", worker="w", enqueued=0.0, started=0.0,
                                         finished=0.01)])


def test_the_aggregator_stores_in_order_and_frees_a_job_when_it_ends(store):
    from tasks.app import make_celery
    from tasks.consumers import AckPublisher

    settings = Settings()
    acked: list[int] = []
    agg = Aggregator(settings, store, ViewerHub(), AckPublisher(make_celery(settings)),
                     NodeLoad(lambda: [("cloud", 1)]), lambda job, seq: acked.append(seq))
    control = JobControl(store, RecordedEffects())
    uid = control.submit(dag=DAG, source="synthetic://64x48@10/20", fixed_plan=PLAN).uid
    plan_id = store.current_plan(uid)[0]
    agg.start_job(uid, DAG, 0)
    agg.remember_plan(uid, plan_id, PLAN)
    for seq in (1, 0, 2):
        agg.on_frame(_frame(uid, seq, plan_id))
    agg.flush(force=True)
    assert [r.seq for r in store.results(uid, after_seq=-1, limit=10)] == [0, 1, 2]
    assert sorted(acked) == [0, 1, 2] and agg.stats(uid)["frames_out"] == 3
    assert store.recent_observations(uid, limit=10), "service times became observations"
    agg.forget(uid)
    assert agg.tracked_jobs() == 0 and agg.stats(uid) is None
    agg.on_frame(_frame(uid, 3, plan_id))  # still in flight when the job ended: acked, not kept
    assert acked[-1] == 3 and agg.frames_after_end == 1 and agg.tracked_jobs() == 0


def test_a_frame_after_its_reorder_wait_is_stored_late_in_place_of_its_lost_row(store):
    from tasks.app import make_celery
    from tasks.consumers import AckPublisher

    settings = Settings(reorder_wait_s=0.05)
    agg = Aggregator(settings, store, ViewerHub(), AckPublisher(make_celery(settings)),
                     NodeLoad(lambda: [("cloud", 1)]), lambda job, seq: None)
    control = JobControl(store, RecordedEffects())
    uid = control.submit(dag=DAG, source="synthetic://64x48@10/20", fixed_plan=PLAN).uid
    plan_id = store.current_plan(uid)[0]
    agg.start_job(uid, DAG, 0)
    agg.remember_plan(uid, plan_id, PLAN)
    for seq in (0, 2):
        agg.on_frame(_frame(uid, seq, plan_id))
    time.sleep(0.1)
    agg.expire()                                   # frame 1 waited too long: declared lost
    agg.flush(force=True)
    assert [(r.seq, r.lost) for r in store.results(uid, after_seq=-1, limit=10)] == [(0, False), (1, True), (2, False)]
    assert agg.stats(uid)["frames_lost"] == 1
    observed = len(store.recent_observations(uid, limit=100))
    agg.on_frame(_frame(uid, 1, plan_id))          # ... and then arrives
    agg.flush(force=True)
    rows = store.results(uid, after_seq=-1, limit=10)
    assert [(r.seq, r.lost, r.late) for r in rows] == [(0, False, False), (1, False, True), (2, False, False)]
    assert rows[1].outputs["probe"]["width"] == 64
    stats = agg.stats(uid)
    assert (stats["frames_lost"], stats["frames_late"], stats["frames_out"]) == (0, 1, 3)
    assert len(store.recent_observations(uid, limit=100)) == observed, "a late frame's time is no observation"


class _StallingStore:
    """The real store, whose save_frames blocks until released: a store call that does not return."""

    def __init__(self, store) -> None:
        import threading

        self._store, self.armed, self.release, self.entered = store, False, threading.Event(), threading.Event()

    def save_frames(self, uid, records):
        if self.armed:
            self.entered.set()
            self.release.wait(10)
        return self._store.save_frames(uid, records)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_store_call_that_does_not_return_stalls_neither_the_consumer_nor_a_stop(store, monkeypatch):
    import threading

    from tasks.app import make_celery
    from tasks.consumers import AckPublisher
    from tracker.runtime import aggregator as aggregator_module

    settings = Settings()
    stalling = _StallingStore(store)
    acked: list[int] = []
    agg = Aggregator(settings, stalling, ViewerHub(), AckPublisher(make_celery(settings)),
                     NodeLoad(lambda: [("cloud", 1)]), lambda job, seq: acked.append(seq))
    uid = JobControl(store, RecordedEffects()).submit(dag=DAG, source="synthetic://64x48@10/20", fixed_plan=PLAN).uid
    plan_id = store.current_plan(uid)[0]
    agg.start_job(uid, DAG, 0)
    agg.remember_plan(uid, plan_id, PLAN)
    stalling.armed = True
    storing = threading.Thread(target=agg.on_frame, args=(_frame(uid, 0, plan_id),))
    storing.start()
    assert stalling.entered.wait(5)
    t0 = time.monotonic()
    for seq in range(1, 40):  # the consumer keeps receiving and acking while the store hangs
        agg.on_frame(_frame(uid, seq, plan_id))
    agg.expire()
    assert time.monotonic() - t0 < 1.0 and acked == list(range(1, 40))
    monkeypatch.setattr(aggregator_module, "FORCED_FLUSH_WAIT_S", 0.2)
    assert agg.flush(force=True) is False  # a stop gives up on the hung call instead of hanging with it
    stalling.release.set()
    storing.join(5)
    assert agg.flush(force=True) is True and sorted(acked) == list(range(40))
    assert [r.seq for r in store.results(uid, after_seq=-1, limit=100)] == list(range(40))
