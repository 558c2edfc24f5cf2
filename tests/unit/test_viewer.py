"""MJPEG routes and pages of the viewer: through the Flask test client and a real HTTP server
(the hub alone: test_viewer_hub.py)."""
from __future__ import annotations

import dataclasses
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify

from scheduler.interface import UserConstraint
from services.settings import Settings
from tests.support.viewer import FAST, JOB, StreamClient, fake_jpeg, real_app, serve, wait_until
from tracker.runtime.job_control import JobControl, RecordedEffects
from tracker.store.jobs import Job, JobNotFound, JobState, dag_unchecked
from tracker.web import errors
from tracker.web.context import TrackerContext
from tracker.web.viewer.hub import ViewerHub
from tracker.web.viewer.routes import JobEndReads, bp


# -- fixtures and helpers ---------------------------------------------------------------
class FakeStore:
    """The store methods the viewer uses, over real `Job` objects, without a database.

    `get_job` raises JobNotFound like the real Store, or returns None (`raises=False`)."""

    def __init__(self, raises: bool = True) -> None:
        self.raises = raises
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def add(self, uid: str, state: str = "EXEC") -> None:
        now = datetime.now(timezone.utc)
        dag = dag_unchecked({"stages": [
            {"name": "detect", "service": "yolo_detect", "params": {}, "inputs": {}},
            {"name": "count", "service": "count", "params": {}, "inputs": {}},
        ]})
        self.jobs[uid] = Job(
            uid=uid, name=f"name of {uid}", source="/usr/share/doc/opencv-doc/examples/data/vtest.avi",
            source_info=None, dag=dag, constraint=UserConstraint(), fixed_plan=None,
            state=JobState(state), state_reason="test", node="edge-7", created_at=now, updated_at=now,
        )

    def set_state(self, uid: str, state: str) -> None:
        with self.lock:
            self.jobs[uid] = dataclasses.replace(self.jobs[uid], state=JobState(state))

    def get_job(self, uid: str) -> Job | None:
        with self.lock:
            job = self.jobs.get(uid)
        if job is None and self.raises:
            raise JobNotFound(uid)
        return job

    def list_jobs(self, limit: int = 50) -> tuple[list[Job], int]:
        with self.lock:
            return list(self.jobs.values())[:limit], len(self.jobs)


def make_app(store: FakeStore, hub: ViewerHub, **config: Any) -> Flask:
    """A bare Flask app: the viewer blueprint, the JSON error handlers, and a stand-in for
    the two JSON API routes the pages poll (same shapes as tracker.web.api.jobs)."""
    app = Flask(__name__)
    app.config.update(FAST, **config)
    app.extensions["vdag"] = TrackerContext(
        settings=Settings(), store=store, hub=hub, control=JobControl(store, RecordedEffects())
    )
    errors.init_app(app)
    app.register_blueprint(bp)

    def summary(job: Job) -> dict[str, Any]:
        return {"uid": job.uid, "name": job.name, "source": job.source, "node": job.node,
                "state": job.state.value, "reason": job.state_reason,
                "created_at": job.created_at.isoformat(), "updated_at": job.updated_at.isoformat()}

    @app.get("/api/v1/jobs")
    def api_jobs():
        jobs, total = store.list_jobs()
        return jsonify({"items": [summary(j) for j in jobs], "total": total, "limit": 50, "offset": 0})

    @app.get("/api/v1/jobs/<uid>")
    def api_job(uid: str):
        job = store.get_job(uid)
        plan = {"id": 3, "created_at": job.created_at.isoformat(), "planner": "bayes", "reason": "p95 ok",
                "video_conf": {"resolution": "480p", "fps": 10, "quality": 80},
                "flow_mapping": {"detect": {"node": "edge-7", "node_role": "edge", "grade": "n"}}}
        return jsonify({**summary(job), "plan": plan, "stats": {"latency_p50_s": 0.1},
                        "result_count": hub.published(uid)})

    return app


@pytest.fixture
def hub() -> ViewerHub:
    return ViewerHub()


@pytest.fixture
def store() -> FakeStore:
    s = FakeStore()
    s.add(JOB)
    return s


def request_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "process_request_thread" in t.name}


