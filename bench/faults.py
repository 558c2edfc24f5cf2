"""Faults on real parts: does a job survive them with nothing lost?

    .venv/bin/python -m bench.faults                       # ~8 min, writes bench/results/faults.json
    .venv/bin/python -m bench.faults --only broker_restart,db_outage_10s

Cluster mode as an operator runs it: a cloud tracker (in this process: generator, aggregator,
API) on RabbitMQ and PostgreSQL (127.0.0.1:5432/test, a fresh schema per run, reached through
a TCP proxy this bench can cut), one `vdag worker` process, the trained person detector ->
object_count on the first 40 s of vtest.avi at 360p / 2 fps, played in real time. Each
scenario injects one fault ~8 s into the job and reports:

- lost: frames sent but declared lost (neither stored with a result nor dropped by policy);
- stored_twice: rows of the same frame (the store's unique key makes it 0 unless broken);
- redeliveries: results that reached the aggregator again after being stored (harmless);
- dropped_by_policy: frames the generator did not send (window full or broker away), counted;
- resume_s: fault cleared -> three more frames stored (not measured for poison_frame, cold_start);
- state_after: the job's state right after it resumed, and at the end.

Scenarios: worker_kill (SIGKILL of one child of a two-process worker mid-frame),
broker_restart (rabbitmqctl stop_app, 5 s, start_app), db_outage_10s (the proxy to
PostgreSQL cut for 10 s), poison_frame (garbage and a malformed envelope on the node's
queue), cold_start (the worker starts with the job: the model loads under the first frames),
pool_grow (a one-process pool grows by one, as the elasticity loop does), tracker_kill (the
cloud tracker's process SIGKILLed, a new one resumes the job from the store), jobs_churn
(500 short jobs submitted, run and deleted: RSS growth and per-job maps; bench/churn.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import msgpack
import psutil
from kombu import Connection, Exchange, Producer

from bench.common import (
    AMQP_URL,
    RESULTS_DIR,
    VTEST,
    all_results,
    bench_settings,
    delete_queues,
    machine,
    node_queues,
    rabbit_up,
    start_worker,
    stop_process,
    unique_node,
    write_clip,
    write_json,
)
from bench.churn import run_jobs_churn
from bench.tcp_proxy import TcpProxy

log = logging.getLogger("bench.faults")

PG = ("127.0.0.1", 5432)
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:{port}/test?options=-csearch_path%3D{schema}"
STAGES = [
    {"name": "detect", "service": "person_detection", "inputs": {"image": "generator.image"}},
    {"name": "count", "service": "object_count", "inputs": {"detections": "detect.detections"}},
]
CLIP_S = 40
FAULT_AT_S = 8.0
SCENARIOS = ("worker_kill", "broker_restart", "db_outage_10s", "poison_frame", "cold_start", "pool_grow",
             "tracker_kill", "jobs_churn")
# tracker_kill: the first tracker runs in its own process (so that it can be SIGKILLed); it warms
# the worker, submits the job and prints its uid; a tracker in this process takes over.
FIRST_TRACKER = """
import sys, time
from pathlib import Path
from bench.common import bench_settings
from tracker.server import TrackerServer
tmp, node, db, clip, plan = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], __import__("json").loads(sys.argv[5])
settings = bench_settings(tmp, node, max_in_flight=8, reorder_wait_s=15.0).model_copy(update={"database_url": db})
server = TrackerServer(settings, pace=1.0, backpressure="drop", serve_http=False, scheduler_interval_s=None).start()
client = server.app.test_client()
stages = plan.pop("stages")
warm = client.post("/api/v1/jobs", json={"source": "synthetic://640x360@10/20", "stages": stages, "plan": plan}).get_json()["uid"]
while str(server.store.get_job(warm).state.value) != "DONE":
    time.sleep(0.2)
print(client.post("/api/v1/jobs", json={"source": clip, "stages": stages, "plan": plan}).get_json()["uid"], flush=True)
while True:
    time.sleep(1)
