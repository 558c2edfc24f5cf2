"""API benchmark: result polling latency under load, and what MJPEG viewers cost the pipeline.

    .venv/bin/python -m bench.api            # ~5 min (--arms front: ~2.5), writes bench/results/api.json
    .venv/bin/python -m bench.api --quick    # ~40 s

Setup: RabbitMQ + one `vdag worker` process (prefork, 1 child) on a unique node; the
tracker core (aggregator, generator, SQLite store) in this process, started by
TrackerServer with serve_http=True. Two arms, run one after the other in one run:
`front` (the default design: the API and video ports served by the API front process,
tracker.web.front) and `one_process` (settings.api_process=False: waitress in the core's
own process). The top-level keys are the front's; `one_process` holds the same keys for
the other arm. The HTTP clients run in a separate process so that their Python work does
not share the tracker's GIL (it does share the machine's cores, as a real client on the
same host would).

1. Polling: while a job renders vtest.avi at a paced 30 fps, open-loop requests at
   200/s (a scheduler thread plus a pool of client threads with keep-alive connections),
   alternating `GET /api/v1/jobs/<id>/results?after_seq=<latest-10>` and
   `GET /user/sync_job_result/<id>`. Latency runs from the scheduled send time, so a
   client that falls behind counts the wait (no coordinated omission).
2. Viewers: the same rendering job unpaced (as fast as the pipeline goes), with no viewer
   and with 10 MJPEG viewers of `/user/video/<id>`, back to back in 7 rounds (order
   alternating); the fps loss is the median of the rounds' losses, beside each viewer's share
   of the frames rendered while it watched and the CPU the viewers added.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil

from bench.common import (
    ROOT,
    ArrivalClock,
    fixed_plan,
    machine,
    median,
    missing_prerequisite,
    pct,
    print_table,
    rabbit_tracker,
    start_worker,
    stop_process,
    unique_node,
    wait_job,
    write_clip,
    write_json,
)

STAGES = [
    {"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}},
    {"name": "render", "service": "render", "inputs": {"image": "generator.image"}},
]
RESOLUTION = "480p"
DEFAULT = {"poll_s": 10.0, "viewer_frames": 795, "viewer_rounds": 7, "viewers": 10, "rate": 200.0}
QUICK = {"poll_s": 4.0, "viewer_frames": 150, "viewer_rounds": 1, "viewers": 10, "rate": 200.0}
TINY = {"poll_s": 1.0, "viewer_frames": 30, "viewer_rounds": 1, "viewers": 3, "rate": 100.0}


# -- client processes ----------------------------------------------------------------------
def poll_client(base: str, uid: str, rate: float, duration: float, threads: int) -> None:
    """Open-loop poller; prints one JSON object on stdout."""
    u = urlparse(base)
    jobs: queue.Queue = queue.Queue()
    lat: dict[str, list[float]] = {"results": [], "sync": []}
    service: list[float] = []
    errors: list[str] = []
    latest = {"seq": -1}
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        while True:
            item = jobs.get()
            if item is None:
                return
            due, kind = item
            path = (f"/api/v1/jobs/{uid}/results?after_seq={max(latest['seq'] - 10, -1)}&limit=100"
                    if kind == "results" else f"/user/sync_job_result/{uid}")
            start = time.monotonic()
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                if kind == "results":
                    items = json.loads(body).get("items") or []
                    if items:
                        latest["seq"] = max(latest["seq"], items[-1]["seq"])
            except Exception as exc:  # count, reconnect, go on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:120])
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
                continue
            done = time.monotonic()
            with lock:
                lat[kind].append((done - due) * 1e3)
                service.append((done - start) * 1e3)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    t0 = time.monotonic()
    n = int(rate * duration)
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        jobs.put((due, "results" if i % 2 == 0 else "sync"))
    for _ in pool:
        jobs.put(None)
    for t in pool:
        t.join(30)
    elapsed = time.monotonic() - t0
    print(json.dumps({"results_ms": lat["results"], "sync_ms": lat["sync"], "service_ms": service,
                      "errors": errors, "sent": n, "elapsed_s": elapsed}))


def viewer_client(base: str, count: int, timeout: float, fps: str) -> None:
    """Reads one job uid from stdin, opens `count` MJPEG streams (`?fps=` when fps is given),
    reads until each ends; prints one JSON object: per viewer, the frame seqs it received and
    the seconds from its first frame to its last."""
    query = f"?fps={fps}" if fps else ""
    u = urlparse(base)
    print("ready", flush=True)  # imports done: the bench starts the job only now
    uid = sys.stdin.readline().strip()
    seen: list[list[int]] = [[] for _ in range(count)]
    spans: list[float] = [0.0] * count
    errors: list[str] = []

    seq_header = re.compile(rb"X-Frame-Seq: (\d+)\r\n")

    def watch(k: int) -> None:
        # A lean client (raw socket, C-speed regex over whole reads): on 2 shared cores the
        # viewers' own parsing would otherwise be most of the "loss" being measured.
        try:
            with socket.create_connection((u.hostname, u.port), timeout=timeout) as sock:
                sock.sendall(f"GET /user/video/{uid}{query} HTTP/1.1\r\nHost: {u.hostname}\r\n"
                             f"Connection: close\r\n\r\n".encode())
                tail, last, first_t = b"", -1, None
                while True:
                    data = sock.recv(1 << 20)
                    if not data:
                        return
                    window = tail + data
                    for m in seq_header.finditer(window):
                        seq = int(m.group(1))
                        if seq > last:  # the overlap with the previous read may repeat one
                            seen[k].append(seq)
                            last = seq
                            now = time.monotonic()
                            first_t = now if first_t is None else first_t
                            spans[k] = now - first_t
                    tail = window[-64:]
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:120])

    threads = [threading.Thread(target=watch, args=(k,), daemon=True) for k in range(count)]
    for t in threads:
        t.start()
    print("watching", flush=True)
    for t in threads:
        t.join(timeout)
    print(json.dumps({"seen": seen, "spans_s": spans, "errors": errors}), flush=True)


def _client(*args: str, stdin=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.api", *args], cwd=ROOT, stdin=stdin,
                            stdout=subprocess.PIPE, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


# -- the measurements ------------------------------------------------------------------------
def submit(server, clip: Path, node: str, pace: float) -> str:
    server.runtime.pace, server.runtime.backpressure = pace, "block" if pace == 0 else "drop"
    resp = server.app.test_client().post("/api/v1/jobs", json={
        "source": str(clip), "stages": STAGES,
        "plan": fixed_plan([s["name"] for s in STAGES], node, resolution=RESOLUTION)})
    if resp.status_code != 201:
        raise RuntimeError(f"job rejected: {resp.get_json()}")
    return resp.get_json()["uid"]


def bench_polling(cfg: dict, server, node: str, tmp: Path) -> dict:
    frames = int((cfg["poll_s"] + 3) * 30)
    clip = write_clip(tmp / f"poll-{frames}.avi", frames)
    uid = submit(server, clip, node, pace=3.0)  # vtest is 10 fps: x3 = 30 fps
    time.sleep(1.0)  # results flowing
    proc = _client("--poll-client", server.api_url, uid, str(cfg["rate"]), str(cfg["poll_s"]), "16")
    out, _ = proc.communicate(timeout=cfg["poll_s"] + 60)
    data = json.loads(out)
    wait_job(server, uid)
    both = data["results_ms"] + data["sync_ms"]
    return {
        "poll_p50_ms": pct(both, 50), "poll_p99_ms": pct(both, 99), "poll_max_ms": max(both) if both else None,
        "poll_results_p50_ms": pct(data["results_ms"], 50), "poll_results_p99_ms": pct(data["results_ms"], 99),
        "poll_sync_p50_ms": pct(data["sync_ms"], 50), "poll_sync_p99_ms": pct(data["sync_ms"], 99),
        "poll_service_p50_ms": pct(data["service_ms"], 50), "poll_service_p99_ms": pct(data["service_ms"], 99),
        "poll_requests": len(both), "poll_errors": len(data["errors"]),
        "poll_achieved_rps": len(both) / data["elapsed_s"],
        "poll_setup": f"{cfg['rate']:.0f} req/s open loop for {cfg['poll_s']} s, 16 client threads in a separate "
                      f"process, keep-alive; job probe+render at a paced 30 fps, {RESOLUTION}",
    }


class CpuMeter:
    """Cores used (CPU seconds per wall second) by named processes over a span; the worker's
    pool children count as the worker (the others' children are measured under their own names)."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.t0, self.c0 = time.monotonic(), {name: self._cpu(name, p) for name, p in self.processes.items()}

    @staticmethod
    def _cpu(name: str, process: psutil.Process) -> float:
        total = 0.0
        for p in [process, *(process.children(recursive=True) if name == "worker" else [])]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:  # a child that just ended
                pass
        return total

    def cores(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        return {name: round((self._cpu(name, p) - self.c0[name]) / wall, 3) for name, p in self.processes.items()}


def _processes(server, worker_pid: int) -> dict[str, int]:
    """The tracker core (this process, clients excluded), its API front, the worker, RabbitMQ."""
    found = {"core": os.getpid(), "worker": worker_pid}
    if server.front is not None:
        found["front"] = server.front.process.pid
    beam = next((p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"), None)
    if beam:
        found["rabbitmq"] = beam
    return found


def _median_cores(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {name: median([r[name] for r in rounds if name in r]) for name in rounds[0]} if rounds else {}


def bench_viewers(cfg: dict, server, node: str, tmp: Path, worker_pid: int) -> dict:
    clip = write_clip(tmp / f"view-{cfg['viewer_frames']}.avi", cfg["viewer_frames"])
    clock = ArrivalClock(server)
    plain, watched, shares, errors = [], [], [], []
    from tracker.web.viewer.routes import DEFAULTS as VIEWER_DEFAULTS

    cap = float(cfg["viewer_fps"] or VIEWER_DEFAULTS["VIEWER_DEFAULT_FPS"])
    cpu_none: list[dict[str, float]] = []
    cpu_with: list[dict[str, float]] = []

    def unwatched() -> None:
        meter = CpuMeter(_processes(server, worker_pid))
        uid = submit(server, clip, node, pace=0.0)
        wait_job(server, uid)
        cpu_none.append(meter.cores())
        plain.append(clock.fps(uid, skip=5))

    def watched_by_viewers() -> None:
        proc = _client("--viewer-client", server.api_url, str(cfg["viewers"]), "120", cfg["viewer_fps"],
                       stdin=subprocess.PIPE)
        # A Python process starting (imports: ~1 s of CPU) is not what viewers cost: wait it out.
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the viewer client did not start")
        meter = CpuMeter({**_processes(server, worker_pid), "viewers": proc.pid})
        uid = submit(server, clip, node, pace=0.0)
        proc.stdin.write(f"{uid}\n".encode())
        proc.stdin.flush()
        wait_job(server, uid)
        cpu_with.append(meter.cores())
        out, _ = proc.communicate(timeout=150)
        data = json.loads(out.decode().strip().splitlines()[-1])
        watched.append(clock.fps(uid, skip=5))
        errors.extend(data["errors"])
        for seqs, span_s in zip(data["seen"], data["spans_s"]):
            if len(seqs) >= 2:
                # Of the frames rendered in its span, those the viewer's rate cap lets through.
                allowed = min(max(seqs) - min(seqs) + 1, cap * span_s + 1)
                shares.append(min(1.0, len(set(seqs)) / allowed))
            else:
                shares.append(0.0)

    # The machine's own drift between runs (+-15 % here) dwarfs the effect: each round runs the
    # pair back to back, in alternating order, and the loss is the median of the rounds' losses.
    for k in range(cfg["viewer_rounds"]):
        for arm in ((unwatched, watched_by_viewers) if k % 2 == 0 else (watched_by_viewers, unwatched)):
            arm()
    losses = sorted(1 - b / a for a, b in zip(plain, watched))
    loss = median(losses)
    cores_none, cores_with = _median_cores(cpu_none), _median_cores(cpu_with)
    # What serving the viewers costs in CPU, steadier than the frame rates: the API front's
    # extra and the viewer client's own (a real viewer's browser would be on another machine).
    added = cores_with.get("front", 0.0) - cores_none.get("front", 0.0) + cores_with.get("viewers", 0.0)
    return {
        "viewer_fps_none": median(plain), "viewer_fps_with": median(watched), "viewer_fps_loss": max(0.0, loss),
        "viewer_fps_loss_signed": loss, "viewer_fps_loss_rounds": [round(x, 4) for x in losses],
        "viewer_frame_share_min": min(shares) if shares else 0.0,
        "viewer_frame_share_median": median(shares), "viewer_errors": len(errors),
        "viewer_rounds": [{"fps_none": a, "fps_with": b} for a, b in zip(plain, watched)],
        "viewer_cpu_cores_none": cores_none, "viewer_cpu_cores_with": cores_with,
        "viewer_cpu_cores_added": round(added, 3),
        "viewer_setup": f"probe+render unpaced (backpressure=block), {cfg['viewer_frames']} vtest frames at "
                        f"{RESOLUTION}, {cfg['viewers']} viewers of /user/video/<id> in a separate process; "
                        f"at {cap:g} fps each (?fps={cfg['viewer_fps'] or ''}); share = distinct frames a viewer "
                        f"got / frames rendered in its span that its rate cap lets through",
    }


def _fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def bench_arm(cfg: dict, tmp: Path, *, api_process: bool) -> dict:
    node = unique_node("ba")
    worker = start_worker(node, concurrency=1, log_path=tmp / f"worker-{node}.log")
    measured: dict = {}
    try:
        with rabbit_tracker(node, serve_http=True, workers=(worker,), api_process=api_process) as (server, _):
            submit(server, write_clip(tmp / "warm.avi", 10), node, pace=0.0)  # worker warm-up
            time.sleep(3)
            measured.update(bench_polling(cfg, server, node, tmp))
            measured.update(bench_viewers(cfg, server, node, tmp, worker.pid))
    finally:
        stop_process(worker)
    return measured


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tiny", action="store_true", help="smoke-test size")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/api.json)")
    p.add_argument("--arms", default="front,one_process", help="which servings to measure (comma-separated)")
    p.add_argument("--poll-client", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--viewer-fps", default="", help="viewers ask for ?fps=N (default: none, the server's "
                                                   "default cap; 60 = the most a viewer may ask)")
    p.add_argument("--viewer-client", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.poll_client:
        base, uid, rate, duration, threads = args.poll_client
        poll_client(base, uid, float(rate), float(duration), int(threads))
        return 0
    if args.viewer_client:
        base, count, timeout, fps = args.viewer_client
        viewer_client(base, int(count), float(timeout), fps)
        return 0
    missing = missing_prerequisite()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    cfg = {**(TINY if args.tiny else QUICK if args.quick else DEFAULT), "viewer_fps": args.viewer_fps}
    tmp = Path(tempfile.mkdtemp(prefix="vdag-bench-api-"))
    arms = [a for a in args.arms.split(",") if a]
    if not arms or set(arms) - {"front", "one_process"}:
        p.error("--arms: front and/or one_process")
    result: dict = {"machine": machine(), "mode": "tiny" if args.tiny else "quick" if args.quick else "default",
                    "broker": "RabbitMQ (amqp) + 1 vdag worker process (prefork, 1 child); tracker core in the "
                              "bench process, waitress in the API front process (arm front) or in the core "
                              "(arm one_process); clients in separate processes",
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    t0 = time.monotonic()
    for arm in arms:
        measured = bench_arm(cfg, tmp, api_process=arm == "front")
        if arm == arms[0]:
            result["arm"] = arm
            result.update(measured)
        else:
            result[arm] = measured
    if "one_process" in result:
        single = result["one_process"]
        result["poll_p99_one_process_over_front"] = single["poll_p99_ms"] / result["poll_p99_ms"]
        result["viewer_fps_loss_one_process"] = single["viewer_fps_loss"]
    result["wall_s"] = round(time.monotonic() - t0, 1)
    result["targets"] = {
        "poll_p99_ms<=20": bool(result["poll_p99_ms"] <= 20),
        "viewer_fps_loss<=0.05": bool(result["viewer_fps_loss"] <= 0.05),
    }
    path = write_json("api.json", result, args.out)
    rows = [(k, v) for k, v in result.items() if isinstance(v, (int, float, str)) and k != "machine"]
    print_table(f"vdag API bench ({result['mode']}, arm {result['arm']}) on {result['machine']}", rows)
    for arm in arms:
        measured = result if arm == result["arm"] else result[arm]
        print(f"cores used, {arm}: no viewer {measured['viewer_cpu_cores_none']}; "
              f"10 viewers {measured['viewer_cpu_cores_with']}")
    for other in arms[1:]:
        side = [(k, f"{_fmt(result[k])}  vs  {_fmt(v)}") for k, v in result[other].items()
                if isinstance(v, (int, float)) and k.startswith(("poll_p", "poll_achieved", "viewer_fps", "viewer_frame"))]
        print_table(f"side by side: {result['arm']}  vs  {other}", side)
    print("targets:", result["targets"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
