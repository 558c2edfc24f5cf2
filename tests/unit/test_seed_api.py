"""The seed-003 API, driven with the seed README's own JSON examples (seeds/003)."""
from __future__ import annotations

import copy
import os
from datetime import timedelta

import pytest

from services.records import FrameRecord, StageRecord
from tests.support.seed import (
    SEED_ALL_STATUS,
    SEED_APPENDED,
    SEED_DAG,
    SEED_JOB_CONSTRAINT,
    SEED_NODE_SUBMIT,
    SEED_PLAN,
    SEED_SCHEDULER_CONSTRAINT,
    SEED_SUBMIT_QUERY,
    register_seed_nodes,
    seed_error,
)
from tracker.store.jobs import JobState


def test_get_all_status_matches_the_seed(client):
    register_seed_nodes(client)
    assert client.get("/user/get_all_status").get_json() == SEED_ALL_STATUS


def test_submit_query(client, store, control):
    register_seed_nodes(client)
    r = client.post("/query/submit_query", json=SEED_SUBMIT_QUERY)
    body = r.get_json()
    assert r.status_code == 200 and body["status"] == 0 and body["query_id"] == body["job_uid"]
    job = store.get_job(body["job_uid"])
    assert job.state is JobState.UNSCHED and job.node == "edge-7000"
    assert job.source == "rtsp://192.168.56.102/people" and job.source_info == {"width": 1280, "height": 720, "fps": 25}
    assert job.seed_node_addr == "192.168.56.102:7000" and job.video_id == "1"
    assert (job.constraint.delay, job.constraint.accuracy) == (0.8, 0.9)
    assert job.dag.to_seed() == SEED_DAG  # the pipeline wires the seed's DAG
    assert control.calls == [("submitted", job.uid), ("replan", job.uid)]


def test_submit_job_with_the_seed_dag(client, store):
    register_seed_nodes(client)
    r = client.post("/user/submit_job", json={"dag": SEED_DAG, "node_addr": "192.168.56.102:8000", "video_id": 0,
                                              "user_constraint": SEED_SCHEDULER_CONSTRAINT})
    assert r.status_code == 200 and r.get_json()["status"] == 0
    job = store.get_job(r.get_json()["job_uid"])
    assert job.dag.to_seed() == SEED_DAG and job.node == "edge-8000"
    assert job.source_info == {"width": 64, "height": 48, "fps": 10.0} or job.source_info is None
    assert (job.constraint.delay, job.constraint.accuracy) == (50.0, 1.0)  # [low, high] and acc_level 0..5


def test_node_submit_job_and_constraint_with_seed_uids(client, store, control):
    register_seed_nodes(client)
    r = client.post("/node/submit_job", json=SEED_NODE_SUBMIT)
    assert r.get_json() == {"status": 0, "msg": "submitted to the scheduler", "job_uid": "GLOBAL_ID_1.SUB_ID_1"}
    seed_error(client.post("/node/submit_job", json=SEED_NODE_SUBMIT), 409)
    client.post("/node/submit_job", json={**SEED_NODE_SUBMIT, "unique_job_id": "GLOBAL_ID_1.SUB_ID"})
    r = client.post("/user/submit_job_user_constraint", json=SEED_JOB_CONSTRAINT)
    assert r.status_code == 200 and r.get_json()["status"] == 0
    c = store.get_job("GLOBAL_ID_1.SUB_ID").constraint
    assert (c.delay, c.accuracy) == (0.3, 0.1)  # accuracy 10 read as a percentage
    assert ("replan", "GLOBAL_ID_1.SUB_ID") in control.calls
    store.transition("GLOBAL_ID_1.SUB_ID", JobState.CANCELLED, "user")
    seed_error(client.post("/user/submit_job_user_constraint", json=SEED_JOB_CONSTRAINT), 409)
    seed_error(client.post("/user/submit_job_user_constraint", json={**SEED_JOB_CONSTRAINT, "job_uid": "nope"}), 404)


