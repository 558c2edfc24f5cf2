"""The embedded default end to end: memory broker, in-process worker, SQLite, real API."""
from __future__ import annotations

import time

import pytest

from scheduler.interface import Plan
from services.dag import DagSpec
from tests.support.pipeline import VTEST, all_results, fixed_plan, settings_for, submit, wait_state
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
    # So is a stream (under VDAG_URL_PROBE_TIMEOUT_S; port 9 refuses at once).
    resp = client.post("/api/v1/jobs", json={"source": "http://127.0.0.1:9/camera.mjpg", "stages": PROBE,
                                             "plan": fixed_plan(["probe"])})
    assert resp.status_code == 422 and resp.get_json()["error"]["details"][0]["loc"] == ["source"], resp.get_json()
    # A source that stops opening after the submit fails its job with the reason.
    gone = tmp_path / "gone.avi"
    gone.write_bytes((tmp_path / "broken.avi").read_bytes())
    uid = embedded.runtime.control.submit(dag=DagSpec(stages=PROBE), source=str(gone),
                                          fixed_plan=Plan.model_validate(fixed_plan(["probe"]))).uid
    job = wait_state(client, uid, timeout=30)
    assert job["state"] == "FAILED" and "video source failed" in job["reason"], job
    assert client.get("/api/v1/jobs").get_json()["total"] == 1


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


PEOPLE = [
    {"name": "detect", "service": "person_detection", "inputs": {"image": "generator.image"}},
    {"name": "count", "service": "object_count", "inputs": {"detections": "detect.detections"},
     "params": {"line": [0.0, 0.5, 1.0, 0.5]}},
    {"name": "render", "service": "render",
     "inputs": {"image": "generator.image", "detections": "detect.detections", "counts": "count.counts"}},
]


@pytest.fixture
def embedded_solo(tmp_path):
    """One in-process worker, as `vdag up` runs: frames are taken in order, so a tracked frame
    finds the one before it in the worker's track store."""
    server = TrackerServer(settings_for(tmp_path, "memory://"), in_process_workers=1, pace=0.0,
                           backpressure="block", serve_http=False, scheduler_interval_s=None).start()
    yield server
    server.stop()


@pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc provides vtest.avi")
def test_every_kept_frame_gets_boxes_detected_or_tracked(embedded_solo, tmp_path):
    """Real video, real model: with ntracking = 3 the detector runs on every 4th kept frame and
    every other kept frame is tracked from the one before; counts, identities, line counts and
    rendered pictures cover every kept frame."""
    from bench.common import write_clip

    clip = write_clip(tmp_path / "people.avi", 24)
    plan = fixed_plan([s["name"] for s in PEOPLE], resolution="480p")
    plan["video_conf"]["ntracking"] = 3
    embedded = embedded_solo
    client = embedded.app.test_client()
    uid = submit(client, str(clip), PEOPLE, plan)
    job = wait_state(client, uid, timeout=180)
    assert job["state"] == "DONE", job
    results = all_results(client, uid)
    assert [r["seq"] for r in results] == list(range(24)) and not any(r["lost"] for r in results)
    assert [r["produced"] for r in results[:8]] == ["detected", "tracked", "tracked", "tracked"] * 2
    for r in results:
        dets = r["outputs"]["detect"]["detections"]
        assert dets and all("id" in d for d in dets)  # people in every frame, each with a track id
        assert r["outputs"]["count"]["total"] == len(dets)
        assert set(r["outputs"]["count"]["count_result"]) >= {"up", "total"}
    ids = [{d["id"] for d in r["outputs"]["detect"]["detections"]} for r in results[:4]]
    assert ids[0] == ids[1] == ids[2] == ids[3]  # tracked frames keep the detected frame's identities
    assert job["stats"]["frames_tracked"] == 18
    assert embedded.hub.published(uid) == 24  # the viewer got a rendered picture of every kept frame


