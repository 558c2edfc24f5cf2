"""The API front (tracker.web.front): what the core feeds it arrives whole, a full feed
drops frames but never a job's end, unknown calls are refused, and requests the front does
not serve reach the core's real app and come back as they left it."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection

import pytest

from scheduler.interface import Plan
from services.records import FrameRecord
from services.settings import Settings
from tests.support.pipeline import ROOT
from tracker.store.recent_results import LivePlan, RecentResults
from tracker.web.app import create_app
from tracker.web.front import feed as feed_module
from tracker.web.front.feed import FeedSender, MirroredHub, MirroredRecentResults, apply
from tracker.web.front.process import ApiFront
from tracker.web.front.proxy import CoreProxy
from tracker.web.http_server import HttpServer
from tracker.web.viewer.hub import ViewerHub


def _record(seq: int, job: str = "job-a") -> FrameRecord:
    return FrameRecord(job_uid=job, seq=seq, plan_id=1, capture_ts=seq / 10, width=640, height=480,
                       latency_s=0.05, outputs={"probe": {"n": seq}})


def _plan() -> Plan:
    return Plan.model_validate({"video_conf": {"resolution": "480p", "fps": 5, "quality": 80},
                                "flow_mapping": {"probe": {"node": "cloud"}}, "planner": "test"})


@pytest.fixture
def pipe():
    ours, theirs = socket.socketpair()
    sender, receiver = Connection(ours.detach()), Connection(theirs.detach())
    yield sender, receiver
    sender.close()
    receiver.close()


def _drain(receiver: Connection, recent: RecentResults, hub: ViewerHub, expected: int) -> None:
    for _ in range(expected):
        assert receiver.poll(5), "the feed delivered fewer calls than were made"
        apply(receiver.recv(), recent, hub)


def test_the_front_sees_what_the_core_stores_renders_and_ends(pipe):
    sender, receiver = pipe
    feed = FeedSender()
    feed.attach(sender)
    core_recent, core_hub = MirroredRecentResults(feed), MirroredHub(feed)
    core_recent.start("job-a", 0)
    core_recent.set_plan("job-a", LivePlan(("probe",), 1, _plan(), 10.0))
    core_recent.add("job-a", [_record(0), _record(1)])
    core_recent.add("job-a", [_record(2)])
    core_hub.publish("job-a", 2, b"\xff\xd8jpeg\xff\xd9")

    recent, hub = RecentResults(), ViewerHub()
    sub = hub.subscribe("job-a")
    _drain(receiver, recent, hub, 5)
    assert [r.seq for r in recent.after("job-a", -1, 10)] == [0, 1, 2]
    assert recent.after("job-a", -1, 10)[2].outputs == {"probe": {"n": 2}}
    assert recent.plan("job-a").plan == _plan()
    assert sub.get(timeout=1) == (2, b"\xff\xd8jpeg\xff\xd9")

    core_hub.close_job("job-a")
    core_recent.forget("job-a")
    _drain(receiver, recent, hub, 2)
    assert hub.is_closed("job-a")
    assert recent.total("job-a") is None and recent.plan("job-a") is None  # polls now read the store
    feed.stop()
    assert feed.sent == 7 and feed.dropped == 0


def test_a_full_feed_drops_frames_and_counts_them_but_waits_for_a_job_end(pipe, monkeypatch):
    sender, _receiver = pipe
    monkeypatch.setattr(feed_module, "CONTROL_PUT_TIMEOUT_S", 0.2)
    feed = FeedSender(sender, maxsize=1)  # never attached: its writer never runs, nothing leaves the queue
    hub = MirroredHub(feed)
    hub.publish("job-a", 0, b"a")
    hub.publish("job-a", 1, b"b")
    assert feed.dropped == 1
    started = time.monotonic()
    hub.close_job("job-a")  # waited for room, then given up and counted
    assert time.monotonic() - started >= 0.2
    assert feed.dropped == 2


@pytest.mark.parametrize("message", [("hub", "close", ()), ("recent", "__init__", ()), ("store", "add", ()),
                                     ("hub", "subscribe", ("job-a",))])
def test_the_front_refuses_calls_it_does_not_mirror(message):
    with pytest.raises(ValueError, match="unexpected feed call"):
        apply(message, RecentResults(), ViewerHub())


@pytest.fixture
def core_and_front(module_db_url, store, tmp_path):
    """The core's real app behind a real HTTP server, and a front app over the same store."""
    settings = Settings(database_url=module_db_url, allowed_video_dirs=(tmp_path,))
    core = HttpServer(create_app(settings, store=store), "127.0.0.1", 0, "test-core")
    core.start()
    front = create_app(settings, store=store, recent=RecentResults(), hub=ViewerHub())
    CoreProxy(f"http://127.0.0.1:{core.port}").init_app(front)
    yield core, front.test_client()
    core.stop()