def test_update_plan_then_sync_job_result_matches_the_seed(client, store, control):
    register_seed_nodes(client)
    uid = client.post("/node/submit_job", json=SEED_NODE_SUBMIT).get_json()["job_uid"]
    empty = client.get(f"/user/sync_job_result/{uid}")
    assert empty.status_code == 200 and empty.get_json() == {"result": None, "status": 0}  # the seed's "not yet"

    r = client.post("/node/update_plan", json={"job_uid": uid, **SEED_PLAN})
    assert r.status_code == 200 and r.get_json()["status"] == 0
    assert ("plan", uid) in control.calls
    plan_id, plan = store.current_plan(uid)
    assert plan.flow_mapping["face_detection"].node == "edge-7000"  # ip + role -> a registered node
    assert plan.flow_mapping["face_alignment"].node_role == "cloud"
    assert plan.video_conf.fps == 24 and plan.video_conf.ntracking == 5

    stages = [StageRecord("face_detection", "edge-7000", "w", 0.1, 0.2),
              StageRecord("face_alignment", "edge-7000", "w", 0.05, 0.15)]
    frames = [FrameRecord(uid, seq, plan_id, seq / 10, 640, 360, 0.5,
                          {"face_detection": {"bbox": [[1, 2, 3, 4]], "prob": [0.9]},
                           "face_alignment": {"count_result": {"#no_helmet": 1}}}, stages)
              for seq in range(0, 14)]
    frames.append(FrameRecord(uid, 14, plan_id, 1.4, 0, 0, 0.0, {}, lost=True))
    store.save_frames(uid, frames)

    body = client.get(f"/user/sync_job_result/{uid}").get_json()
    assert body["status"] == 0 and set(body["result"]) == {"appended_result", "latest_result"}
    appended = body["result"]["appended_result"]
    assert len(appended) == 10 and appended[-3:] == SEED_APPENDED  # the last 10 frames, lost ones left out
    latest = body["result"]["latest_result"]
    assert latest["plan"] == SEED_PLAN
    assert latest["plan_result"]["delay"] == pytest.approx({"face_detection": 0.3, "face_alignment": 0.2})


def test_counts_of_several_stages_are_merged(client, store):
    from scheduler.seed_format import appended_entry

    outputs = {"count": {"counts": {"person": 3}, "total": 3}, "cars": {"count_result": {"up": 6, "total": 8}},
               "det": {"detections": []}}
    assert appended_entry(outputs, ["det", "count", "cars"], 4) == {"person": 3, "up": 6, "total": 8, "n_loop": 4}


def test_get_plan_requests_scheduling(client, store, control):
    register_seed_nodes(client)
    uid = client.post("/node/submit_job", json=SEED_NODE_SUBMIT).get_json()["job_uid"]
    r = client.post("/node/get_plan", json={"job_uid": uid, "dag": SEED_DAG, "last_plan_result": {"delay": {}},
                                            "user_constraint": {"delay": 0.4, "accuracy": 0.5}})
    assert r.get_json() == {"status": 0, "msg": "scheduling requested", "plan": None}
    assert ("replan", uid) in control.calls and store.get_job(uid).constraint.delay == 0.4
    client.post("/node/update_plan", json={"job_uid": uid, **SEED_PLAN})
    assert client.post("/node/get_plan", json={"job_uid": uid}).get_json()["plan"] == SEED_PLAN


def test_update_plan_errors(client, store):
    register_seed_nodes(client)
    uid = client.post("/node/submit_job", json=SEED_NODE_SUBMIT).get_json()["job_uid"]
    partial = copy.deepcopy(SEED_PLAN)
    del partial["flow_mapping"]["face_alignment"]
    assert "flow_mapping" in seed_error(client.post("/node/update_plan", json={"job_uid": uid, **partial}), 422)
    unknown_ip = copy.deepcopy(SEED_PLAN)
    unknown_ip["flow_mapping"]["face_detection"]["node_ip"] = "10.9.9.9"
    msg = seed_error(client.post("/node/update_plan", json={"job_uid": uid, **unknown_ip}), 422)
    assert "face_detection" in msg
    bad_conf = {**SEED_PLAN, "video_conf": {**SEED_PLAN["video_conf"], "resolution": "8K"}}
    assert "resolution" in seed_error(client.post("/node/update_plan", json={"job_uid": uid, **bad_conf}), 400)
    seed_error(client.post("/node/update_plan", json={"job_uid": "ghost", **SEED_PLAN}), 404)
    assert store.current_plan(uid) is None
    # the seed scheduler's per-stage video_conf form is accepted too
    per_stage = {"face_detection": {"resolution": "480p", "fps": 30, "encoder": "H264"},
                 "face_alignment": {"resolution": "480p", "fps": 30, "encoder": "H264"}}
    r = client.post("/node/update_plan", json={"job_uid": uid, "flow_mapping": SEED_PLAN["flow_mapping"],
                                               "video_conf": per_stage})
    assert r.status_code == 200 and store.current_plan(uid)[1].video_conf.resolution == "480p"
    store.transition(uid, JobState.CANCELLED, "user")
    seed_error(client.post("/node/update_plan", json={"job_uid": uid, **SEED_PLAN}), 409)