@pytest.mark.browser
@pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc provides vtest.avi")
def test_browser_viewer_shows_boxes_on_tracked_frames_too(chrome, tmp_path):
    """`vdag up`'s path in a real browser: the job page's MJPEG <img> shows rendered frames with
    person boxes drawn while most frames are tracked (ntracking = 3), and the picture moves."""
    import io

    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bench.common import write_clip
    from services.render import class_color

    driver = chrome
    clip = write_clip(tmp_path / "people.avi", 60)
    server = TrackerServer(settings_for(tmp_path, "memory://"), in_process_workers=1, pace=1.0,
                           backpressure="drop", serve_http=True, scheduler_interval_s=None).start()
    try:
        plan = fixed_plan([s["name"] for s in PEOPLE], resolution="480p")
        plan["video_conf"]["ntracking"] = 3
        uid = submit(server.app.test_client(), str(clip), PEOPLE, plan)
        driver.get(f"{server.api_url}/jobs/{uid}")
        img = driver.find_element(By.ID, "live")
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return arguments[0].naturalWidth", img) == 640)
        box = np.array(class_color("person"), float)[::-1]  # BGR drawn -> RGB on screen
        shots = []
        for _ in range(4):
            png = img.screenshot_as_png
            shots.append(png)
            rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), float)
            near = (np.abs(rgb - box).sum(axis=2) < 60).sum()
            assert near > 200, f"no person boxes drawn in the viewer ({near} box-coloured pixels)"
            time.sleep(0.7)
        assert len(set(shots)) >= 3, "the viewer's picture did not move"
        results = all_results(server.app.test_client(), uid)
        assert {"detected", "tracked"} <= {r["produced"] for r in results}
    finally:
        server.stop()


@pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc provides vtest.avi")
def test_vdag_up_runs_the_person_job_and_says_what_it_decided(tmp_path):
    """The README's first command, on a short clip: the embedded default end to end through the
    real CLI, ending with the planner's decisions and their reasons."""
    import os
    import re
    import subprocess
    import sys

    from bench.common import write_clip
    from tests.support.pipeline import ROOT

    clip = write_clip(tmp_path / "people.avi", 30)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "tracker.cli", "up", str(clip), "--exit-when-done", "--fast",
                           "--api-port", "0", "--video-port", "0", "--service-port", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, (out[-2000:], proc.stderr[-2000:])
    assert re.search(r"job ended: DONE \(end of video\): [1-9]\d* frames stored", out), out[:3000]
    assert "what the planner decided, and why" in out and "E[F1]=" in out, out[:3000]
    # (a clip this short may end before any measurement: "none" is the honest answer then)
    assert re.search(r"first plan from this run's measurements: (\d+\.\d s after|none)", out), out[-3000:]
    assert re.search(r"after the first 20 s of video: \d+ of \d+ frames within D = 1 s", out), out[-3000:]
    assert (tmp_path / "var" / "vdag.db").exists()


def _profiler_children() -> list:
    import psutil

    return [p for p in psutil.Process().children() if "tasks.profiler" in " ".join(p.cmdline())]


@pytest.mark.skipif(not VTEST.exists(), reason="the profiling child loads the person detector")
def test_stopping_the_embedded_worker_ends_its_profiling_child(tmp_path):
    """Each start of an in-process worker starts a profiling child (~1.2 GB); a stop ends it,
    and a restart in the same process leaves one, not one per start."""
    before = {p.pid for p in _profiler_children()}
    for _ in range(2):
        server = TrackerServer(settings_for(tmp_path, "memory://"), in_process_workers=1, pace=0.0,
                               backpressure="block", serve_http=False, scheduler_interval_s=None).start()
        started = [p for p in _profiler_children() if p.pid not in before]
        assert len(started) == 1
        server.stop()
        assert not started[0].is_running() or started[0].status() == "zombie"


@pytest.mark.skipif(not VTEST.exists(), reason="the profiling child loads the person detector")
def test_a_threads_pool_embedded_worker_warms_up_before_it_takes_tasks(tmp_path):
    """Celery's threads pool sends no worker_process_init: `vdag up --workers 2` warmed
    nothing and its first frames paid the model load. Now it is warm once it consumes."""
    from tasks.worker_state import service_context

    before = {p.pid for p in _profiler_children()}
    server = TrackerServer(settings_for(tmp_path, "memory://"), in_process_workers=2, pace=0.0,
                           backpressure="block", serve_http=False, scheduler_interval_s=None).start()
    try:
        assert server.worker.pool == "threads"
        ctx = service_context(server.settings)
        assert len(ctx.models) == 1 and ctx.person_weights  # the detector is loaded before any task
        assert len([p for p in _profiler_children() if p.pid not in before]) == 1
    finally:
        server.stop()
