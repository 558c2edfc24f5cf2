"""500 jobs submitted, run briefly and deleted on a real embedded tracker: every per-job map
of the runtime, the aggregator, the node-load estimator, the result cache, the viewer hub and
the metrics is back to its size before."""
from __future__ import annotations

import time

import pytest

from tests.support.pipeline import TERMINAL, fixed_plan, settings_for
from tracker.server import TrackerServer

pytestmark = pytest.mark.integration

PROBE = [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}}]
JOBS, BATCH = 500, 50


def per_job_sizes(server: TrackerServer) -> dict[str, int]:
    rt = server.runtime
    return {"runners": len(rt.runners), "aggregator": rt.aggregator.tracked_jobs(),
            "node_load": len(rt.node_load.jobs()), "recent": rt.recent.tracked_jobs(),
            "hub": server.hub.tracked_jobs(), "metrics": server.metrics.tracked_jobs()}


def _wait_ended(client, uids: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(uids)
    while pending and time.monotonic() < deadline:
        pending = {u for u in pending if client.get(f"/api/v1/jobs/{u}").get_json()["state"] not in TERMINAL}
        time.sleep(0.05)
    assert not pending, f"{len(pending)} jobs did not end"


def test_500_jobs_leave_nothing_behind(tmp_path):
    server = TrackerServer(settings_for(tmp_path, "memory://"), in_process_workers=1, pace=0.0,
                           backpressure="block", serve_http=False, scheduler_interval_s=None,
                           node_timeout_s=None).start()
    try:
        client = server.app.test_client()
        before = per_job_sizes(server)
        plan = fixed_plan(["probe"])
        stored = 0
        for start in range(0, JOBS, BATCH):
            uids = []
            for _ in range(BATCH):
                r = client.post("/api/v1/jobs", json={"source": "synthetic://64x48@10/5", "stages": PROBE,
                                                      "plan": plan})
                assert r.status_code == 201, r.get_json()
                uids.append(r.get_json()["uid"])
            running, finished = uids[: BATCH // 5], uids[BATCH // 5:]
            for uid in running:  # deleted while its generator may still run
                assert client.delete(f"/api/v1/jobs/{uid}").status_code == 204
            _wait_ended(client, finished)
            stored += sum(client.get(f"/api/v1/jobs/{u}/results?limit=10").get_json()["total"] for u in finished)
            for uid in finished:
                assert client.delete(f"/api/v1/jobs/{uid}").status_code == 204
        assert stored >= 0.9 * (JOBS - JOBS // 5) * 5, f"only {stored} frames stored"
        deadline = time.monotonic() + 10  # frames still in flight from deleted jobs settle
        while per_job_sizes(server) != before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert per_job_sizes(server) == before
        assert server.store.list_jobs()[1] == 0
    finally:
        server.stop()
