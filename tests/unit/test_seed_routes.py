"""The seed routes beyond seed 003's README (shared/seeds/seed-routes-beyond-readme.md), CORS,
and strict constraint updates: field names, types and status conventions, one test per route."""
from __future__ import annotations

import pytest

from scheduler.interface import Plan
from services.records import FrameRecord, StageRecord
from services.settings import Settings
from tests.support.seed import (
    SEED_NODE_SUBMIT,
    SEED_PLAN,
    SEED_SUBMIT_QUERY,
    register_seed_nodes,
    seed_error,
)
from tracker.store.jobs import JobState
from tracker.web.app import create_app

ORIGIN = "http://127.0.0.1:5173"
JSON_POSTS = ["/user/submit_job", "/query/submit_query", "/user/submit_job_user_constraint", "/node/submit_job",
              "/node/get_plan", "/node/update_plan", "/node/register", "/node/heartbeat", "/api/v1/jobs"]


def _query(client) -> str:
    register_seed_nodes(client)
    body = client.post("/query/submit_query", json=SEED_SUBMIT_QUERY).get_json()
    assert body["status"] == 0 and isinstance(body["query_id"], str) and body["query_id"] == body["job_uid"]
    return body["query_id"]


def test_get_video_info_is_a_bare_map_of_nodes(client):
    assert client.get("/node/get_video_info").get_json() == {}  # no node joined yet
    register_seed_nodes(client)
    body = client.get("/node/get_video_info").get_json()
    assert body == {addr: {"0": {"type": "traffic flow"}, "1": {"type": "people indoor"}}
                    for addr in ("192.168.56.102:7000", "192.168.56.102:8000")}
    for addr in body:  # the later front end splits "<node_addr>-<video_id>" and parseInt()s the id
        node_addr, video_id = f"{addr}-1".split("-")
        assert node_addr == addr and int(video_id) == 1


def test_constraint_updates_are_strict(client, store, control):
    uid = _query(client)
    before = store.get_job(uid).constraint
    for body in ({"job_uid": uid, "user_constraint": {"delay": None, "accuracy": None}},  # an empty form
                 {"query_id": uid, "user_constraint": {"accuracy": 0.5}},
                 {"job_uid": uid, "user_constraint": None}):
        msg = seed_error(client.post("/user/submit_job_user_constraint", json=body), 400)
        assert "delay" in msg
        assert store.get_job(uid).constraint == before  # nothing changed
    r = client.post("/user/submit_job_user_constraint", json={"query_id": uid,  # the later front end's key
                                                               "user_constraint": {"delay": 0.4, "accuracy": None}})
    assert r.status_code == 200 and r.get_json()["status"] == 0
    after = store.get_job(uid).constraint
    assert (after.delay, after.accuracy) == (0.4, before.accuracy)  # a null accuracy keeps the current one
    assert ("replan", uid) in control.calls
    assert "job_uid" in seed_error(client.post("/user/submit_job_user_constraint",
                                               json={"user_constraint": {"delay": 1}}), 400)


def _store_frames(store, uid: str, n: int) -> int:
    plan_id = store.add_plan(uid, _seed_plan(store))
    stages = [StageRecord("face_detection", "edge-7000", "w", 0.01, 0.1)]
    frames = [FrameRecord(uid, seq, plan_id, seq / 25.0, 1280, 720, 0.25,
                          {"face_detection": {"bbox": [[0, 0, 20, 30]] * 3, "prob": [0.9] * 3},
                           "face_alignment": {"count_result": {"up": 2, "total": 3}}}, stages)
              for seq in range(n)]
    store.save_frames(uid, frames)
    return plan_id


def _seed_plan(store):
    from scheduler.seed_format import plan_from_seed

    return plan_from_seed(SEED_PLAN["video_conf"], SEED_PLAN["flow_mapping"], lambda s, m: "edge-7000", "pid", "t")