"""


def _pg(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"postgresql://postgres@{PG[0]}:{PG[1]}/test", autocommit=True, connect_timeout=3) as c:
        c.execute(sql)


def _wait(pred, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def _rabbitmqctl(*args: str) -> None:
    subprocess.run([shutil.which("rabbitmqctl") or "rabbitmqctl", *args], check=True, capture_output=True, timeout=90)


def _poison(node: str, celery) -> None:
    queue = f"vdag.node.{node}"
    with Connection(AMQP_URL) as conn:
        producer = Producer(conn.default_channel, exchange=Exchange("vdag", type="direct", durable=True))
        producer.publish(b"\x00\xffgarbage", routing_key=queue, content_type="application/octet-stream",
                         content_encoding="binary")
    celery.send_task("vdag.run_stage", args=[msgpack.packb({"v": 1, "job": "x"})], queue=queue)


def _plan(node: str) -> dict:
    return {"video_conf": {"resolution": "360p", "fps": 2, "quality": 85},
            "flow_mapping": {s["name"]: {"node": node, "node_role": "cloud"} for s in STAGES},
            "planner": "bench", "reason": "fixed by the benchmark"}


def _outcome(client, uid: str) -> dict:
    job = client.get(f"/api/v1/jobs/{uid}").get_json()
    results = all_results(client, uid)
    stats = job.get("stats") or {}
    seqs = [r["seq"] for r in results]
    return {
        "state_end": job["state"],
        "frames_sent": stats.get("frames_sent"),
        "stored": len(set(seqs)),
        "lost": sum(1 for r in results if r["lost"]) + max(0, (stats.get("frames_sent") or 0) - len(set(seqs))),
        "stored_twice": len(seqs) - len(set(seqs)),
        "redeliveries": stats.get("duplicates", 0),
        "late_stored": stats.get("frames_late", 0),
        "dropped_by_policy": stats.get("frames_dropped", 0),
        "dropped_broker_away": stats.get("frames_dropped_broker", 0),
        "lost_seqs": [r["seq"] for r in results if r["lost"]],
        # Numbers a crashed generator reserved and never used (tracker.runtime.resume): not frames.
        "restart_unused": stats.get("restart_unused", 0),
    }


def run_tracker_kill(clip: Path, tmp: Path) -> dict:
    """SIGKILL of the cloud tracker mid-job, a new tracker on the same store and queues."""
    import os
    import sys

    from bench.common import ROOT
    from tracker.server import TrackerServer

    node = unique_node("f")
    schema = f"vdag_faults_{node}"
    _pg(f'CREATE SCHEMA "{schema}"')
    db = PG_URL.format(port=PG[1], schema=schema)
    (tmp / "tracker_kill").mkdir(parents=True, exist_ok=True)
    settings = bench_settings(tmp / "tracker_kill", node, max_in_flight=8, reorder_wait_s=15.0).model_copy(
        update={"database_url": db})
    worker = start_worker(node, concurrency=2, log_path=tmp / "tracker_kill-worker.log")
    first = subprocess.Popen(
        [sys.executable, "-c", FIRST_TRACKER, str(tmp / "tracker_kill"), node, db, str(clip),
         json.dumps({**_plan(node), "stages": STAGES})],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
        stderr=open(tmp / "tracker_kill-first.log", "wb"), start_new_session=True)
    server = None
    out: dict = {"scenario": "tracker_kill"}
    try:
        uid = first.stdout.readline().strip()
        if not uid.startswith("job-"):
            raise RuntimeError((tmp / "tracker_kill-first.log").read_text()[-2000:])
        time.sleep(FAULT_AT_S)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        server = TrackerServer(settings, pace=1.0, backpressure="drop", serve_http=False,
                               scheduler_interval_s=None).start()
        cleared = time.monotonic()
        client = server.app.test_client()
        stored = server.store.result_count(uid)
        if _wait(lambda: server.store.result_count(uid) >= stored + 3, 60) is not None:
            out["resume_s"] = round(time.monotonic() - cleared, 2)
        out["state_after_fault"] = client.get(f"/api/v1/jobs/{uid}").get_json().get("state")
        _wait(lambda: str(server.store.get_job(uid).state.value) in ("DONE", "FAILED", "CANCELLED"), CLIP_S + 90)
        out.update(_outcome(client, uid))
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        if server is not None:
            server.stop()
        stop_process(worker)
        delete_queues(*node_queues(node))
        _pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return out


def run_scenario(name: str, clip: Path, tmp: Path) -> dict:
    from tracker.server import TrackerServer

    if name == "tracker_kill":
        return run_tracker_kill(clip, tmp)
    node = unique_node("f")
    schema = f"vdag_faults_{node}"
    _pg(f'CREATE SCHEMA "{schema}"')
    if name == "jobs_churn":
        try:
            return run_jobs_churn(tmp, node, PG_URL.format(port=PG[1], schema=schema))
        finally:
            _pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    proxy = TcpProxy(PG)
    settings = bench_settings(tmp / name, node, max_in_flight=8, reorder_wait_s=15.0).model_copy(
        update={"database_url": PG_URL.format(port=proxy.port, schema=schema)})
    (tmp / name).mkdir(parents=True, exist_ok=True)
    concurrency = 1 if name == "pool_grow" else 2
    worker = None if name == "cold_start" else start_worker(node, concurrency=concurrency,
                                                            log_path=tmp / f"{name}-worker.log")
    server = TrackerServer(settings, pace=1.0, backpressure="drop", serve_http=False,
                           scheduler_interval_s=None).start()
    client = server.app.test_client()
    out: dict = {"scenario": name}
    try:
        plan = _plan(node)
        if worker is not None:  # warm both worker processes: the fault, not the model load, is measured
            warm = client.post("/api/v1/jobs", json={"source": "synthetic://640x360@10/20", "stages": STAGES,
                                                     "plan": plan}).get_json()["uid"]
            _wait(lambda: str(server.store.get_job(warm).state.value) == "DONE", 180)
        resp = client.post("/api/v1/jobs", json={"source": str(clip), "stages": STAGES, "plan": plan})
        if resp.status_code != 201:
            raise RuntimeError(f"job rejected: {resp.get_json()}")
        uid = resp.get_json()["uid"]
        if name == "cold_start":
            worker = start_worker(node, concurrency=2, log_path=tmp / f"{name}-worker.log")
        time.sleep(FAULT_AT_S)
        cleared = _inject(name, worker, proxy, server)
        stored = server.store.result_count(uid)
        out["resume_s"] = None
        if name in ("worker_kill", "broker_restart", "db_outage_10s"):
            if _wait(lambda: server.store.result_count(uid) >= stored + 3, 60) is not None:
                out["resume_s"] = round(time.monotonic() - cleared, 2)
        out["state_after_fault"] = client.get(f"/api/v1/jobs/{uid}").get_json().get("state")
        _wait(lambda: str(server.store.get_job(uid).state.value) in ("DONE", "FAILED", "CANCELLED"), CLIP_S + 90)
        out.update(_outcome(client, uid))
    finally:
        server.stop()
        if worker is not None:
            stop_process(worker)
        proxy.close()
        delete_queues(*node_queues(node))
        _pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return out


def _inject(name: str, worker, proxy: TcpProxy, server) -> float:
    """Inject the fault; returns the monotonic time it cleared."""
    if name == "worker_kill":
        children = psutil.Process(worker.pid).children(recursive=True)
        if children:
            children[0].send_signal(signal.SIGKILL)
    elif name == "broker_restart":
        _rabbitmqctl("stop_app")
        try:
            time.sleep(5)
        finally:
            _rabbitmqctl("start_app")
            _rabbitmqctl("await_startup")
    elif name == "db_outage_10s":
        proxy.cut()
        time.sleep(10)
        proxy.restore()
    elif name == "poison_frame":
        _poison(server.settings.node, server.celery)
    elif name == "pool_grow":  # what the elasticity controller does: one more pool process, cold
        node = server.settings.node
        names = [n for reply in server.celery.control.ping(timeout=2.0) or [] for n in reply
                 if n.startswith(f"{node}@")]
        replies = server.celery.control.pool_grow(1, destination=names, reply=True, timeout=5.0) or []
        if not any("ok" in r for reply in replies for r in reply.values()):
            raise RuntimeError(f"pool_grow not acknowledged by {names}: {replies}")
    return time.monotonic()


def report(rows: list[dict]) -> None:
    cols = ("lost", "stored_twice", "redeliveries", "late_stored", "dropped_by_policy", "resume_s",
            "state_after_fault", "state_end", "restart_unused")
    print(f"{'scenario':16}" + "".join(f"{c:>18}" for c in cols))
    for r in rows:
        if r["scenario"] != "jobs_churn":
            print(f"{r['scenario']:16}" + "".join(f"{str(r.get(c)):>18}" for c in cols))
    for r in rows:
        if r["scenario"] == "jobs_churn":
            print(f"jobs_churn: {r['jobs']} jobs, RSS {r['rss_before_mb']} -> {r['rss_after_mb']} MB "
                  f"(+{r['rss_growth_mb']}), per-job maps back to before: {r['maps_back_to_before']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SCENARIOS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("celery", "kombu", "amqp", "tracker", "scheduler", "tasks", "services", "alembic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not rabbit_up() or not VTEST.exists():
        raise SystemExit("needs RabbitMQ at 127.0.0.1:5672, PostgreSQL at 127.0.0.1:5432 and vtest.avi (opencv-doc)")
    tmp = Path(tempfile.mkdtemp(prefix="vdag-faults-"))
    clip = write_clip(tmp / "vtest-40s.avi", CLIP_S * 10)
    rows = []
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        log.info("scenario %s", name)
        rows.append(run_scenario(name, clip, tmp))
        log.info("%s", rows[-1])
    report(rows)
    runs = {r["scenario"]: r for r in rows}
    earlier = RESULTS_DIR / "faults.json"
    if set(runs) != set(SCENARIOS) and earlier.exists():  # --only: the other scenarios' last runs stay
        runs = {**json.loads(earlier.read_text()).get("runs", {}), **runs}
    path = write_json("faults.json", {"machine": machine(), "clip_s": CLIP_S, "fault_at_s": FAULT_AT_S,
                                      "runs": runs})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
