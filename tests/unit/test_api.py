"""The native API (/api/v1) over a real store on SQLite and PostgreSQL."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from scheduler.interface import Observation, Plan
from services.records import FrameRecord, StageRecord
from services.settings import Settings
from tracker.runtime.job_control import RecordedEffects
from tracker.store import Store
from tracker.store.jobs import JobState
from tracker.web.app import create_app

DET_COUNT = [
    {"name": "det", "service": "person_detection", "inputs": {"image": "generator.image"}},
    {"name": "count", "service": "object_count", "inputs": {"detections": "det.detections"}},
]
SYNTH = "synthetic://64x48@10/20"


@pytest.fixture
def video_dir(tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    return d


@pytest.fixture
def settings(module_db_url, video_dir):
    return Settings(database_url=module_db_url, allowed_video_dirs=(video_dir,))


@pytest.fixture
def control():
    return RecordedEffects()


@pytest.fixture
def client(settings, store, control):
    app = create_app(settings, store=store, effects=control)
    return app.test_client()


def submit(client, **overrides):
    body = {"name": "lobby", "source": SYNTH, "stages": DET_COUNT, "constraints": {"delay": 0.5, "accuracy": 0.6}}
    body.update(overrides)
    return client.post("/api/v1/jobs", json=body)


def write_video(path, frames: int = 5) -> str:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()
    return str(path)


def error_of(resp) -> dict:
    body = resp.get_json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    return body["error"]


# -- submit ----------------------------------------------------------------------------------

def test_submit_job(client, control, store):
    r = submit(client)
    assert r.status_code == 201, r.get_json()
    job = r.get_json()
    assert r.headers["Location"] == f"/api/v1/jobs/{job['uid']}"
    assert job["state"] == "UNSCHED" and job["name"] == "lobby" and job["node"] == "cloud"
    assert job["source_info"] == {"width": 64, "height": 48, "fps": 10.0}
    assert job["constraint"] == {"delay": 0.5, "accuracy": 0.6}
    assert [s["name"] for s in job["dag"]["stages"]] == ["det", "count"]
    assert job["transitions"][0]["to"] == "UNSCHED" and job["plan"] is None
    assert control.calls == [("submitted", job["uid"]), ("replan", job["uid"])]  # plan it now
    assert store.get_job(job["uid"]).state is JobState.UNSCHED


def test_submit_with_file_webcam_and_fixed_plan(client, video_dir, store):
    path = write_video(video_dir / "clip.avi")
    r = submit(client, source=path)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["source_info"]["width"] == 64
    assert submit(client, source=0).get_json()["source"] == "0"
    plan = {"video_conf": {"resolution": "360p"}, "flow_mapping": {"det": {"node": "cloud"}, "count": {"node": "cloud"}}}
    r = submit(client, plan=plan)
    assert r.status_code == 201
    assert Plan.model_validate(r.get_json()["fixed_plan"]) == Plan.model_validate(plan)


@pytest.mark.parametrize("overrides,field", [
    ({"stages": [{"name": "det", "service": "no_such_service", "inputs": {}}]}, "stages.0.service"),
    ({"stages": [{**DET_COUNT[0]}, {**DET_COUNT[1], "inputs": {"detections": "ghost.detections"}}]}, "stages"),
    ({"stages": [{**DET_COUNT[0]}, {**DET_COUNT[1], "inputs": {"detections": "det.nothing"}}]}, "stages"),
    ({"stages": [{"name": "a", "service": "render", "inputs": {"image": "b.image"}},
                 {"name": "b", "service": "render", "inputs": {"image": "a.image"}}]}, "stages"),
    ({"stages": []}, "stages"),
    ({"stages": [{"name": "det", "service": "person_detection", "bogus": 1}]}, "stages"),
    ({"generator": "VideoGenerator"}, "generator"),
    ({"source": "/etc/passwd"}, "source"),
    ({"source": "file:///etc/passwd"}, "source"),
    ({"source": "ftp://host/video.mp4"}, "source"),
    ({"source": 1000}, "source"),
    ({"source": True}, "source"),
    ({"source": "synthetic://1x1@0/0"}, "source"),
    ({"constraints": {"delay": -1}}, "constraints"),
    ({"constraints": {"delay": 1, "accuracy": 2}}, "constraints"),
    ({"plan": {"video_conf": {}, "flow_mapping": {"det": {"node": "cloud"}}}}, "plan.flow_mapping"),
    ({"node": "nowhere"}, "node"),
    ({"unexpected": 1}, "unexpected"),
])
def test_invalid_jobs_name_the_field_and_store_nothing(client, store, control, overrides, field):
    r = submit(client, **overrides)
    assert r.status_code == 422, r.get_json()
    err = error_of(r)
    assert err["code"] == "validation_failed"
    assert field in err["message"], err
    assert store.list_jobs()[1] == 0 and control.calls == []


def test_an_input_of_the_wrong_type_is_refused_at_submit(client, store, control):
    """object_count.detections fed an integer would fail in the worker on every frame."""
    stages = [{"name": "p", "service": "frame_probe", "inputs": {"image": "generator.image"}},
              {"name": "count", "service": "object_count", "inputs": {"detections": "p.width"}}]
    r = submit(client, stages=stages)
    assert r.status_code == 422, r.get_json()
    message = error_of(r)["message"]
    assert "'detections' takes detections" in message and "'p.width' is number" in message
    stages[1]["inputs"] = {"detections": "generator.image"}
    assert "'generator.image' is jpeg" in error_of(submit(client, stages=stages))["message"]
    assert store.list_jobs()[1] == 0 and control.calls == []


def test_cycle_message_names_the_cycle(client):
    stages = [{"name": "a", "service": "render", "inputs": {"image": "b.image"}},
              {"name": "b", "service": "render", "inputs": {"image": "a.image"}}]
    assert "cycle" in error_of(submit(client, stages=stages))["message"]


def test_symlink_out_of_the_video_dir_is_refused(client, video_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = write_video(outside / "secret.avi")
    os.symlink(target, video_dir / "link.avi")
    r = submit(client, source=str(video_dir / "link.avi"))
    assert r.status_code == 422 and "source" in error_of(r)["message"]
    r = submit(client, source=str(video_dir / ".." / "outside" / "secret.avi"))
    assert r.status_code == 422
    (video_dir / "notes.avi").write_text("not a video")
    assert "not a readable video" in error_of(submit(client, source=str(video_dir / "notes.avi")))["message"]


def test_bad_bodies(client, store):
    r = client.post("/api/v1/jobs", data=b"x" * (2 << 20), content_type="application/json")
    assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"
    for raw in (b"not json", b'{"source": NaN, "stages": []}', b'{"name": "a\\u0000b"}', b"[1, 2]"):
        r = client.post("/api/v1/jobs", data=raw, content_type="application/json")
        assert r.status_code == 422, raw
        error_of(r)
    assert store.list_jobs()[1] == 0


# -- read, list, cancel, delete --------------------------------------------------------------

def test_list_and_get(client):
    uids = [submit(client, name=f"j{i}").get_json()["uid"] for i in range(3)]
    r = client.get("/api/v1/jobs?limit=2&offset=0")
    page = r.get_json()
    assert r.status_code == 200 and page["total"] == 3 and [j["uid"] for j in page["items"]] == uids[::-1][:2]
    assert client.get("/api/v1/jobs?state=EXEC").get_json()["total"] == 0
    assert client.get("/api/v1/jobs?state=UNSCHED&offset=2").get_json()["items"][0]["uid"] == uids[0]
    assert client.get("/api/v1/jobs?state=RUNNING").status_code == 422
    assert client.get("/api/v1/jobs?limit=abc").status_code == 422
    assert client.get(f"/api/v1/jobs/{uids[1]}").get_json()["name"] == "j1"
    r = client.get("/api/v1/jobs/nope")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_cancel_then_conflict(client, control, store):
    uid = submit(client).get_json()["uid"]
    r = client.post(f"/api/v1/jobs/{uid}/cancel")
    assert r.status_code == 200 and r.get_json()["state"] == "CANCELLED"
    assert [t["to"] for t in r.get_json()["transitions"]] == ["UNSCHED", "CANCELLED"]
    assert ("stopped", uid) in control.calls
    r = client.post(f"/api/v1/jobs/{uid}/cancel")
    assert r.status_code == 409 and error_of(r)["code"] == "conflict"
    assert client.post("/api/v1/jobs/nope/cancel").status_code == 404


def test_illegal_transition_is_409(client, store):
    uid = submit(client).get_json()["uid"]
    store.transition(uid, JobState.EXEC, "planned")
    store.transition(uid, JobState.DONE, "source ended")
    r = client.put(f"/api/v1/jobs/{uid}/constraint", json={"delay": 2})
    assert r.status_code == 409
    assert client.post(f"/api/v1/jobs/{uid}/cancel").status_code == 409


def test_delete(client, control, store):
    uid = submit(client).get_json()["uid"]
    store.add_plan(uid, Plan.model_validate({"video_conf": {}, "flow_mapping": {"det": {"node": "cloud"},
                                                                                 "count": {"node": "cloud"}}}))
    store.save_frames(uid, [FrameRecord(uid, 0, 1, 0.0, 64, 48, 0.1, {})])
    r = client.delete(f"/api/v1/jobs/{uid}")
    assert r.status_code == 204 and r.data == b""
    assert ("stopped", uid) in control.calls
    assert client.get(f"/api/v1/jobs/{uid}").status_code == 404
    assert store.result_count(uid) == 0
    assert client.delete(f"/api/v1/jobs/{uid}").status_code == 404


def test_put_constraint(client, control):
    uid = submit(client).get_json()["uid"]
    r = client.put(f"/api/v1/jobs/{uid}/constraint", json={"delay": 0.25, "accuracy": 0.9})
    assert r.status_code == 200 and r.get_json()["constraint"] == {"delay": 0.25, "accuracy": 0.9}
    assert ("replan", uid) in control.calls
    r = client.put(f"/api/v1/jobs/{uid}/constraint", json={"delay": 0})
    assert r.status_code == 422 and "delay" in error_of(r)["message"]


# -- results, plans, nodes, services ---------------------------------------------------------

def test_results_paging(client, store):
    uid = submit(client).get_json()["uid"]
    stages = [StageRecord("det", "cloud", "w", 0.01, 0.05)]
    store.save_frames(uid, [FrameRecord(uid, s, 1, s / 10, 64, 48, 0.1, {"count": {"counts": {"person": s}}}, stages)
                            for s in range(25)])
    seen, after = [], -1
    while True:
        page = client.get(f"/api/v1/jobs/{uid}/results?after_seq={after}&limit=10").get_json()
        assert page["total"] == 25
        if not page["items"]:
            break
        seen += [f["seq"] for f in page["items"]]
        after = page["next_after_seq"]
    assert seen == list(range(25))
    first = client.get(f"/api/v1/jobs/{uid}/results?limit=1").get_json()["items"][0]
    assert first["outputs"] == {"count": {"counts": {"person": 0}}} and first["stages"][0]["service_s"] == 0.05
    assert client.get(f"/api/v1/jobs/{uid}/results?limit=5000").status_code == 422
    assert client.get("/api/v1/jobs/nope/results").status_code == 404


def test_plans_history(client, store):
    uid = submit(client).get_json()["uid"]
    for planner in ("static", "bayes"):
        store.add_plan(uid, Plan.model_validate({
            "video_conf": {"resolution": "480p"}, "planner": planner, "reason": f"{planner} reason",
            "flow_mapping": {"det": {"node": "cloud", "grade": "s"}, "count": {"node": "cloud"}}}))
    items = client.get(f"/api/v1/jobs/{uid}/plans").get_json()["items"]
    assert [p["planner"] for p in items] == ["bayes", "static"] and items[0]["reason"] == "bayes reason"
    assert client.get(f"/api/v1/jobs/{uid}").get_json()["plan"]["planner"] == "bayes"


def test_nodes_and_services(client, store):
    store.upsert_node("edge1", "edge", "10.0.0.2", "10.0.0.2:7000", [{"id": 0, "url": "rtsp://c/0", "type": "t"}],
                      [], {"cpu_count": 2})
    nodes = client.get("/api/v1/nodes").get_json()["items"]
    assert nodes[0]["name"] == "edge1" and nodes[0]["alive"] and nodes[0]["resources"] == {"cpu_count": 2}
    services = {s["name"]: s for s in client.get("/api/v1/services").get_json()["items"]}
    assert {"person_detection", "object_count", "face_detection"} <= set(services)
    assert services["object_count"]["inputs"]["detections"] == {"required": True, "type": "detections"}
    assert services["frame_probe"]["output_types"]["width"] == "number"
    r = submit(client, node="edge1")
    assert r.status_code == 201 and r.get_json()["node"] == "edge1"


def test_json_errors_for_unknown_routes_and_methods(client):
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = client.patch("/api/v1/jobs")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"


def test_openapi_document_and_docs_page(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_uid}", "/api/v1/jobs/{job_uid}/cancel",
            "/api/v1/jobs/{job_uid}/constraint", "/api/v1/jobs/{job_uid}/results", "/api/v1/jobs/{job_uid}/plans",
            "/api/v1/nodes", "/api/v1/services"} <= set(doc["paths"])
    assert "201" in doc["paths"]["/api/v1/jobs"]["post"]["responses"]
    assert client.get("/api/v1/swagger").status_code == 200


# -- auth, restart ---------------------------------------------------------------------------

def test_bearer_token(module_db_url, store, video_dir):
    app = create_app(Settings(database_url=module_db_url, allowed_video_dirs=(video_dir,), api_token="s3cret"),
                     store=store)
    client = app.test_client()
    body = {"source": SYNTH, "stages": DET_COUNT}
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
    assert client.post("/api/v1/jobs", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.post("/api/v1/jobs", json=body, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 201
    assert client.get("/api/v1/jobs").status_code == 200  # reads stay open
    r = client.post("/node/heartbeat", json={"name": "x"})
    assert r.status_code == 401 and r.get_json()["status"] == 1  # seed routes answer in seed style
    assert client.get("/user/get_all_status").status_code == 200


def test_restart_keeps_jobs_plans_and_results(module_db_url, store, settings):
    client = create_app(settings, store=store).test_client()
    uid = submit(client).get_json()["uid"]
    pid = store.add_plan(uid, Plan.model_validate({"video_conf": {}, "flow_mapping": {
        "det": {"node": "cloud"}, "count": {"node": "cloud"}}}))
    store.transition(uid, JobState.EXEC, "planned")
    store.save_frames(uid, [FrameRecord(uid, s, pid, 0.0, 64, 48, 0.1, {}) for s in range(3)])
    store.add_observations(uid, [Observation(stage="det", node="cloud", width=64, height=48, service_s=0.1)])

    fresh = Store(module_db_url)
    try:
        client2 = create_app(settings, store=fresh).test_client()
        job = client2.get(f"/api/v1/jobs/{uid}").get_json()
        assert job["state"] == "EXEC" and job["plan"]["id"] == pid and job["result_count"] == 3
        assert len(client2.get(f"/api/v1/jobs/{uid}/results").get_json()["items"]) == 3
        assert len(fresh.recent_observations(uid)) == 1
    finally:
        fresh.close()


def test_app_opens_and_migrates_its_own_store(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path}/sub/own.db")
    app = create_app(settings)
    client = app.test_client()
    assert client.get("/api/v1/jobs").get_json()["total"] == 0
    assert submit(client).status_code == 201
    app.extensions["vdag"].store.close()
