"""Job churn: many short jobs submitted, run and deleted leave nothing behind in the tracker.

    .venv/bin/python -m bench.faults --only jobs_churn     # ~2 min, a row of bench/results/faults.json

A cloud tracker in this process on RabbitMQ and PostgreSQL (a schema of its own) with one
`vdag worker` process: after a warm-up of WARM_JOBS jobs (first-use allocations, caches), JOBS
jobs of 5 synthetic frames are submitted in batches; a fifth of each batch is deleted while it
runs, the rest when they are done. Reported: RSS growth of the tracker's process over the JOBS
jobs, and whether every per-job map is back to its size before.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path

import psutil

from bench.common import bench_settings, delete_queues, fixed_plan, node_queues, start_worker, stop_process

JOBS, BATCH, WARM_JOBS = 500, 50, 50
PROBE = [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}}]
TERMINAL = ("DONE", "FAILED", "CANCELLED")


def per_job_sizes(server) -> dict[str, int]:
    """Every per-job map of a running tracker: runners, aggregator, node load, results, hub, metrics."""
    rt = server.runtime
    return {"runners": len(rt.runners), "aggregator": rt.aggregator.tracked_jobs(),
            "node_load": len(rt.node_load.jobs()), "recent": rt.recent.tracked_jobs(),
            "hub": server.hub.tracked_jobs(), "metrics": server.metrics.tracked_jobs()}


def churn(client, plan: dict, jobs: int, batch: int = BATCH, timeout_s: float = 120.0) -> int:
    """Submit, run and delete `jobs` short jobs; the frames stored by the ones that finished."""
    stored = 0
    for start in range(0, jobs, batch):
        uids = []
        for _ in range(min(batch, jobs - start)):
            resp = client.post("/api/v1/jobs", json={"source": "synthetic://64x48@10/5", "stages": PROBE,
                                                     "plan": plan})
            if resp.status_code != 201:
                raise RuntimeError(f"job rejected: {resp.get_json()}")
            uids.append(resp.get_json()["uid"])
        running, finished = uids[: len(uids) // 5], uids[len(uids) // 5:]
        for uid in running:  # deleted while its generator may still run
            if client.delete(f"/api/v1/jobs/{uid}").status_code != 204:
                raise RuntimeError(f"job {uid} not deleted")
        deadline = time.monotonic() + timeout_s
        pending = set(finished)
        while pending and time.monotonic() < deadline:
            pending = {u for u in pending if client.get(f"/api/v1/jobs/{u}").get_json()["state"] not in TERMINAL}
            time.sleep(0.05)
        if pending:
            raise RuntimeError(f"{len(pending)} jobs did not end within {timeout_s:.0f} s")
        stored += sum(client.get(f"/api/v1/jobs/{u}/results?limit=10").get_json()["total"] for u in finished)
        for uid in finished:
            client.delete(f"/api/v1/jobs/{uid}")
    return stored


def wait_sizes(server, before: dict, timeout_s: float = 15.0) -> dict:
    """Frames still in flight from deleted jobs settle; the sizes then."""
    deadline = time.monotonic() + timeout_s
    while per_job_sizes(server) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    return per_job_sizes(server)


def _rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def run_jobs_churn(tmp: Path, node: str, db_url: str) -> dict:
    """The faults bench's `jobs_churn` row, on the database at `db_url`."""
    from tracker.server import TrackerServer

    settings = bench_settings(tmp / "jobs_churn", node, max_in_flight=8).model_copy(update={"database_url": db_url})
    (tmp / "jobs_churn").mkdir(parents=True, exist_ok=True)
    worker = start_worker(node, concurrency=1, log_path=tmp / "jobs_churn-worker.log")
    server = TrackerServer(settings, pace=0.0, backpressure="block", serve_http=False, scheduler_interval_s=None,
                           node_timeout_s=None).start()
    try:
        client = server.app.test_client()
        plan = fixed_plan(["probe"], node)
        before = per_job_sizes(server)
        churn(client, plan, WARM_JOBS)
        wait_sizes(server, before)
        rss0, t0 = _rss_mb(), time.monotonic()
        stored = churn(client, plan, JOBS)
        after = wait_sizes(server, before)
        rss1 = _rss_mb()
        return {"scenario": "jobs_churn", "jobs": JOBS, "frames_stored": stored,
                "rss_before_mb": round(rss0, 1), "rss_after_mb": round(rss1, 1),
                "rss_growth_mb": round(rss1 - rss0, 1), "per_job_maps_before": before, "per_job_maps_after": after,
                "maps_back_to_before": after == before, "jobs_left_in_store": server.store.list_jobs()[1],
                "wall_s": round(time.monotonic() - t0, 1)}
    finally:
        server.stop()
        stop_process(worker)
        delete_queues(*node_queues(node))
