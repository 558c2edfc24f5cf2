"""The job store on SQLite and PostgreSQL: jobs and their state machine, plans, idempotent
frame results, observations, stats, nodes, and concurrent use from several threads."""
from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest

from scheduler.interface import NodeInfo, Observation, Plan, UserConstraint
from services.dag import DagSpec
from services.records import FrameRecord, StageRecord
from tracker.store import JobEnded, JobExists, Store
from tracker.store.jobs import ALLOWED, IllegalTransition, JobNotFound, JobState, check_transition
from tracker.store.models import utcnow


def count_dag() -> DagSpec:
    return DagSpec.model_validate({
        "stages": [
            {"name": "det", "service": "person_detection", "inputs": {"image": "generator.image"}},
            {"name": "count", "service": "object_count", "inputs": {"detections": "det.detections"}},
        ]
    })


def a_plan(planner: str = "static", grade: str = "n") -> Plan:
    return Plan.model_validate({
        "video_conf": {"resolution": "360p", "fps": 5},
        "flow_mapping": {"det": {"node": "cloud", "grade": grade}, "count": {"node": "edge1", "node_role": "edge"}},
        "planner": planner, "reason": f"{planner} says so",
    })


def frame(uid: str, seq: int, plan_id: int = 1, **kw) -> FrameRecord:
    return FrameRecord(
        job_uid=uid, seq=seq, plan_id=plan_id, capture_ts=seq / 10, width=640, height=360, latency_s=0.1 + seq / 1000,
        outputs={"count": {"counts": {"person": seq % 4}, "total": seq % 4}},
        stages=[StageRecord("det", "cloud", "w1", 0.01, 0.05), StageRecord("count", "edge1", "w2", 0.002, 0.001)],
        **kw,
    )


def new_job(store: Store, **kw):
    return store.create_job(dag=count_dag(), source="synthetic://64x48@10/20", **kw)


# -- state machine (no database) -------------------------------------------------------------