def test_get_agg_info_shape(client, store):
    seed_error(client.get("/query/get_agg_info/GLOBAL_ID_9"), 404)
    uid = _query(client)
    early = client.get(f"/query/get_agg_info/{uid}")
    seed_error(early, 503)
    assert early.headers["Retry-After"] == "3"
    _store_frames(store, uid, 20)
    body = client.get(f"/query/get_agg_info/{uid}").get_json()
    assert set(body) == {"appended_result", "latest_result"}  # bare: no status, no result wrapper
    entries = body["appended_result"]
    assert len(entries) == 11 and [e["n_loop"] for e in entries] == list(range(10, 21))  # oldest first, from 1
    for e in entries:
        assert set(e) == {"count_result", "delay", "frame_id", "n_loop"}
        assert e["count_result"] == {"total": 3, "up": 2} and isinstance(e["frame_id"], float)
        assert isinstance(e["n_loop"], int) and e["delay"] == 0.25
    assert entries[-1]["frame_id"] == 19.0  # capture_ts x the source's 25 fps
    latest = body["latest_result"]
    assert set(latest) == {"plan", "runtime"}
    assert set(latest["plan"]) == {"flow_mapping", "video_conf"}
    assert set(latest["plan"]["video_conf"]) == {"encoder", "fps", "resolution"}
    assert latest["plan"]["flow_mapping"]["face_detection"] == {"model_id": 0, "node_ip": "192.168.56.102",
                                                                "node_role": "host"}
    assert latest["runtime"] == {"delay": 0.25, "obj_n": 3.0, "obj_size": 600.0, "obj_stable": True}


def test_sync_job_result_before_the_first_result_is_null(client, store):
    register_seed_nodes(client)
    uid = client.post("/node/submit_job", json=SEED_NODE_SUBMIT).get_json()["job_uid"]
    assert client.get(f"/user/sync_job_result/{uid}").get_json() == {"result": None, "status": 0}
    plan_id = store.add_plan(uid, _seed_plan(store))
    store.save_frames(uid, [FrameRecord(uid, 0, plan_id, 0.0, 0, 0, 0.0, {}, lost=True)])
    assert client.get(f"/user/sync_job_result/{uid}").get_json() == {"result": None, "status": 0}
    _store_frames(store, uid, 3)  # seq 1 and 2 are stored; seq 0 stays lost
    result = client.get(f"/user/sync_job_result/{uid}").get_json()["result"]
    assert [e["n_loop"] for e in result["appended_result"]] == [1, 2]


# -- CORS ------------------------------------------------------------------------------------


def _allowed(resp, origin: str = ORIGIN) -> bool:
    return resp.headers.get("Access-Control-Allow-Origin") in (origin, "*")


def test_cors_on_every_kind_of_route(client):
    register_seed_nodes(client)
    for path in ("/user/get_all_status", "/node/get_video_info", "/api/v1/jobs", "/user/sync_job_result/nope",
                 "/user/video/nope", "/api/v1/openapi.json"):
        r = client.get(path, headers={"Origin": ORIGIN})
        assert _allowed(r), (path, dict(r.headers))
    for path in JSON_POSTS:  # what fetch() with a JSON body asks before the POST
        r = client.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "content-type"})
        assert r.status_code == 200 and _allowed(r), (path, r.status_code, dict(r.headers))
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "content-type" in r.headers["Access-Control-Allow-Headers"].lower()


