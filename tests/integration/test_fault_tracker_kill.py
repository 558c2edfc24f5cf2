"""A cloud tracker killed with SIGKILL mid-job and started again (issue 10, item 3): the job
continues, no sequence number is used twice (frames the old process had in flight are stored
or recorded lost, never replaced by new ones), and the stats continue from the store instead
of starting from zero."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from bench.common import delete_queues, node_queues
from tests.support.pipeline import (
    AMQP_URL,
    ROOT,
    all_results,
    rabbit_up,
    settings_for,
    start_worker_process,
    stop_process,
    wait_state,
)
from tracker.runtime.resume import SEQ_BLOCK
from tracker.server import TrackerServer

pytestmark = pytest.mark.integration

if not rabbit_up():
    pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}", allow_module_level=True)

# The first tracker: its own process, so that it can be killed; it submits a 30-s job played
# in real time and prints the job's uid.
FIRST_TRACKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tests.support.pipeline import AMQP_URL, fixed_plan, settings_for, submit
    from tracker.server import TrackerServer
    tmp, node = Path(sys.argv[1]), sys.argv[2]
    settings = settings_for(tmp, AMQP_URL, node=node, results_queue=f"vdag.results.{node}", reorder_wait_s=5.0)
    server = TrackerServer(settings, pace=1.0, backpressure="drop", serve_http=False,
                           scheduler_interval_s=None).start()
    probe = [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}}]
    print(submit(server.app.test_client(), "synthetic://320x180@10/300", probe, fixed_plan(["probe"], node=node)),
          flush=True)
    while True:
        time.sleep(1)
""")


def test_a_killed_tracker_resumes_its_job_without_reusing_a_sequence_number(tmp_path):
    node = f"t{uuid.uuid4().hex[:8]}"
    worker = start_worker_process(node, 1, log_path=tmp_path / "worker.log")
    first = subprocess.Popen([sys.executable, "-c", FIRST_TRACKER, str(tmp_path), node], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                             stderr=open(tmp_path / "first.log", "wb"), text=True, start_new_session=True)
    server = None
    try:
        uid = first.stdout.readline().strip()
        assert uid.startswith("job-"), (tmp_path / "first.log").read_text()[-3000:]
        settings = settings_for(tmp_path, AMQP_URL, node=node, results_queue=f"vdag.results.{node}",
                                reorder_wait_s=5.0)
        time.sleep(8)                                  # ~80 frames sent, some in flight
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        server = TrackerServer(settings, pace=1.0, backpressure="drop", serve_http=False,
                               scheduler_interval_s=None).start()
        client = server.app.test_client()
        resumed = client.get(f"/api/v1/jobs/{uid}").get_json()
        assert resumed["state"] == "EXEC", resumed
        stored_before = resumed["stats"].get("frames_out", 0)
        job = wait_state(client, uid, timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        if server is not None:
            server.stop()
        stop_process(worker)
        delete_queues(*node_queues(node))

    assert job["state"] == "DONE", job
    stats = job["stats"]
    results = all_results(client, uid)
    stored = [r for r in results if not r["lost"]]
    seqs = [r["seq"] for r in results]
    assert seqs == sorted(set(seqs)), "one row per sequence number"
    # A reused number would store a new frame in place of an old one, or an old one under a
    # number after newer frames. Only the last second before the kill may be sent twice (the
    # old process recorded where it was once a second).
    times = [r["capture_ts"] for r in stored]
    behind = sum(1 for i in range(1, len(times)) if times[i] <= max(times[:i]))
    assert behind <= 11, f"{behind} frames stored out of capture order"
    assert stats.get("duplicates", 0) == 0, stats
    # Counters continue across the restart: every frame either generator sent is accounted for.
    assert stats["frames_out"] == len(stored) and stats["frames_lost"] == len(results) - len(stored), stats
    assert stats["frames_out"] > stored_before and stats["frames_read"] >= 250, stats
    assert stats["frames_sent"] <= len(stored) + stats["frames_lost"], stats
    # The new generator started past the old one's reservation; the reserved numbers it did not
    # use are counted apart, not stored as lost frames (only frames the old process sent are).
    assert SEQ_BLOCK - 200 < stats["restart_unused"] < SEQ_BLOCK, stats
    assert stats["frames_lost"] <= 20, stats
    assert max(times) > 25.0, "the job played to the end after the restart"
