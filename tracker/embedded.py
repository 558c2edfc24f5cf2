"""`vdag up`: the whole system in one process tree on the embedded default.

SQLite file + kombu's in-process memory broker + an in-process Celery worker, on the same
tasks, routing, aggregator, scheduler and API as cluster mode. Submits one job through the
REST API, shows progress, and says where to look.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.settings import settings_from_env
from tracker.nodes import SYNTHETIC_DEFAULT
from tracker.server import TrackerServer

TERMINAL = {"DONE", "FAILED", "CANCELLED"}


def pipeline_stages(name: str) -> list[dict]:
    if name == "probe":
        return [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}}]
    if name == "faces":
        return [
            {"name": "face_detection", "service": "face_detection", "inputs": {"image": "generator.image"}},
            {"name": "face_alignment", "service": "face_alignment",
             "inputs": {"image": "generator.image", "bbox": "face_detection.bbox", "prob": "face_detection.prob"}},
        ]
    return [
        {"name": "detect", "service": "person_detection", "inputs": {"image": "generator.image"}},
        {"name": "count", "service": "object_count", "inputs": {"detections": "detect.detections"}},
        {"name": "render", "service": "render",
         "inputs": {"image": "generator.image", "detections": "detect.detections", "counts": "count.counts"}},
    ]


def _stats_table(job: dict) -> Table:
    stats = job.get("stats") or {}
    plan = (job.get("plan") or {})
    conf = plan.get("video_conf") or {}
    table = Table(title=f"job {job['uid']}  [{job['state']}]  {job.get('reason', '')}", show_header=False)
    table.add_row("plan", f"{conf.get('resolution', '?')} fps={conf.get('fps', '?')} q={conf.get('quality', '?')} "
                          f"by {plan.get('planner', '?')}")
    table.add_row("reason", (plan.get("reason") or "")[:110])
    for key in ("frames_sent", "frames_out", "frames_dropped", "frames_lost", "fps_in", "fps_out",
                "mean_latency_s", "slo_violations"):
        table.add_row(key, str(stats.get(key, "-")))
    table.add_row("stage latency s", str(stats.get("stage_latency_s", "-")))
    return table


def run_up(args: argparse.Namespace) -> int:
    console = Console()
    source = args.source or SYNTHETIC_DEFAULT
    extra_dirs: tuple[Path, ...] = ()
    if args.source and Path(args.source).exists():
        extra_dirs = (Path(args.source).resolve().parent,)  # the user named this file: allow its folder
    base = settings_from_env()
    settings = settings_from_env(
        broker_url=args.broker or "memory://",
        database_url=args.db or "sqlite:///var/vdag.db",
        node=args.node or "cloud", side="cloud", mode="embedded",
        api_port=args.api_port, video_port=args.video_port,
        allowed_video_dirs=tuple(base.allowed_video_dirs) + extra_dirs,
    )
    fast = args.fast
    server = TrackerServer(settings, in_process_workers=args.workers, pace=0.0 if fast else 1.0,
                           backpressure="block" if fast else "drop").start()
    try:
        client = server.app.test_client()
        resp = client.post("/api/v1/jobs", json={
            "name": f"vdag up: {args.pipeline}", "source": source, "stages": pipeline_stages(args.pipeline),
            "constraints": {"delay": args.delay, "accuracy": args.accuracy},
        })
        if resp.status_code != 201:
            console.print(f"[red]job rejected ({resp.status_code}):[/red] {resp.get_json()}")
            return 1
        uid = resp.get_json()["uid"]
        url = server.api_url
        console.print(f"job [bold]{uid}[/bold] on {source}\n"
                      f"  watch:   {url}/jobs/{uid}\n"
                      f"  results: {url}/api/v1/jobs/{uid}/results   (seed: {url}/user/sync_job_result/{uid})\n"
                      f"  API doc: {url}/api/v1/swagger      store: {settings.database_url}\n"
                      f"  logs:    {args.log_file}")
        job = client.get(f"/api/v1/jobs/{uid}").get_json()
        with Live(_stats_table(job), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(0.5)
                job = client.get(f"/api/v1/jobs/{uid}").get_json()
                live.update(_stats_table(job))
                if job["state"] in TERMINAL and args.exit_when_done:
                    break
                if job["state"] in TERMINAL and not getattr(run_up, "_said_done", False):
                    console.print(f"job ended: {job['state']} ({job.get('reason')}); still serving - Ctrl-C to stop")
                    run_up._said_done = True  # type: ignore[attr-defined]
        stored = client.get(f"/api/v1/jobs/{uid}/results?limit=1000").get_json()
        console.print(f"{job['state']}: {len(stored.get('items', []))} frames stored (first page); "
                      f"see {url}/api/v1/jobs/{uid}/results")
        return 0 if job["state"] == "DONE" else 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