# -- routes through the Flask test client -----------------------------------------------
@pytest.mark.parametrize("raises", [True, False], ids=["store-raises", "store-returns-none"])
@pytest.mark.parametrize("path", ["/user/video/nope", "/api/v1/jobs/nope/video", "/api/v1/jobs/nope/viewers"])
def test_unknown_job_is_404_json(hub: ViewerHub, raises: bool, path: str) -> None:
    client = make_app(FakeStore(raises=raises), hub).test_client()
    resp = client.get(path)
    assert resp.status_code == 404
    body = resp.get_json()
    if path.startswith("/user/"):  # seed-003 convention
        assert body["status"] == 1 and "nope" in body["msg"]
    else:
        assert body["error"]["code"] == "not_found"
    assert hub.subscriber_count() == 0


@pytest.mark.parametrize("fps", ["abc", "0", "-1", "nan", "inf", "1000", "1e999", ""])
def test_bad_fps_is_400_json(hub: ViewerHub, store: FakeStore, fps: str) -> None:
    client = make_app(store, hub).test_client()
    if fps == "":  # empty means "the default cap", not an error
        resp = client.get(f"/api/v1/jobs/{JOB}/video?fps=")
        assert resp.status_code == 200
        resp.close()
        assert hub.subscriber_count() == 0
        return
    resp = client.get(f"/api/v1/jobs/{JOB}/video?fps={fps}")
    assert resp.status_code == 400
    body = resp.get_json()["error"]
    assert body["code"] == "bad_request" and "fps" in body["message"]
    seed = client.get(f"/user/video/{JOB}?fps={fps}")
    assert seed.status_code == 400 and seed.get_json()["status"] == 1
    assert hub.subscriber_count() == 0


def test_stream_via_test_client_unsubscribes_on_close(hub: ViewerHub, store: FakeStore) -> None:
    hub.publish(JOB, 3, fake_jpeg(3, 50))
    resp = make_app(store, hub).test_client().get(f"/api/v1/jobs/{JOB}/video?fps=30")
    assert resp.status_code == 200
    assert resp.mimetype == "multipart/x-mixed-replace"
    assert resp.mimetype_params["boundary"] == "frame"
    assert "no-cache" in resp.headers["Cache-Control"]
    first = next(iter(resp.response))
    assert b"X-Frame-Seq: 3\r\n" in first and first.endswith(fake_jpeg(3, 50) + b"\r\n")
    assert hub.subscriber_count(JOB) == 1
    resp.close()  # what the server does when the client goes away
    assert hub.subscriber_count(JOB) == 0
    # A response that is never iterated holds no subscription at all.
    make_app(store, hub).test_client().get(f"/user/video/{JOB}").close()
    assert hub.subscriber_count(JOB) == 0


def test_waiting_picture_before_first_frame(hub: ViewerHub, store: FakeStore) -> None:
    resp = make_app(store, hub).test_client().get(f"/user/video/{JOB}")
    first = next(iter(resp.response))
    assert b"X-Frame-Seq" not in first and b"\xff\xd8" in first  # a JPEG, no seq
    resp.close()
    assert hub.subscriber_count() == 0


def test_finished_job_shows_last_frame_and_ends(hub: ViewerHub, store: FakeStore) -> None:
    store.set_state(JOB, "DONE")
    hub.publish(JOB, 41, b"\xff\xd8last\xff\xd9")
    resp = make_app(store, hub).test_client().get(f"/user/video/{JOB}")
    body = resp.get_data()  # ends by itself
    assert body.count(b"--frame\r\n") == 1 and b"X-Frame-Seq: 41" in body
    assert hub.subscriber_count() == 0


def test_viewers_endpoint(hub: ViewerHub, store: FakeStore) -> None:
    hub.publish(JOB, 1, b"a")
    with hub.subscribe(JOB):
        body = make_app(store, hub).test_client().get(f"/api/v1/jobs/{JOB}/viewers").get_json()
    assert body["published"] == 1 and body["latest_seq"] == 1
    assert body["viewers"][0]["delivered"] == 0 and body["viewers"][0]["queued"] == 0