@pytest.mark.parametrize("path,body,status,word", [
    ("/query/submit_query", {**SEED_SUBMIT_QUERY, "node_addr": "10.0.0.1:1"}, 404, "node_addr"),
    ("/query/submit_query", {**SEED_SUBMIT_QUERY, "video_id": 7}, 404, "video_id"),
    ("/query/submit_query", {**SEED_SUBMIT_QUERY, "pipeline": ["face_detection", "no_such"]}, 422, "no_such"),
    ("/query/submit_query", {**SEED_SUBMIT_QUERY, "pipeline": ["__import__('os').system('touch /tmp/vdag-pwned')"]},
     422, "pipeline"),
    ("/query/submit_query", {**SEED_SUBMIT_QUERY, "user_constraint": {"delay": "soon"}}, 400, "user_constraint"),
    ("/query/submit_query", {**SEED_SUBMIT_QUERY, "user_constraint": {"delay": 0}}, 400, "delay"),
    ("/query/submit_query", {"node_addr": "192.168.56.102:7000"}, 400, "pipeline"),
    ("/user/submit_job", {"dag": {**SEED_DAG, "flow": ["SingleFrameGenerator", "face_alignment"]},
                          "node_addr": "192.168.56.102:7000", "video_id": 1}, 422, "face_alignment"),
    ("/user/submit_job", {"dag": {**SEED_DAG, "input": {"face_detection": {"image": "nowhere.image"}}},
                          "node_addr": "192.168.56.102:7000", "video_id": 1}, 422, "nowhere"),
    ("/node/submit_job", {**SEED_NODE_SUBMIT, "unique_job_id": "bad id with spaces"}, 400, "unique_job_id"),
    ("/node/heartbeat", {"name": "ghost"}, 404, "register"),
    ("/node/register", {"name": "n", "ip": "1.2.3.4"}, 400, "address"),
    ("/node/register", {"name": "n", "ip": "1.2.3.4", "port": 1, "role": "boss"}, 400, "role"),
])
def test_seed_errors(client, store, path, body, status, word):
    register_seed_nodes(client)
    before = store.list_jobs()[1]
    assert word in seed_error(client.post(path, json=body), status)
    assert store.list_jobs()[1] == before
    assert not os.path.exists("/tmp/vdag-pwned")


def test_seed_error_shapes(client):
    seed_error(client.get("/user/sync_job_result/nope"), 404)
    seed_error(client.get("/user/sync_job_result/%00"), 404)
    seed_error(client.post("/user/submit_job", data=b"{not json", content_type="application/json"), 400)
    seed_error(client.post("/query/submit_query", data=b"[]", content_type="application/json"), 400)
    seed_error(client.post("/node/update_plan", data=b"x" * (2 << 20), content_type="application/json"), 413)
    seed_error(client.get("/node/update_plan"), 405)


def test_heartbeat_and_stale_nodes(client, store):
    register_seed_nodes(client)
    assert client.post("/node/heartbeat", json={"name": "edge-7000", "resources": {"cpu_ratio": 0.5}}).get_json() == \
        {"status": 0, "msg": "ok"}
    assert store.get_node("edge-7000").cpu_ratio == 0.5
    client.post("/node/heartbeat", json={"name": "edge-8000"})
    later = store.get_node("edge-8000").last_heartbeat
    store.heartbeat("edge-8000", now=later + timedelta(seconds=10))  # an injected clock, not a sleep
    store.mark_stale_nodes(4.0, now=later + timedelta(seconds=11))
    assert list(client.get("/user/get_all_status").get_json()["data"]) == ["192.168.56.102:8000"]


# -- generated bodies ------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_SEED_POSTS = ["/user/submit_job", "/query/submit_query", "/user/submit_job_user_constraint", "/node/submit_job",
               "/node/get_plan", "/node/update_plan", "/node/register", "/node/heartbeat"]
_KNOWN_KEYS = ["dag", "node_addr", "video_id", "pipeline", "user_constraint", "job_uid", "video_conf", "flow_mapping",
               "unique_job_id", "name", "ip", "port", "role", "video_sources", "resources", "delay", "accuracy",
               "query_id"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(_SEED_POSTS),
       body=st.dictionaries(st.sampled_from(_KNOWN_KEYS), _json, max_size=6) | _json)
def test_seed_routes_never_fail_with_5xx(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code < 500, (path, body, r.get_json())
    assert r.get_json()["status"] in (0, 1)