@pytest.mark.parametrize("old,new", list(itertools.product(JobState, JobState)))
def test_transition_table(old, new):
    legal = {
        (JobState.UNSCHED, JobState.EXEC), (JobState.UNSCHED, JobState.FAILED), (JobState.UNSCHED, JobState.CANCELLED),
        (JobState.EXEC, JobState.DONE), (JobState.EXEC, JobState.FAILED), (JobState.EXEC, JobState.CANCELLED),
        (JobState.EXEC, JobState.UNSCHED),
    }
    assert (new in ALLOWED[old]) == ((old, new) in legal)
    if (old, new) in legal:
        check_transition("j", old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_transition("j", old, new)


# -- jobs ------------------------------------------------------------------------------------

def test_create_and_get_job_round_trip(store):
    fixed = a_plan()
    job = new_job(store, name="lobby", constraint=UserConstraint(delay=0.5, accuracy=0.7), node="cloud",
                  source_info={"width": 64, "height": 48, "fps": 10.0}, fixed_plan=fixed,
                  seed_node_addr="10.0.0.2:7000", video_id=3)
    got = store.get_job(job.uid)
    assert got == job
    assert got.state is JobState.UNSCHED and got.name == "lobby" and got.video_id == "3"
    assert got.dag.topological_order() == ["det", "count"]
    assert got.dag.model_dump() == count_dag().model_dump()
    assert got.constraint == UserConstraint(delay=0.5, accuracy=0.7)
    assert got.fixed_plan == fixed
    assert got.created_at.tzinfo is not None
    # mapping-style reads for record-like callers
    assert got["uid"] == job.uid and got["reason"] == "submitted" and got.get("nope", 1) == 1
    assert [t.to_state for t in store.transitions(job.uid)] == [JobState.UNSCHED]


def test_missing_job_raises(store):
    with pytest.raises(JobNotFound):
        store.get_job("nope")
    assert store.find_job("nope") is None
    for call in (lambda: store.transition("nope", JobState.EXEC, "x"), lambda: store.delete_job("nope"),
                 lambda: store.add_plan("nope", a_plan()), lambda: store.save_frames("nope", [frame("nope", 0)]),
                 lambda: store.update_stats("nope", {}), lambda: store.list_plans("nope")):
        with pytest.raises(JobNotFound):
            call()


def test_duplicate_uid_rejected(store):
    new_job(store, uid="GLOBAL_ID_1.SUB_ID_1")
    with pytest.raises(JobExists):
        new_job(store, uid="GLOBAL_ID_1.SUB_ID_1")


def test_list_jobs_pages_and_filters(store):
    uids = [new_job(store, name=f"j{i}").uid for i in range(5)]
    store.transition(uids[0], JobState.EXEC, "planned")
    store.transition(uids[1], JobState.CANCELLED, "user")
    page, total = store.list_jobs(limit=2, offset=0)
    assert total == 5 and len(page) == 2
    assert [j.uid for j in page] == uids[::-1][:2]  # newest first
    rest, _ = store.list_jobs(limit=10, offset=2)
    assert [j.uid for j in page + rest] == uids[::-1]
    execs, n = store.list_jobs(state=JobState.EXEC)
    assert n == 1 and execs[0].uid == uids[0]
    both, n = store.list_jobs(state=["EXEC", JobState.CANCELLED])
    assert n == 2
    assert [j.uid for j in store.active_jobs()] == [uids[0], *uids[2:]]


def test_transitions_are_recorded_and_illegal_ones_refused(store):
    uid = new_job(store).uid
    store.transition(uid, JobState.EXEC, "planned by bayes")
    store.transition(uid, JobState.UNSCHED, "node edge1 down")
    store.transition(uid, JobState.EXEC, "re-planned")
    done = store.transition(uid, "DONE", "source ended")
    assert done.state is JobState.DONE and done.state_reason == "source ended"
    with pytest.raises(IllegalTransition) as err:
        store.transition(uid, JobState.EXEC, "again")
    assert err.value.old is JobState.DONE
    history = store.transitions(uid)
    assert [(t.from_state, t.to_state, t.reason) for t in history] == [
        (None, JobState.UNSCHED, "submitted"),
        (JobState.UNSCHED, JobState.EXEC, "planned by bayes"),
        (JobState.EXEC, JobState.UNSCHED, "node edge1 down"),
        (JobState.UNSCHED, JobState.EXEC, "re-planned"),
        (JobState.EXEC, JobState.DONE, "source ended"),
    ]
    assert all(a.at <= b.at for a, b in zip(history, history[1:]))
    assert store.get_job(uid).state is JobState.DONE


def test_constraint_and_stats(store):
    uid = new_job(store).uid
    assert store.update_constraint(uid, UserConstraint(delay=0.3, accuracy=0.1)).constraint.delay == 0.3
    assert store.update_stats(uid, {"frames_out": 3, "fps_out": 2.5}) == {"frames_out": 3, "fps_out": 2.5}
    assert store.update_stats(uid, {"frames_out": 4, "lost": 1}) == {"frames_out": 4, "fps_out": 2.5, "lost": 1}
    assert store.get_job(uid).stats == {"frames_out": 4, "fps_out": 2.5, "lost": 1}
    store.set_source_info(uid, {"width": 768, "height": 576, "fps": 10.0})
    assert store.get_job(uid).source_info == {"width": 768, "height": 576, "fps": 10.0}
    store.transition(uid, JobState.CANCELLED, "user")
    with pytest.raises(JobEnded):
        store.update_constraint(uid, UserConstraint())


# -- plans -----------------------------------------------------------------------------------

def test_plans_history_and_current(store):
    uid = new_job(store).uid
    assert store.current_plan(uid) is None
    first = store.add_plan(uid, a_plan("static"))
    second = store.add_plan(uid, a_plan("bayes", grade="s"))
    assert second > first
    pid, plan = store.current_plan(uid)
    assert pid == second and plan == a_plan("bayes", grade="s")
    history = store.list_plans(uid)
    assert [p.id for p in history] == [second, first]
    assert history[1].plan.reason == "static says so"
    assert store.get_plan(first).plan == a_plan("static")
    assert [p.id for p in store.list_plans(uid, limit=1)] == [second]
    store.transition(uid, JobState.CANCELLED, "user")
    with pytest.raises(JobEnded):
        store.add_plan(uid, a_plan())


# -- frame results ---------------------------------------------------------------------------

def test_save_frames_is_idempotent(store):
    uid = new_job(store).uid
    batch = [frame(uid, s) for s in range(5)]
    assert store.save_frames(uid, batch) == 5
    assert store.save_frames(uid, batch) == 0  # redelivered: stored once
    assert store.save_frames(uid, [frame(uid, 3), frame(uid, 5), frame(uid, 5)]) == 1
    assert store.result_count(uid) == 6
    assert store.save_frames(uid, []) == 0


def test_frame_round_trip_and_paging(store):
    uid = new_job(store).uid
    lost = FrameRecord(job_uid=uid, seq=7, plan_id=-1, capture_ts=0.7, width=0, height=0, latency_s=0.0,
                       outputs={}, lost=True)
    records = [frame(uid, s, frame_bytes=1000 + s) for s in range(7)] + [lost]
    store.save_frames(uid, records[::-1])  # order of arrival does not matter
    assert store.results(uid) == records
    assert store.results(uid, after_seq=2, limit=3) == records[3:6]
    assert store.results(uid, after_seq=7) == []
    assert store.recent_results(uid, 3) == records[-3:]
    assert store.last_result_position(uid) == (7, 0.7)
    other = new_job(store).uid
    assert store.last_result_position(other) is None and store.results(other) == []


def test_save_frames_checks_the_job(store):
    uid = new_job(store).uid
    with pytest.raises(ValueError):
        store.save_frames(uid, [frame("someone-else", 0)])
    assert store.result_count(uid) == 0


def test_many_frames_in_one_call(store):
    uid = new_job(store).uid
    assert store.save_frames(uid, [frame(uid, s) for s in range(1200)]) == 1200  # crosses the insert chunk
    assert store.save_frames(uid, [frame(uid, s) for s in range(1100, 1300)]) == 100


# -- observations ----------------------------------------------------------------------------

def obs(i: int, **kw) -> Observation:
    return Observation(stage="det", node="cloud", grade="n", width=640, height=360, fps=5, quality=80,
                       frame_bytes=30_000 + i, service_s=0.05 + i / 1000, queue_s=0.01, transfer_s=0.002,
                       accuracy=0.8 if i % 2 else None, ts=1000.0 + i, **kw)


def test_observations_round_trip(store):
    uid = new_job(store).uid
    sent = [obs(i) for i in range(10)]
    assert store.add_observations(uid, sent) == 10
    assert store.recent_observations(uid) == sent
    assert store.recent_observations(uid, limit=3) == sent[-3:]  # newest, oldest first
    assert store.prune_observations(uid, keep=4) == 6
    assert store.recent_observations(uid) == sent[-4:]
    assert store.add_observations(uid, []) == 0
    with pytest.raises(JobNotFound):
        store.add_observations("nope", sent)


def test_writes_for_a_job_deleted_meanwhile_raise_job_not_found(store):
    """The aggregator's batch may land after the job was deleted: the foreign key says so."""
    uid = new_job(store).uid
    store.delete_job(uid)
    with pytest.raises(JobNotFound):
        store.save_frames(uid, [frame(uid, 0)])
    with pytest.raises(JobNotFound):
        store.add_observations(uid, [obs(0)])
    assert store.find_job(uid) is None


# -- delete ----------------------------------------------------------------------------------

def test_delete_job_removes_everything(store):
    uid, keep = new_job(store).uid, new_job(store).uid
    for u in (uid, keep):
        store.add_plan(u, a_plan())
        store.save_frames(u, [frame(u, 0), frame(u, 1)])
        store.add_observations(u, [obs(0)])
        store.transition(u, JobState.EXEC, "planned")
    store.delete_job(uid)
    assert store.find_job(uid) is None
    assert store.results(uid) == [] and store.recent_observations(uid) == [] and store.current_plan(uid) is None
    assert store.result_count(keep) == 2 and len(store.list_plans(keep)) == 1 and len(store.transitions(keep)) == 2


# -- nodes -----------------------------------------------------------------------------------

def test_nodes_register_heartbeat_and_go_stale(store):
    videos = [{"id": 0, "url": "rtsp://cam/0", "type": "traffic flow"}, {"id": 1, "url": "/tmp/a.avi", "type": "people"}]
    rec = store.upsert_node("edge1", "edge", "192.168.56.102", "192.168.56.102:7000", videos, ["person_detection"],
                            {"cpu_count": 4, "cpu_ratio": 0.25, "gpu": True, "disk": "ignored by the planner"})
    assert isinstance(rec, NodeInfo)  # a NodeInfo for the planner, with the tracker's extras
    assert rec.cpu_count == 4 and rec.gpu and rec.address == "192.168.56.102:7000"
    assert rec.info() == NodeInfo(name="edge1", role="edge", ip="192.168.56.102", services=["person_detection"],
                                  cpu_count=4, cpu_ratio=0.25, gpu=True)
    assert rec.video_source("1")["url"] == "/tmp/a.avi" and rec.video_source(2) is None
    store.upsert_node("cloud", "cloud", "127.0.0.1", "127.0.0.1:5000")
    assert store.node_by_address("192.168.56.102:7000").name == "edge1"
    assert store.node_by_address("1.2.3.4:1") is None

    assert store.heartbeat("edge1", {"cpu_ratio": 0.9, "queue_depth": 3})
    assert not store.heartbeat("ghost")
    edge = store.get_node("edge1")
    assert edge.cpu_ratio == 0.9 and edge.queue_depth == 3 and edge.cpu_count == 4

    later = utcnow() + timedelta(seconds=10)  # an injected clock, not a sleep
    store.heartbeat("cloud", now=later)
    assert store.mark_stale_nodes(4.0, now=later + timedelta(seconds=1)) == ["edge1"]
    assert store.mark_stale_nodes(4.0, now=later + timedelta(seconds=1)) == []  # only newly marked ones
    assert [n.name for n in store.list_nodes(alive_only=True)] == ["cloud"]
    assert not store.get_node("edge1").alive and not store.get_node("edge1").info().can_run("person_detection")
    assert store.heartbeat("edge1") and store.get_node("edge1").alive  # back

    # re-registering replaces what the node declared
    store.upsert_node("edge1", "edge", "192.168.56.103", "192.168.56.103:7000", [], [], {})
    assert store.get_node("edge1").ip == "192.168.56.103" and store.get_node("edge1").video_sources == []
    with pytest.raises(ValueError):
        store.upsert_node("x", "boss", "1.1.1.1", "1.1.1.1:1")
    assert store.delete_node("edge1") and store.get_node("edge1") is None


def test_bad_resource_values_do_not_hide_a_node(store):
    store.upsert_node("edge2", "edge", "10.0.0.2", "10.0.0.2:7000", resources={"cpu_ratio": 7})
    node = store.get_node("edge2")
    assert node.cpu_ratio == 0.0 and node.resources["cpu_ratio"] == 7


# -- threads and restarts ------------------------------------------------------------------

def test_concurrent_writers(store):
    """The request threads, the scheduler and the aggregator write at once: no lost or
    doubled frame, no locking error, one terminal transition."""
    uid = new_job(store).uid
    store.transition(uid, JobState.EXEC, "planned")
    errors: list[BaseException] = []
    stored = []

    def saver(k: int) -> None:
        try:
            for start in range(0, 60, 6):
                stored.append(store.save_frames(uid, [frame(uid, s) for s in range(start, start + 6 + k)]))
                store.add_observations(uid, [obs(k)])
                store.update_stats(uid, {f"t{k}": start})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def planner() -> None:
        try:
            for _ in range(10):
                store.add_plan(uid, a_plan("bayes"))
                store.get_job(uid)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(k,)) for k in range(4)] + [threading.Thread(target=planner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sum(stored) == store.result_count(uid) == 63
    assert sorted(f.seq for f in store.results(uid, limit=1000)) == list(range(63))
    assert len(store.list_plans(uid, limit=100)) == 10
    assert set(store.get_job(uid).stats) == {"t0", "t1", "t2", "t3"}

    outcomes = []

    def finish(state: JobState) -> None:
        try:
            store.transition(uid, state, state.value)
            outcomes.append(state)
        except IllegalTransition:
            outcomes.append(None)

    racers = [threading.Thread(target=finish, args=(s,)) for s in (JobState.DONE, JobState.CANCELLED, JobState.FAILED)]
    for t in racers:
        t.start()
    for t in racers:
        t.join(30)
    assert sum(o is not None for o in outcomes) == 1
    assert store.get_job(uid).state in (JobState.DONE, JobState.CANCELLED, JobState.FAILED)


def test_data_survives_a_new_store(module_db_url, store):
    uid = new_job(store).uid
    pid = store.add_plan(uid, a_plan())
    store.transition(uid, JobState.EXEC, "planned")
    store.save_frames(uid, [frame(uid, 0, pid), frame(uid, 1, pid)])
    again = Store(module_db_url)  # migrating an up-to-date database is a no-op
    try:
        assert again.get_job(uid).state is JobState.EXEC
        assert again.current_plan(uid) == (pid, a_plan())
        assert again.results(uid) == store.results(uid)
    finally:
        again.close()
