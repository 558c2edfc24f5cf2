"""Submit-time checks in cluster mode, over the real HTTP API (issue 10, items 6 and 7): a DAG
whose input has the wrong type and a URL source that does not open are 422s naming the field;
a real video served over HTTP is accepted and runs to the end through RabbitMQ and a worker."""
from __future__ import annotations

import functools
import shutil
import threading
import time
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from bench.common import delete_queues, node_queues, write_clip
from tests.support.db import drop_pg_schema, new_pg_schema, pg_unreachable
from tests.support.pipeline import (
    AMQP_URL,
    VTEST,
    fixed_plan,
    rabbit_up,
    settings_for,
    start_worker_process,
    stop_process,
)
from tracker.server import TrackerServer

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc provides vtest.avi")]

if not rabbit_up():
    pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}", allow_module_level=True)

PEOPLE = [
    {"name": "detect", "service": "person_detection", "inputs": {"image": "generator.image"}},
    {"name": "count", "service": "object_count", "inputs": {"detections": "detect.detections"}},
]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def cluster(tmp_path):
    if (reason := pg_unreachable()) is not None:
        pytest.skip(reason)
    schema, url = new_pg_schema()
    node = f"t{uuid.uuid4().hex[:8]}"
    settings = settings_for(tmp_path, AMQP_URL, node=node, results_queue=f"vdag.results.{node}").model_copy(
        update={"database_url": url})
    worker = start_worker_process(node, 1, log_path=tmp_path / "worker.log")
    server = TrackerServer(settings, pace=1.0, backpressure="drop", serve_http=True, scheduler_interval_s=None).start()
    videos = tmp_path / "served"
    videos.mkdir()
    write_clip(videos / "people.avi", 30)                 # 3 s of vtest.avi
    http = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(videos)))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield server, node, f"http://127.0.0.1:{http.server_address[1]}"
    http.shutdown()
    http.server_close()
    server.stop()
    stop_process(worker)
    delete_queues(*node_queues(node))
    drop_pg_schema(schema)
    shutil.rmtree(videos, ignore_errors=True)


def test_bad_types_and_dead_urls_are_422_and_a_served_video_runs(cluster):
    server, node, served = cluster
    api = f"{server.api_url}/api/v1/jobs"
    plan = fixed_plan(["detect", "count"], node=node, resolution="360p", fps=5)

    wrong = [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}},
             {"name": "count", "service": "object_count", "inputs": {"detections": "probe.width"}}]
    r = requests.post(api, json={"source": f"{served}/people.avi", "stages": wrong}, timeout=30)
    assert r.status_code == 422 and "takes detections" in r.json()["error"]["message"], r.text

    t0 = time.monotonic()
    r = requests.post(api, json={"source": f"{served}/missing.avi", "stages": PEOPLE, "plan": plan}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == ["source"], r.text
    assert time.monotonic() - t0 < 10
    assert requests.get(api, timeout=10).json()["total"] == 0, "nothing stored for refused jobs"

    r = requests.post(api, json={"source": f"{served}/people.avi", "stages": PEOPLE, "plan": plan}, timeout=30)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["source_info"] == {"width": 768, "height": 576, "fps": 10.0}, job["source_info"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = requests.get(f"{api}/{job['uid']}", timeout=10).json()
        if job["state"] in ("DONE", "FAILED"):
            break
        time.sleep(0.5)
    assert job["state"] == "DONE", job
    results = requests.get(f"{api}/{job['uid']}/results?limit=100", timeout=10).json()["items"]
    people = [r["outputs"]["count"]["total"] for r in results if not r["lost"]]
    assert len(people) >= 5 and sum(1 for p in people if p >= 1) >= 0.8 * len(people), people