def test_cors_origins_are_configurable_and_token_auth_still_holds(module_db_url, store, monkeypatch):
    from services.settings import settings_from_env

    monkeypatch.setenv("VDAG_MODE", "cluster")
    assert settings_from_env(database_url=module_db_url).cors_origins == ()  # none unless configured
    monkeypatch.setenv("VDAG_CORS_ORIGINS", "http://ui.example:8080, http://127.0.0.1:5173")
    monkeypatch.setenv("VDAG_API_TOKEN", "s3cret")
    settings = settings_from_env(database_url=module_db_url)
    c = create_app(settings, store=store).test_client()
    assert not _allowed(c.get("/user/get_all_status", headers={"Origin": "http://evil.example"}), "http://evil.example")
    pre = c.options("/user/submit_job", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 200 and _allowed(pre)  # a preflight carries no token
    assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
    denied = c.post("/user/submit_job", json={}, headers={"Origin": ORIGIN})
    assert denied.status_code == 401 and _allowed(denied)  # the page can read why
    ok = c.post("/node/register", headers={"Origin": ORIGIN, "Authorization": "Bearer s3cret"},
                json={"name": "edge-1", "ip": "10.0.0.2", "port": 5001})
    assert ok.status_code == 200 and _allowed(ok)


def test_the_embedded_default_allows_any_origin(module_db_url, store):
    settings = Settings(database_url=module_db_url)
    assert settings.cors_origins == ("*",)
    c = create_app(settings, store=store).test_client()
    assert _allowed(c.get("/api/v1/jobs", headers={"Origin": "http://anything:1234"}), "http://anything:1234")


def test_ended_jobs_answer_their_stored_results(client, store):
    uid = _query(client)
    _store_frames(store, uid, 12)
    store.transition(uid, JobState.EXEC, "planned")
    store.transition(uid, JobState.DONE, "end of video")
    assert len(client.get(f"/query/get_agg_info/{uid}").get_json()["appended_result"]) == 11
    assert len(client.get(f"/user/sync_job_result/{uid}").get_json()["result"]["appended_result"]) == 10


@pytest.mark.parametrize("path", ["/query/get_agg_info/", "/user/sync_job_result/"])
def test_an_empty_id_is_a_json_404(client, path):
    seed_error(client.get(path), 404)


def test_an_edge_reports_its_generator_ended(client, store, control):
    register_seed_nodes(client)
    uid = client.post("/node/submit_job", json=SEED_NODE_SUBMIT).get_json()["job_uid"]
    store.transition(uid, JobState.EXEC, "planned")
    event = {"node": "edge-7000", "job_uid": uid, "state": "DONE", "reason": "end of video"}
    assert "node" in seed_error(client.post("/node/job_event", json={**event, "node": "edge-8000"}), 409)
    assert seed_error(client.post("/node/job_event", json={"node": "edge-7000"}), 400)
    r = client.post("/node/job_event", json=event)
    assert r.status_code == 200 and r.get_json()["status"] == 0
    job = store.get_job(uid)
    assert job.state is JobState.DONE and job.state_reason == "end of video (on edge-7000)"
    assert control.calls[-2:] == [("settling", uid), ("stopped", uid)]  # stored what arrived, then stopped


def test_an_edge_reserves_its_sequence_numbers_where_a_restart_reads_them(client, store, control):
    register_seed_nodes(client)
    uid = client.post("/node/submit_job", json=SEED_NODE_SUBMIT).get_json()["job_uid"]
    store.transition(uid, JobState.EXEC, "planned")
    body = {"node": "edge-7000", "job_uid": uid, "until": 1024, "restarted": {"sent_before": 0, "first_seq": 0}}
    assert "node" in seed_error(client.post("/node/seq_reservation", json={**body, "node": "edge-8000"}), 409)
    assert seed_error(client.post("/node/seq_reservation", json={**body, "until": -1}), 400)
    assert client.post("/node/seq_reservation", json=body).status_code == 200
    assert control.calls[-1] == ("generator restarted", uid)
    assert client.post("/node/seq_reservation", json={**body, "until": 1536, "restarted": None}).status_code == 200
    assert store.get_job(uid).stats["seq_reserved"] == 1536 and control.calls[-1] == ("generator restarted", uid)
    assert len([c for c in control.calls if c[0] == "generator restarted"]) == 1
    # The cloud hands the reservation's end to the edge's next generator after a crash.
    store.add_plan(uid, Plan.model_validate({"video_conf": {"resolution": "360p", "fps": 5}, "flow_mapping": {
        "face_detection": {"node": "edge-7000"}, "face_alignment": {"node": "cloud"}}}))
    store.update_stats(uid, {"next_seq": 700, "stopped_cleanly": False})
    job = client.get("/node/jobs", query_string={"node": "edge-7000"}).get_json()["jobs"][0]
    assert (job["first_seq"], job["sent_before"]) == (1536, 700)
    store.transition(uid, JobState.DONE, "end of video")
    seed_error(client.post("/node/seq_reservation", json=body), 409)
