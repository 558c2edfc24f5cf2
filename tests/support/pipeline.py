"""Helpers for end-to-end pipeline tests: a tracker on real parts, jobs with fixed plans."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import all_results  # noqa: F401  (the tests import it from here)
from bench.common import rabbit_up as bench_rabbit_up
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
AMQP_URL = os.environ.get("VDAG_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
TERMINAL = {"DONE", "FAILED", "CANCELLED"}


def settings_for(tmp_path: Path, broker: str, node: str = "cloud", **kw) -> Settings:
    return Settings(broker_url=broker, database_url=f"sqlite:///{tmp_path}/vdag.db", node=node,
                    data_dir=tmp_path, api_port=0, video_port=0, service_port=0,
                    allowed_video_dirs=(VTEST.parent, tmp_path, Path("/tmp")), **kw)


def fixed_plan(stages: list[str], node: str = "cloud", resolution: str = "source", fps: float = 0,
               grade: str | None = None, quality: int = 85, planner: str = "test") -> dict:
    return {
        "video_conf": {"resolution": resolution, "fps": fps, "quality": quality},
        "flow_mapping": {s: {"node": node, "node_role": "cloud", "grade": grade} for s in stages},
        "planner": planner, "reason": "fixed by the test",
    }


def submit(client, source: str, stages: list[dict], plan: dict | None = None, **extra) -> str:
    body = {"source": source, "stages": stages, **extra}
    if plan is not None:
        body["plan"] = plan
    resp = client.post("/api/v1/jobs", json=body)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["uid"]


def wait_state(client, uid: str, states=TERMINAL, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{uid}").get_json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {uid} still {job['state']} after {timeout}s: {job.get('stats')}")


def rabbit_up(url: str = AMQP_URL) -> bool:
    return bench_rabbit_up(url)


def purge_queues(*names: str) -> None:
    from kombu import Connection

    with Connection(AMQP_URL) as conn:
        ch = conn.default_channel
        for name in names:
            try:
                ch.queue_purge(name)
            except Exception:
                conn.close()
                return


def start_worker_process(node: str, concurrency: int, broker: str = AMQP_URL, log_path: Path | None = None,
                         extra_env: dict | None = None, pool: str = "prefork") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "tracker.cli", "worker", "--node", node, "--concurrency", str(concurrency),
         "--pool", pool, "--broker", broker, "--log-level", "INFO"],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