def test_pages(hub: ViewerHub, store: FakeStore) -> None:
    store.add("job-<2>", state="DONE")
    client = make_app(store, hub).test_client()
    for path in ("/", "/jobs"):
        html = client.get(path).get_data(as_text=True)
        assert f'href="/jobs/{JOB}"' in html and "job-&lt;2&gt;" in html  # escaped
        assert "edge-7" in html and "vtest.avi" in html
    page = client.get(f"/jobs/{JOB}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert f'src="/user/video/{JOB}"' in html and "/viewer-static/viewer.js" in html
    assert "detect → count" in html
    assert '"/api/v1/jobs/job-%3C2%3E"' in client.get("/jobs/job-<2>").get_data(as_text=True)
    missing = client.get("/jobs/nope")
    assert missing.status_code == 404 and "No job" in missing.get_data(as_text=True)
    assert client.get("/viewer-static/viewer.js").status_code == 200
    assert client.get("/viewer-static/viewer.css").status_code == 200


def test_empty_job_list_page(hub: ViewerHub) -> None:
    html = make_app(FakeStore(), hub).test_client().get("/jobs").get_data(as_text=True)
    assert "No jobs yet" in html


def test_routes_through_create_app(hub: ViewerHub, tmp_path: Path) -> None:
    app, store = real_app(tmp_path, hub)
    client = app.test_client()
    for path in ("/", "/jobs"):
        html = client.get(path).get_data(as_text=True)
        assert f'href="/jobs/{JOB}"' in html and "corridor" in html and "EXEC" in html
    html = client.get(f"/jobs/{JOB}").get_data(as_text=True)
    assert f'src="/user/video/{JOB}"' in html and "detect → count" in html
    job = client.get(f"/api/v1/jobs/{JOB}").get_json()  # what the page polls
    assert job["state"] == "EXEC" and job["plan"]["flow_mapping"]["detect"]["node"] == "edge-7"
    assert client.get("/api/v1/jobs").get_json()["items"][0]["uid"] == JOB
    assert client.get("/user/video/nope").get_json()["status"] == 1
    assert client.get("/api/v1/jobs/nope/video").get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/v1/jobs/{JOB}/video?fps=x").status_code == 400
    assert client.get("/jobs/nope").status_code == 404
    hub.publish(JOB, 5, b"\xff\xd8five\xff\xd9")
    resp = client.get(f"/user/video/{JOB}")
    assert resp.mimetype == "multipart/x-mixed-replace"
    assert b"X-Frame-Seq: 5" in next(iter(resp.response))
    resp.close()
    assert hub.subscriber_count() == 0
    store.transition(JOB, JobState.CANCELLED, "user")
    body = client.get(f"/user/video/{JOB}").get_data()  # ended job: last frame, then the end
    assert body.count(b"--frame") == 1 and b"X-Frame-Seq: 5" in body
    store.close()


# -- real HTTP server -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bare-app", "create_app"])
def test_ten_concurrent_http_viewers_get_every_frame(
    hub: ViewerHub, store: FakeStore, tmp_path: Path, kind: str
) -> None:
    app = make_app(store, hub) if kind == "bare-app" else real_app(tmp_path, hub)[0]
    with serve(app) as port:
        before = request_threads()
        paths = [f"/user/video/{JOB}", f"/api/v1/jobs/{JOB}/video"]
        clients = [StreamClient(port, paths[i % 2]) for i in range(10)]
        for c in clients:
            c.start()
        assert wait_until(lambda: hub.subscriber_count(JOB) == 10, 10), hub.subscriber_count(JOB)
        assert len(request_threads() - before) == 10  # one server thread per viewer, none in the hub
        published = []
        t0 = time.monotonic()
        for seq in range(60):  # ~25 fps, distinct frames
            hub.publish(JOB, seq, fake_jpeg(seq))
            published.append(seq)
            time.sleep(max(0.0, t0 + (seq + 1) * 0.04 - time.monotonic()))
        time.sleep(0.2)
        hub.close_job(JOB)
        for c in clients:
            c.join(10)
            assert not c.is_alive(), "stream did not end after close_job"
        for c in clients:
            assert c.error is None, c.error
            assert c.status == 200 and c.content_type.startswith("multipart/x-mixed-replace")
            assert c.ended_cleanly
            received = set(c.seqs) & set(published)
            assert len(received) >= 57, f"{c.path}: {len(received)} of 60 frames"
            assert c.seqs == sorted(c.seqs), "frames out of order"
        assert wait_until(lambda: hub.subscriber_count() == 0, 5)
        assert wait_until(lambda: request_threads() <= before, 5), request_threads() - before


def test_http_viewers_that_leave_are_unsubscribed(hub: ViewerHub, store: FakeStore) -> None:
    app = make_app(store, hub)
    with serve(app) as port:
        before = request_threads()
        # Five leave while frames flow; five leave while the job is idle (keep-alive notices).
        clients = [StreamClient(port, f"/user/video/{JOB}", stop_after=3) for _ in range(5)]
        for c in clients:
            c.start()
        assert wait_until(lambda: hub.subscriber_count(JOB) == 5, 10)
        stop = threading.Event()

        def publisher() -> None:
            seq = 0
            while not stop.is_set():
                hub.publish(JOB, seq, fake_jpeg(seq, 2000))
                seq += 1
                time.sleep(0.02)

        pub = threading.Thread(target=publisher, daemon=True)
        pub.start()
        try:
            for c in clients:
                c.join(10)
            assert wait_until(lambda: hub.subscriber_count(JOB) == 0, 10), hub.stats(JOB)
        finally:
            stop.set()
            pub.join(2)
        idle = [StreamClient(port, f"/user/video/{JOB}", stop_after=1) for _ in range(5)]
        for c in idle:
            c.start()
        for c in idle:
            c.join(10)
            assert c.parts == 1 and c.seqs  # the last frame, at once
        assert wait_until(lambda: hub.subscriber_count(JOB) == 0, 10), hub.stats(JOB)
        assert wait_until(lambda: request_threads() <= before, 5), request_threads() - before


def test_http_fps_cap_thins_the_stream_but_shows_the_newest_frame(
    hub: ViewerHub, store: FakeStore
) -> None:
    with serve(make_app(store, hub)) as port:
        capped = StreamClient(port, f"/user/video/{JOB}?fps=5")
        full = StreamClient(port, f"/user/video/{JOB}?fps=60")
        default = StreamClient(port, f"/api/v1/jobs/{JOB}/video")  # 30 fps unless asked otherwise
        capped.start(), full.start(), default.start()
        assert wait_until(lambda: hub.subscriber_count(JOB) == 3, 10)
        for seq in range(50):  # 1 s at 50 fps
            hub.publish(JOB, seq, fake_jpeg(seq, 1000))
            time.sleep(0.02)
        time.sleep(0.4)  # the cap lets the held-back newest frame out
        hub.close_job(JOB)
        capped.join(5), full.join(5), default.join(5)
        assert len(full.seqs) >= 48
        assert 4 <= len(capped.seqs) <= 9, capped.seqs
        assert 15 <= len(default.seqs) <= 36, default.seqs
        assert capped.seqs[-1] == default.seqs[-1] == 49


def test_http_viewer_that_stops_reading_is_dropped(hub: ViewerHub, store: FakeStore) -> None:
    """A client that keeps its socket open but reads nothing must not pin a thread."""
    app = make_app(store, hub, VIEWER_SEND_TIMEOUT_S=1.0)
    big = b"\xff\xd8" + bytes(300_000) + b"\xff\xd9"
    with serve(app) as port:
        before = request_threads()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET /user/video/{JOB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        try:
            assert wait_until(lambda: hub.subscriber_count(JOB) == 1, 10)
            deadline = time.monotonic() + 15
            seq = 0
            while hub.subscriber_count(JOB) and time.monotonic() < deadline:
                hub.publish(JOB, seq, big)  # never blocks, whatever the viewer does
                seq += 1
                time.sleep(0.02)
            assert hub.subscriber_count(JOB) == 0, hub.stats(JOB)
            assert wait_until(lambda: request_threads() <= before, 5)
        finally:
            sock.close()


def test_http_stream_ends_when_store_says_job_finished(hub: ViewerHub, tmp_path: Path) -> None:
    app, store = real_app(tmp_path, hub)
    with serve(app) as port:
        client = StreamClient(port, f"/api/v1/jobs/{JOB}/video")
        client.start()
        assert wait_until(lambda: hub.subscriber_count(JOB) == 1, 10)
        # RecordedEffects do not call hub.close_job: the stream must notice by itself.
        resp = app.test_client().post(f"/api/v1/jobs/{JOB}/cancel")
        assert resp.status_code == 200, resp.get_data(as_text=True)
        client.join(5)
        assert not client.is_alive() and client.ended_cleanly
        assert hub.subscriber_count() == 0


def test_viewers_of_a_job_share_one_store_read_per_check(hub: ViewerHub, tmp_path: Path) -> None:
    """Ten viewers asking whether their job ended cost one store read per check period, not ten."""
    app, store = real_app(tmp_path, hub)
    reads = 0
    get_job = store.get_job

    def counted_get_job(uid: str):
        nonlocal reads
        reads += 1
        return get_job(uid)

    store.get_job = counted_get_job
    ends = JobEndReads()
    assert not any(ends.finished(app, store, JOB, max_age_s=60) for _ in range(10))
    assert reads == 1
    assert app.test_client().post(f"/api/v1/jobs/{JOB}/cancel").status_code == 200
    reads = 0
    assert not ends.finished(app, store, JOB, max_age_s=60)  # read less than a period ago
    assert reads == 0
    assert ends.finished(app, store, JOB, max_age_s=0)
    assert reads == 1
