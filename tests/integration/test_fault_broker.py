"""A RabbitMQ restart in the middle of a real-time job (issue 10, item 1): the generator drops
and counts the frames the broker cannot take, the job is producing again within seconds of the
broker's return and ends DONE, and every frame sent is stored or accounted for."""
from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest

from bench.common import delete_queues, node_queues
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

RABBITMQCTL = shutil.which("rabbitmqctl")
PROBE = [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}}]

if not rabbit_up() or RABBITMQCTL is None:
    pytest.skip("a local RabbitMQ and rabbitmqctl are needed", allow_module_level=True)


def rabbitmqctl(*args: str) -> None:
    subprocess.run([RABBITMQCTL, *args], check=True, capture_output=True, timeout=60)


def wait_for(pred, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - t0


def test_a_broker_restart_mid_job_drops_and_counts_frames_then_the_job_resumes(tmp_path):
    node = f"t{uuid.uuid4().hex[:8]}"
    settings = settings_for(tmp_path, AMQP_URL, node=node, results_queue=f"vdag.results.{node}",
                            reorder_wait_s=15.0, max_in_flight=8)
    server = TrackerServer(settings, pace=1.0, backpressure="drop", serve_http=False,
                           scheduler_interval_s=None).start()
    worker = start_worker_process(node, 1, log_path=tmp_path / "worker.log")
    try:
        client = server.app.test_client()
        # 40 s of 10 fps video played in real time: long enough to span the outage.
        uid = submit(client, "synthetic://320x180@10/400", PROBE, fixed_plan(["probe"], node=node))
        wait_for(lambda: server.store.result_count(uid) >= 20, 120, "first results")
        rabbitmqctl("stop_app")
        try:
            time.sleep(5)
            job = client.get(f"/api/v1/jobs/{uid}").get_json()
            assert job["state"] == "EXEC", job
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        stored_at_return = server.store.result_count(uid)
        resume_s = wait_for(lambda: server.store.result_count(uid) >= stored_at_return + 10, 30,
                            "frames stored after the broker's return")
        job = wait_state(client, uid, timeout=120)
    finally:
        stop_process(worker)
        server.stop()
        delete_queues(*node_queues(node))

    assert job["state"] == "DONE", job
    stats = job["stats"]
    assert resume_s <= 10 + 1.0, f"resumed {resume_s:.1f} s after the broker's return"
    assert stats["frames_dropped_broker"] >= 20, stats      # ~5 s of 10 fps could not be sent
    assert stats["frames_read"] == 400 == stats["frames_sent"] + stats["frames_dropped"] + stats["frames_skipped"]
    results = all_results(client, uid)
    seqs = [r["seq"] for r in results]
    assert seqs == list(range(stats["frames_sent"])), "every frame sent has exactly one record"
    assert not [r["seq"] for r in results if r["lost"]], "frames in flight at the stop were redelivered, not lost"
    assert stats["frames_lost"] == 0 and stats["frames_out"] == stats["frames_sent"], stats
