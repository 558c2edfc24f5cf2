"""The embedded default end to end: memory broker, in-process worker, SQLite, real API."""
from __future__ import annotations

import time

import pytest

from tests.pipeline_support import all_results, fixed_plan, settings_for, submit, wait_state
from tracker.server import TrackerServer

PROBE = [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}}]


@pytest.fixture
def embedded(tmp_path):
    server = TrackerServer(settings_for(tmp_path, "memory://"), in_process_workers=2, pace=0.0,
                           backpressure="block", serve_http=False, scheduler_interval_s=None).start()
    yield server
    server.stop()


def test_every_frame_stored_once_in_order(embedded):
    client = embedded.app.test_client()
    uid = submit(client, "synthetic://320x180@30/120", PROBE, fixed_plan(["probe"], resolution="source"))
    job = wait_state(client, uid, timeout=60)
    assert job["state"] == "DONE", job
    results = all_results(client, uid)
    assert [r["seq"] for r in results] == list(range(120))
    assert all(not r["lost"] for r in results)
    assert results[0]["outputs"]["probe"]["width"] == 320
    stage = results[0]["stages"][0]
    assert stage["node"] == "cloud" and stage["worker"].startswith("cloud/")
    assert job["stats"]["frames_out"] == 120 and job["stats"]["frames_dropped"] == 0


def test_resolution_and_fps_knobs_are_applied(embedded):
    client = embedded.app.test_client()
    uid = submit(client, "synthetic://640x360@30/90", PROBE, fixed_plan(["probe"], resolution="360p", fps=10))
    assert wait_state(client, uid, timeout=60)["state"] == "DONE"
    results = all_results(client, uid)
    assert len(results) == 30  # 3 s of video at 10 fps
    assert {r["width"] for r in results} == {640}
    uid = submit(client, "synthetic://1280x720@30/30", PROBE, fixed_plan(["probe"], resolution="360p"))
    assert wait_state(client, uid, timeout=60)["state"] == "DONE"
    first = all_results(client, uid)[0]
    assert (first["width"], first["height"]) == (640, 360)
    assert first["outputs"]["probe"]["height"] == 360


def test_unreadable_sources_are_refused_or_fail_the_job_with_a_reason(embedded, tmp_path):
    client = embedded.app.test_client()
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"not a video at all" * 100)
    # A local file is probed at submission: refused, naming the field, nothing stored.
    resp = client.post("/api/v1/jobs", json={"source": str(bad), "stages": PROBE, "plan": fixed_plan(["probe"])})
    assert resp.status_code in (400, 422) and "source" in str(resp.get_json())
    assert client.get("/api/v1/jobs").get_json()["total"] == 0
    # A stream is only opened when the job starts: the job fails with the reason.
    uid = submit(client, "http://127.0.0.1:9/camera.mjpg", PROBE, fixed_plan(["probe"]))
    job = wait_state(client, uid, timeout=30)
    assert job["state"] == "FAILED" and "cannot open video source" in job["reason"], job


def test_slow_stage_never_exceeds_the_window_and_counts_drops(tmp_path):
    settings = settings_for(tmp_path, "memory://", max_in_flight=3)
    server = TrackerServer(settings, in_process_workers=1, pace=1.0, backpressure="drop",
                           serve_http=False, scheduler_interval_s=None).start()
    try:
        client = server.app.test_client()
        slow = [{"name": "detect", "service": "yolo_detection", "params": {"grade": "s"},
                 "inputs": {"image": "generator.image"}}]
        uid = submit(client, "synthetic://1280x720@30/60", slow, fixed_plan(["detect"], resolution="720p"))
        job = wait_state(client, uid, timeout=120)
        stats = job["stats"]
        assert job["state"] == "DONE"
        assert stats["peak_in_flight"] <= 3
        assert stats["frames_dropped"] > 0, stats
        assert stats["frames_read"] == 60 == stats["frames_sent"] + stats["frames_dropped"] + stats["frames_skipped"]
        results = all_results(client, uid)
        assert [r["seq"] for r in results] == list(range(stats["frames_sent"]))
    finally:
        server.stop()


def test_clip_generator_sends_recent_frames(embedded):
    client = embedded.app.test_client()
    stages = [{"name": "probe", "service": "frame_probe", "inputs": {"image": "ClipGenerator.image"}}]
    uid = submit(client, "synthetic://320x180@30/10", stages, fixed_plan(["probe"]), generator="ClipGenerator")
    assert wait_state(client, uid, timeout=60)["state"] == "DONE"
    assert len(all_results(client, uid)) == 10


def test_tracker_restart_keeps_jobs_and_resumes_running_ones(tmp_path):
    settings = settings_for(tmp_path, "memory://")
    source = "synthetic://320x180@20/80"  # 4 s of video, read in real time

    def start():
        return TrackerServer(settings, in_process_workers=1, pace=1.0, backpressure="block",
                             serve_http=False, scheduler_interval_s=None).start()

    server = start()
    uid = submit(server.app.test_client(), source, PROBE, fixed_plan(["probe"]))
    deadline = time.monotonic() + 30
    while server.store.result_count(uid) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop()

    server = start()
    try:
        client = server.app.test_client()
        assert client.get(f"/api/v1/jobs/{uid}/plans").get_json()["items"], "plans survive the restart"
        job = wait_state(client, uid, timeout=60)
        assert job["state"] == "DONE", job
        results = all_results(client, uid)
        seqs = [r["seq"] for r in results]
        assert seqs == list(range(len(seqs))), "one gap-free sequence across the restart"
        captured = [r["capture_ts"] for r in results if not r["lost"]]
        assert captured == sorted(set(captured)), "no source frame processed twice"
        assert len(captured) >= 70, f"only {len(captured)} of 80 frames after resuming"
        assert any(t["reason"] for t in job["transitions"])
    finally:
        server.stop()
