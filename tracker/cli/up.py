"""`vdag up`: the whole system in one process tree on the embedded default.

SQLite file + kombu's in-process memory broker + an in-process Celery worker, on the same
tasks, routing, aggregator, scheduler and API as cluster mode. Submits one job through the
REST API, shows progress, and says where to look.
"""
from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from scheduler.plan_reason import plan_basis
from services.settings import settings_from_env
from tracker.cluster.nodes import SYNTHETIC_DEFAULT

# A real video with people (Debian opencv-doc, which `make up` installs): the person pipeline
# has something to find, and 80 s is long enough to watch the planner adapt.
DEMO_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
from tracker.server import TrackerServer

TERMINAL = {"DONE", "FAILED", "CANCELLED"}
SETTLE_S = 20.0  # the demo's frames are judged after this much video: the planner starts on priors


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
    table.add_row("plan", f"{conf.get('resolution', '?')} fps={conf.get('fps') or 'source'} "
                          f"ntracking={conf.get('ntracking', 0)} q={conf.get('quality', '?')} "
                          f"by {plan.get('planner', '?')} (plan {plan.get('id', '?')})")
    table.add_row("why", (plan.get("reason") or "")[:400])
    for key in ("frames_sent", "frames_tracked", "frames_out", "frames_dropped", "frames_lost", "fps_in", "fps_out",
                "mean_latency_s", "slo_violations", "profile_segments", "segments_scored"):
        table.add_row(key, str(stats.get(key, "-")))
    table.add_row("stage latency s", str(stats.get("stage_latency_s", "-")))
    return table


def _print_decisions(console: Console, plans: list[dict]) -> None:
    """What the planner decided over the run, and why, oldest first."""
    table = Table(title="what the planner decided, and why")
    for col in ("at", "config", "why"):
        table.add_column(col)
    plans = plans[::-1]
    t0 = plans[0]["created_at"] if plans else None
    for p in plans:
        vc = p["video_conf"]
        at = _seconds_between(t0, p["created_at"])
        table.add_row(f"{at:5.1f} s", f"{vc['resolution']} fps={vc.get('fps') or 'source'} ntracking={vc.get('ntracking', 0)}",
                      p["reason"][:200])
    console.print(table)


def _print_adaptation(console: Console, client, uid: str, delay: float, plans: list[dict], stats: dict) -> None:
    """The demo's own acceptance lines: how soon the planner planned from this run's
    measurements, and how many frames met the delay bound once it had (after the first 20 s)."""
    plans = plans[::-1]
    first_real = None
    for p in plans:
        basis = plan_basis(p["reason"])
        if basis and basis[0] != "prior" and basis[1] > 0:
            first_real = _seconds_between(plans[0]["created_at"], p["created_at"])
            break
    frames, after = [], -1
    while True:
        page = client.get(f"/api/v1/jobs/{uid}/results?after_seq={after}&limit=1000").get_json()
        if not page.get("items"):
            break
        frames.extend(r for r in page["items"] if not r.get("lost"))
        after = page["items"][-1]["seq"]
    settled = [r for r in frames if r["capture_ts"] - (frames[0]["capture_ts"] if frames else 0.0) >= SETTLE_S]
    within = sum(r["latency_s"] <= delay for r in settled)
    console.print(
        "first plan from this run's measurements: "
        + (f"{first_real:.1f} s after the job's first plan" if first_real is not None else "none")
        + f"\nafter the first {SETTLE_S:g} s of video: {within} of {len(settled)} frames within D = {delay:g} s"
        + (f" ({within / len(settled):.1%})" if settled else "")
        + f"\nprofiling segments scored against the golden config: {stats.get('segments_scored', 0)} "
          f"of {stats.get('profile_segments', 0)}")


def _seconds_between(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def _stop_on_signal(signum, _frame) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C


def run_up(args: argparse.Namespace) -> int:
    # SIGTERM (docker stop, systemd) stops it cleanly too, and so does a SIGINT that a
    # non-interactive parent shell had set to be ignored for background jobs.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_on_signal)
    console = Console()
    source = args.source or (str(DEMO_VIDEO) if DEMO_VIDEO.exists() else SYNTHETIC_DEFAULT)
    if source == SYNTHETIC_DEFAULT:
        console.print(f"[yellow]{DEMO_VIDEO} is missing (apt-get install opencv-doc): running on a synthetic clip "
                      "with no people in it[/yellow]")
    extra_dirs: tuple[Path, ...] = ()
    if args.source and Path(args.source).exists():
        extra_dirs = (Path(args.source).resolve().parent,)  # the user named this file: allow its folder
    base = settings_from_env()
    settings = settings_from_env(
        broker_url=args.broker, database_url=args.db, node=args.node, side="cloud", mode="embedded",
        api_port=args.api_port, video_port=args.video_port, service_port=args.service_port,
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
                      f"  seed services: {server.service_url}/get_service_list\n"
                      f"  logs:    {args.log_file}")
        job = client.get(f"/api/v1/jobs/{uid}").get_json()
        said_done = False
        with Live(_stats_table(job), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(0.5)
                job = client.get(f"/api/v1/jobs/{uid}").get_json()
                live.update(_stats_table(job))
                if job["state"] in TERMINAL and not said_done:
                    said_done = True
                    stats = job.get("stats") or {}
                    console.print(f"job ended: {job['state']} ({job.get('reason')}): {stats.get('frames_out', 0)} "
                                  f"frames stored, {stats.get('frames_tracked', 0)} of them tracked, "
                                  f"{stats.get('slo_violations', 0)} over the delay bound")
                    plans = client.get(f"/api/v1/jobs/{uid}/plans?limit=500").get_json().get("items", [])
                    _print_decisions(console, plans)
                    _print_adaptation(console, client, uid, args.delay, plans, stats)
                    if args.exit_when_done:
                        break
                    console.print(f"still serving {url}/jobs/{uid} - Ctrl-C to stop")
        return 0 if job["state"] == "DONE" else 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
