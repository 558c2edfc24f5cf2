"""A frame that keeps killing its worker is given up after tasks.deliveries.MAX_ATTEMPTS
(issue 10, item 5): each time a process starts it, the test SIGKILLs that process (what a
decoder crash or an out-of-memory kill would do); Celery requeues it (reject_on_worker_lost)
and restarts the process. The frame is then stored with the reason, and the job's other
frames and the job itself carry on."""
from __future__ import annotations

import signal
import threading
import time
import uuid

import psutil
import pytest

from bench.common import delete_queues, node_queues
from tasks.deliveries import MAX_ATTEMPTS
from tests.support.pipeline import (
    AMQP_URL,
    all_results,
    fixed_plan,
    rabbit_up,
    settings_for,
    start_worker_process,
    stop_process,
    submit,
    wait_state,
)
from tracker.server import TrackerServer

pytestmark = pytest.mark.integration

if not rabbit_up():
    pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}", allow_module_level=True)

# Slow enough per frame (an untrained YOLO11m at 720p, about a second on a CPU) to be killed mid-frame.
SLOW = [{"name": "detect", "service": "yolo_detection", "params": {"grade": "m"}, "inputs": {"image": "generator.image"}}]


def test_a_frame_that_kills_its_worker_every_time_is_given_up_and_the_job_goes_on(tmp_path):
    node = f"t{uuid.uuid4().hex[:8]}"
    settings = settings_for(tmp_path, AMQP_URL, node=node, results_queue=f"vdag.results.{node}",
                            reorder_wait_s=300.0, max_in_flight=1)
    markers = tmp_path / "worker" / "deliveries"
    worker = start_worker_process(node, 1, log_path=tmp_path / "worker.log",
                                  extra_env={"VDAG_DATA_DIR": str(tmp_path / "worker"), "VDAG_WARM_UP": "0"})
    server = TrackerServer(settings, pace=0.0, backpressure="block", serve_http=False,
                           scheduler_interval_s=None).start()
    kills: list[str] = []
    done = threading.Event()

    def kill_whoever_starts_the_first_frame() -> None:
        poison = None
        while not done.is_set():
            files = sorted(markers.glob("*")) if markers.exists() else []
            if poison is None and files:
                poison = files[0].name          # the first frame any process starts
            if poison is not None and (markers / poison).exists() and len(kills) < MAX_ATTEMPTS:
                attempt = (markers / poison).read_text()
                if attempt and int(attempt) == len(kills) + 1:
                    for child in psutil.Process(worker.pid).children(recursive=True):
                        child.send_signal(signal.SIGKILL)
                    kills.append(attempt)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_whoever_starts_the_first_frame, daemon=True)
    try:
        killer.start()
        client = server.app.test_client()
        uid = submit(client, "synthetic://1280x720@10/4", SLOW, fixed_plan(["detect"], node=node))
        job = wait_state(client, uid, timeout=420)
        done.set()
        results = all_results(client, uid)
        log = (tmp_path / "worker.log").read_text(errors="replace")
    finally:
        done.set()
        stop_process(worker)
        server.stop()
        delete_queues(*node_queues(node))

    assert len(kills) == MAX_ATTEMPTS, kills
    assert job["state"] == "DONE", job
    assert [r["seq"] for r in results] == [0, 1, 2, 3] and not [r for r in results if r["lost"]]
    errors = [r["outputs"]["detect"].get("error") for r in results]
    assert errors[0] == f"given up: {MAX_ATTEMPTS} worker processes died on this frame", errors
    assert errors[1:] == [None, None, None], "the other frames ran normally"
    assert "given up at stage detect" in log
    assert not list(markers.glob("*")), "no marker left behind"