JOB = {"source": "synthetic://320x180@10/20",
       "stages": [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}}]}


def test_what_the_front_does_not_serve_is_answered_by_the_core(core_and_front, store):
    _core, client = core_and_front
    resp = client.post("/api/v1/jobs", json=JOB)
    assert resp.status_code == 201, resp.get_json()
    uid = resp.get_json()["uid"]
    assert store.get_job(uid).uid == uid  # the core's handler made it
    assert client.get(f"/api/v1/jobs/{uid}").get_json()["uid"] == uid
    bad = client.post("/api/v1/jobs", json={"stages": []})
    assert bad.status_code == 422 and bad.get_json()["error"]["code"] == "validation_failed"
    seed = client.post("/user/submit_job_user_constraint", json={"uid": uid, "user_constraint": {}})
    assert seed.status_code == 400 and seed.is_json  # the seed route's own strict answer, relayed


def test_polls_go_on_while_the_core_is_away_and_the_rest_is_a_503(core_and_front):
    core, client = core_and_front
    uid = client.post("/api/v1/jobs", json=JOB).get_json()["uid"]
    core.stop()
    polled = client.get(f"/api/v1/jobs/{uid}/results?after_seq=-1")
    assert polled.status_code == 200 and polled.get_json()["items"] == []  # from the store, in the front
    away = client.get(f"/api/v1/jobs/{uid}")
    assert away.status_code == 503
    assert away.get_json()["error"]["code"] == "core_unavailable" and away.headers["Retry-After"] == "2"
    assert client.get("/api/v1/no-such-route").status_code == 404  # answered by the front itself


CORE = """
import sys, time
from services.settings import Settings
from tracker.store import Store
from tracker.web.front.process import ApiFront
settings = Settings(database_url=sys.argv[1], api_port=0, video_port=0)
Store(settings.database_url).close()  # migrated, as the core does before starting its front
front = ApiFront(settings, "127.0.0.1").start("http://127.0.0.1:9")  # no core app there: forwards are 503s
print(front.process.pid, front.ports.api, flush=True)
time.sleep(600)
"""


def test_the_front_process_ends_when_its_core_is_killed(tmp_path):
    import psutil
    import requests

    core = subprocess.Popen([sys.executable, "-c", CORE, f"sqlite:///{tmp_path}/front.db"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        pid, port = map(int, core.stdout.readline().split())
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/api/v1/jobs/job-x/results", timeout=10).status_code == 404  # served there
        assert requests.get(f"{base}/api/v1/jobs", timeout=10).status_code == 503  # forwarded: no core app
        front = psutil.Process(pid)
        core.kill()  # SIGKILL: nothing of the core runs any more, only the pipe's end closes
        front.wait(10)
    finally:
        core.kill()
        core.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_front_that_dies_is_started_again_on_the_same_port(tmp_path):
    import requests

    from tracker.store import Store

    port = _free_port()
    settings = Settings(database_url=f"sqlite:///{tmp_path}/front.db", api_port=port, video_port=port)
    Store(settings.database_url).close()
    front = ApiFront(settings, "127.0.0.1").start("http://127.0.0.1:9")
    try:
        first = front.process
        first.kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (front.restarts == 0 or front.process is first):
            time.sleep(0.1)
        assert front.restarts == 1 and front.ports.api == port
        assert requests.get(f"http://127.0.0.1:{port}/api/v1/jobs/job-x/results", timeout=10).status_code == 404
        sent = front.feed.sent
        front.hub.publish("job-x", 0, b"jpeg")  # the feed goes to the new front
        deadline = time.monotonic() + 5
        while front.feed.sent == sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert front.feed.sent == sent + 1 and not front.feed.broken
    finally:
        front.stop()
    assert front.process.poll() is not None


def test_the_front_runs_as_its_own_module():
    out = subprocess.run([sys.executable, "-m", "tracker.web.front", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "started by a tracker core" in out.stdout


def test_an_idle_server_does_not_spin():
    """waitress reads asyncore_loop_timeout with int(): 0.2 became 0, a select() busy loop that
    took 0.7 of a core from every tracker with no request at all."""
    from flask import Flask

    server = HttpServer(Flask(__name__), "127.0.0.1", 0, "test-idle")
    server.start()
    try:
        time.sleep(0.2)
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(1.0)
        used = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    finally:
        server.stop()
    assert used < 0.1, f"an idle server used {used:.0%} of a core"
