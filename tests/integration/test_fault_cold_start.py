"""Models warm up before a worker process takes tasks (issue 10, item 4): the first frame a fresh
`vdag worker` serves costs inference, not a model load. With VDAG_WARM_UP=0 the same first frame
pays the load, so the check can tell the two apart."""
from __future__ import annotations

import statistics
import time
import uuid

import pytest

from bench.common import delete_queues, node_queues
from tests.support.pipeline import (
    AMQP_URL,
    VTEST,
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

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc provides vtest.avi")]

PEOPLE = [{"name": "detect", "service": "person_detection", "inputs": {"image": "generator.image"}}]

if not rabbit_up():
    pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}", allow_module_level=True)


def detect_times(tmp_path, warm: bool) -> list[float]:
    """detect service seconds of each frame of a 6-frame job on a worker started just before it."""
    node = f"t{uuid.uuid4().hex[:8]}"
    settings = settings_for(tmp_path / node, AMQP_URL, node=node, results_queue=f"vdag.results.{node}",
                            reorder_wait_s=120.0, max_in_flight=1)
    (tmp_path / node).mkdir()
    server = TrackerServer(settings, pace=0.0, backpressure="block", serve_http=False,
                           scheduler_interval_s=None).start()
    worker = start_worker_process(node, 1, log_path=tmp_path / f"{node}.log",
                                  extra_env={"VDAG_WARM_UP": "1" if warm else "0"})
    try:
        client = server.app.test_client()
        uid = submit(client, f"{VTEST}", PEOPLE, fixed_plan(["detect"], node=node, resolution="480p", fps=10))
        deadline = time.monotonic() + 240
        while server.store.result_count(uid) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        client.post(f"/api/v1/jobs/{uid}/cancel")      # a few frames are enough: vtest.avi is 80 s
        wait_state(client, uid, timeout=60)
        results = [r for r in all_results(client, uid) if not r["lost"]][:6]
        log = (tmp_path / f"{node}.log").read_text(errors="replace")
    finally:
        stop_process(worker)
        server.stop()
        delete_queues(*node_queues(node))
    assert ("warm: person detector loaded" in log) == warm, log[-2000:]
    return [next(s["service_s"] for s in r["stages"] if s["stage"] == "detect") for r in results]


def test_the_first_frame_on_a_fresh_worker_costs_inference_not_a_model_load(tmp_path):
    warm = detect_times(tmp_path, warm=True)
    cold = detect_times(tmp_path, warm=False)
    steady = statistics.median(warm[1:])
    # A model load is seconds; a first inference may still take a few steady frames' time on a
    # busy 2-core host (0.44 s vs 0.11 s steady seen once in a fresh clone's suite).
    assert warm[0] <= 4 * steady + 0.2, f"warm worker's first frame {warm[0]:.2f} s vs {steady:.2f} s after"
    assert cold[0] >= warm[0] + 0.3, f"without warm-up the first frame pays the load: {cold[0]:.2f} vs {warm[0]:.2f} s"
