"""Adaptation on real video: frame-level F1 and late frames of every planner, side by side.

    .venv/bin/python -m bench.adaptive_real                      # vtest.avi + Megamind.avi, D = 1 and 0.5 s, ~45 min
    .venv/bin/python -m bench.adaptive_real --videos vtest --delays 1 --planners bayes,pid --video-s 30
    .venv/bin/python -m bench.adaptive_real --merge vtest.json megamind.json   # one table, compile measured

Per video: one `vdag worker` process (RabbitMQ, concurrency 1) shared by the runs; per planner
and delay bound D, a cloud tracker in this process (SQLite, real-time pacing, backpressure
"drop", the scheduler every 2 s) runs person_detection -> object_count for `--video-s` seconds.
Planners: bayes, bayes-notrack (the same planner with ntracking fixed at 0), golden, pid,
greedy, and static: Chameleon's one-time baseline, a fixed plan chosen by an offline profile
of the video's first 10 s (frame-level F1 of each (resolution, fps, ntracking) against the
golden detections, detector time measured here per resolution; the best F1 whose load and
delay fit D with margin).

Accuracy is frame-level (DESIGN.md s.6): the golden config (the trained person checkpoint at
source resolution) runs offline on every source frame; each source frame is scored with the
boxes the run showed for it: those of the newest stored result at or before it (detected,
tracked, or carried forward). `late_share` = stored frames over D. `calibration_abs_err` =
mean |E[F1] the plan predicted - measured frame-level F1| over 2-s windows after 20 s (bayes),
split into `calibration_bias` (mean signed error) and `calibration_spread` (the windows' own
spread around the run's mean: the part no prediction of one number per plan removes).
Writes bench/results/adaptive_real.json and prints a table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.adaptive_scoring import calibration, first_posterior_s, score
from bench.adaptive_videos import golden_for, looped_copy, person_detector, read_video
from bench.slow_node import SlowNode
from bench.common import (
    AMQP_URL,
    RESULTS_DIR,
    ROOT,
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
    wait_settled,
    write_json,
)
from services.profiling import NTRACKING_LEVELS, frame_level_f1, shown_boxes

log = logging.getLogger("bench.adaptive_real")

DATA = VTEST.parent
MEGAMIND = DATA / "Megamind.avi"
STAGES = [
    {"name": "detect", "service": "person_detection", "inputs": {"image": "generator.image"}},
    {"name": "count", "service": "object_count", "inputs": {"detections": "detect.detections"}},
]
PROFILE_S = 10.0
STATIC_QUALITY = 90  # the one-time baseline's JPEG quality (the best a plan may ask for)
WORKER_THREADS = max(1, (os.cpu_count() or 1) - 1)
WORKER_RUNTIME = "auto"  # --runtime: what the worker (and the profiles timing it) run the detector in
PLANNERS = ("bayes", "bayes-notrack", "golden", "pid", "greedy", "static")


# -- the static (one-time profile) baseline ----------------------------------------------------
def offline_profile(frames: list[np.ndarray], golden: list[list[dict]], src_fps: float) -> list[dict]:
    """Chameleon's one-time profile on the first PROFILE_S: every (resolution, fps, ntracking)
    scored by frame-level F1 over the segment (detections at that resolution, tracked onto the
    kept frames in between), with its detector time measured here."""
    from scheduler.knobs import fps_options
    from services.tracking import track_detections
    from services.video_conf import decode_jpeg, encode_jpeg, resize_to, resolutions_below

    detect = person_detector(runtime=WORKER_RUNTIME)
    n = min(len(frames), int(PROFILE_S * src_fps))
    src_h = frames[0].shape[0]
    resolutions = resolutions_below(src_h)
    rows = []
    for res in resolutions:
        # As the static plan's frames travel: resized, then JPEG at its quality.
        small = [decode_jpeg(encode_jpeg(resize_to(f, res), STATIC_QUALITY)) for f in frames[:n]]
        t0 = time.perf_counter()
        dets = [detect(f) for f in small]
        det_s = (time.perf_counter() - t0) / n
        for fps in fps_options(src_fps):
            step = max(1, int(round(src_fps / fps)))
            for k in NTRACKING_LEVELS:
                kept: list[list[dict]] = []
                for i, j in enumerate(range(0, n, step)):
                    if k and i % (k + 1):
                        kept.append(track_detections(small[j - step], small[j], kept[-1]))
                    else:
                        kept.append(dets[j])
                f1 = frame_level_f1(shown_boxes(kept, step, n), golden[:n])
                load = det_s * fps / (k + 1)
                rows.append({"resolution": res, "fps": fps, "ntracking": k, "f1": round(f1, 4),
                             "detect_s": round(det_s, 4), "load": round(load, 3)})
    return rows


def static_choice(rows: list[dict], delay: float) -> dict:
    """The most accurate profiled config whose detector load and time leave margin under D."""
    fits = [r for r in rows if r["load"] <= 0.6 and r["detect_s"] * 1.5 <= delay] or \
        [min(rows, key=lambda r: r["load"])]
    return max(fits, key=lambda r: (r["f1"], -r["load"]))


def static_plan(choice: dict, node: str, src_fps: float, reason: str | None = None) -> dict:
    fps = 0 if choice["fps"] >= src_fps else choice["fps"]
    return {"video_conf": {"resolution": choice["resolution"], "fps": fps, "quality": STATIC_QUALITY,
                           "ntracking": choice["ntracking"]},
            "flow_mapping": {s["name"]: {"node": node, "node_role": "cloud", "grade": None} for s in STAGES},
            "planner": "static", "reason": reason or f"one-time profile: {choice}"}


def wait_node_quiet(worker: subprocess.Popen, quiet_s: float = 2.0, timeout: float = 45.0) -> float:
    """Wait until the worker and its children (the segment profiler) have used no CPU for
    `quiet_s`: a run's last profiling segment, still being scored, would otherwise take the
    next run's first 10-20 s of profiling capacity (its own first segment waited behind it)."""
    import psutil

    def cpu() -> float:
        try:
            procs = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    t0 = time.monotonic()
    last, still_since = cpu(), time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        now = cpu()
        if now - last > 0.05:  # more than 10 % of a core over the half second
            still_since = time.monotonic()
        elif time.monotonic() - still_since >= quiet_s:
            break
        last = now
    return round(time.monotonic() - t0, 1)


# -- one run ---------------------------------------------------------------------------------
def node_speed_profile(node: str, frames: list[np.ndarray], tmp: Path) -> Path:
    """`vdag profile` for the bench's worker node, as a user runs it before the first job."""
    from services import node_profile
    from services.models import ModelCache, set_torch_threads
    from services.weights import trained_person_weights
    from services.registry import ServiceContext

    set_torch_threads(WORKER_THREADS)  # the worker's threads, so the profile is the worker's speed
    ctx = ServiceContext(device="cpu", models=ModelCache(runtime=WORKER_RUNTIME), person_weights=trained_person_weights())
    profile = node_profile.profile_node(frames[:8], ctx, node, services=(("person_detection", None),))
    return node_profile.save(profile, tmp / "profiles")


def run_one(planner: str, *, node: str, source: Path, delay: float, video_s: float, tmp: Path,
            plan: dict | None = None, profile: Path | None = None) -> dict:
    from scheduler.registry import planner_factory
    from tracker.server import TrackerServer

    run_dir = tmp / f"{planner}-{delay:g}-{int(time.time() * 1000)}"
    run_dir.mkdir(parents=True, exist_ok=True)
    if profile is not None:
        (run_dir / "profiles").mkdir()
        (run_dir / "profiles" / profile.name).write_bytes(profile.read_bytes())
    settings = bench_settings(run_dir, node)  # allows VTEST's folder and /tmp (the looped copies)
    # A results queue per run: frames still in flight from the run before never reach this one.
    settings = settings.model_copy(update={"results_queue": f"{settings.results_queue}.{run_dir.name}"})
    factory = None if plan is not None else planner_factory(planner)
    server = TrackerServer(settings, planner_factory=factory, pace=1.0, backpressure="drop", serve_http=False,
                           scheduler_interval_s=None if plan is not None else 2.0).start()
    decisions: list[dict] = []
    if server.runtime.scheduler is not None:
        src = server.runtime.scheduler.job_source
        inner = src.save_plan

        def save_plan(job_uid, p):
            decisions.append({"t": time.time(), "reason": p.reason, "video_conf": p.video_conf.model_dump()})
            return inner(job_uid, p)

        src.save_plan = save_plan
    try:
        client = server.app.test_client()
        body = {"source": str(source), "stages": STAGES, "constraints": {"delay": delay},
                "name": f"adaptive-{planner}"}
        if plan is not None:
            body["plan"] = plan
        resp = client.post("/api/v1/jobs", json=body)
        if resp.status_code != 201:
            raise RuntimeError(f"job rejected: {resp.get_json()}")
        uid = resp.get_json()["uid"]
        t_submit = time.time()
        t_first = None
        while time.time() - t_submit < video_s:
            if t_first is None and server.store.result_count(uid):
                t_first = time.time()
            state = client.get(f"/api/v1/jobs/{uid}").get_json()["state"]
            if state in ("DONE", "FAILED", "CANCELLED"):
                break
            time.sleep(0.25)
        client.post(f"/api/v1/jobs/{uid}/cancel")
        job = client.get(f"/api/v1/jobs/{uid}").get_json()
        sent = (job.get("stats") or {}).get("frames_sent", 0)
        wait_settled(server, uid, sent, timeout=30.0)
        results = all_results(client, uid)
        plans = client.get(f"/api/v1/jobs/{uid}/plans?limit=500").get_json()["items"][::-1]
        job = client.get(f"/api/v1/jobs/{uid}").get_json()
    finally:
        server.stop()
        delete_queues(settings.results_queue)
    return {"uid": uid, "results": results, "plans": plans, "decisions": decisions, "stats": job.get("stats") or {},
            "t_submit": t_submit, "t_first": t_first}


# -- scoring ---------------------------------------------------------------------------------
def compile_times() -> dict:
    """nutpie compile of the planner's model in a fresh process: cold (empty PyTensor cache, its
    numba functions included: base_compiledir) and cached (the same cache directory again)."""
    code = ("import time; from scheduler.bayes import BayesModel; m = BayesModel(); t = time.perf_counter(); "
            "m.compile(); print(round(time.perf_counter() - t, 2))")
    cache = Path(tempfile.mkdtemp(prefix="vdag-pytensor-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTENSOR_FLAGS": f"base_compiledir={cache}"}
    out = {}
    for key in ("compile_s_cold", "compile_s_cached"):
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT,
                             timeout=900)
        out[key] = float(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
    return out


# -- main ------------------------------------------------------------------------------------
def bench_video(name: str, source: Path, planners: list[str], delays: list[float], video_s: float,
                tmp: Path, loop_of: Path | None = None, worker_log: str = "WARNING") -> dict:
    """`loop_of`: the source is that file looped; the golden runs once on its frames."""
    frames, src_fps = read_video(source, video_s + 2)
    golden = golden_for(source, video_s, loop_of, frames)
    detect = person_detector()
    t0 = time.perf_counter()
    for f in frames[:10]:
        detect(f)
    golden_detect_s = (time.perf_counter() - t0) / 10
    out: dict = {"source": str(source), "src_fps": src_fps, "golden_detect_s": round(golden_detect_s, 4), "runs": {}}
    node = unique_node("ar")
    speed = node_speed_profile(node, frames, tmp)
    out["node_profile"] = json.loads(speed.read_text())["rows"]
    # This host also runs the tracker, the segment profiler and the sampler: the worker gets
    # cores - 1 threads, as a worker sharing its host should (services/models.set_torch_threads).
    worker = start_worker(node, concurrency=1, log_path=tmp / f"worker-{name}.log",
                          extra_env={"VDAG_TORCH_THREADS": str(WORKER_THREADS), "VDAG_RUNTIME": WORKER_RUNTIME},
                          log_level=worker_log)
    try:
        # Warm-up: the worker loads the checkpoint before any measured run; on a fixed plan,
        # which sends no profiling segment to outlive it.
        golden_conf = {"resolution": "source", "fps": src_fps, "ntracking": 0}
        run_one("golden", node=node, source=source, delay=1.0, video_s=8.0, tmp=tmp / "warmup",
                plan=static_plan(golden_conf, node, src_fps, reason="warm-up: the golden config"))
        profiled = offline_profile(frames, golden, src_fps) if "static" in planners else []
        for delay in delays:
            choice = static_choice(profiled, delay) if profiled else None
            for planner in planners:
                plan = static_plan(choice, node, src_fps) if planner == "static" else None
                waited = wait_node_quiet(worker)
                log.info("%s: %s at D = %g s (node quiet after %.1f s)", name, planner, delay, waited)
                run = run_one(planner, node=node, source=source, delay=delay, video_s=video_s, tmp=tmp, plan=plan,
                              profile=speed)
                s = score(run, golden, src_fps, delay, golden_detect_s)
                if planner.startswith("bayes"):
                    s["calibration_abs_err"] = calibration(run, s)
                    s["first_posterior_s"] = first_posterior_s(run)
                if planner == "static":
                    s["offline_profile_choice"] = choice
                out["runs"][f"{planner}@{delay:g}"] = s
    finally:
        stop_process(worker)
        delete_queues(*node_queues(node))
    return out


def report(data: dict) -> None:
    for video, v in data["videos"].items():
        print(f"\n{video}: frame-level F1 vs golden over every source frame, late = stored frames over D, "
              f"live = F1 a viewer D behind the source sees")
        print(f"{'run':<22}{'frame_f1':>10}{'live':>7}{'late':>8}{'fps_out':>9}{'compute':>9}{'tracked':>9}"
              f"{'p95 s':>8}  calib")
        for key, s in v["runs"].items():
            live = s.get("frame_f1_live", float("nan"))  # runs scored before it existed have none
            print(f"{key:<22}{s['frame_f1']:>10.3f}{live:>7.3f}{s['late_share']:>8.3f}{s['fps_out']:>9.2f}"
                  f"{(s['compute_ratio'] or 0):>9.2f}{s.get('frames_tracked', 0):>9}{s.get('delay_p95_s', 0):>8.2f}"
                  f"  {s.get('calibration_abs_err', '')}")
    print(f"\ncalibration_abs_err {data['calibration_abs_err']} (bias {data.get('calibration_bias')}, window spread "
          f"{data.get('calibration_spread')})  first_posterior_s {data['first_posterior_s']}  "
          f"compile cold/cached {data['compile_s_cold']}/{data['compile_s_cached']} s")
    print(data["machine"])


def summarise(data: dict) -> None:
    """The top-level keys: every run's headline numbers, the bayes runs' calibration and first posterior."""
    data["runs"] = {(k if name == "vtest" else f"{name}:{k}"): {
        key: s[key] for key in ("frame_f1", "frame_f1_live", "late_share", "fps_out", "compute_ratio") if key in s}
        for name, v in data["videos"].items() for k, s in v["runs"].items()}
    bayes = [s for v in data["videos"].values() for k, s in v["runs"].items() if k.startswith("bayes@")]
    cal = [s["calibration_abs_err"] for s in bayes if s.get("calibration_abs_err") is not None]
    first = [s["first_posterior_s"] for s in bayes if s.get("first_posterior_s") is not None]
    data["calibration_abs_err"] = round(float(np.mean(cal)), 4) if cal else None
    for key in ("calibration_bias", "calibration_spread"):
        parts = [s[key] for s in bayes if s.get(key) is not None]
        data[key] = round(float(np.mean(parts)), 4) if parts else None
    data["first_posterior_s"] = round(float(np.max(first)), 2) if first else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", default="vtest,megamind", help="vtest, megamind (looped to --video-s)")
    ap.add_argument("--planners", default=",".join(PLANNERS))
    ap.add_argument("--delays", default="1,0.5")
    ap.add_argument("--video-s", type=float, default=60.0)
    ap.add_argument("--runtime", default="auto", choices=("auto", "pytorch", "openvino"),
                    help="the worker's runtime (and the profiles'): pytorch = a node ~3x slower per frame")
    ap.add_argument("--cpu-share", type=float, default=None, metavar="S",
                    help="a slower node: every process of the bench at S of a CPU (cgroup quota, root; bench/slow_node.py)")
    ap.add_argument("--worker-log", default="WARNING", choices=("WARNING", "INFO"),
                    help="the worker's log level, in its log under the run's temp folder (INFO: each segment scored)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile-time measurement")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "adaptive_real.json")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="summarise earlier runs' files as one (no new runs)")
    args = ap.parse_args(argv)
    global WORKER_RUNTIME
    WORKER_RUNTIME = args.runtime
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("celery", "kombu", "amqp", "werkzeug", "tracker", "scheduler", "tasks", "services", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not rabbit_up():
        raise SystemExit(f"RabbitMQ not reachable at {AMQP_URL}")
    if not VTEST.exists():
        raise SystemExit("apt-get install opencv-doc provides vtest.avi and Megamind.avi")
    tmp = Path(tempfile.mkdtemp(prefix="vdag-adaptive-"))
    planners = [p.strip() for p in args.planners.split(",") if p.strip()]
    delays = [float(d) for d in args.delays.split(",")]
    started = time.monotonic()
    if args.merge:  # runs of separate invocations (e.g. one video each), summarised as one
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        data = {"machine": parts[0]["machine"], "video_s": parts[0]["video_s"],
                "videos": {k: v for part in parts for k, v in part["videos"].items()}, "merged_from": args.merge}
    else:
        sources = {"vtest": VTEST, "megamind": looped_copy(MEGAMIND, args.video_s + 5, tmp)}
        data = {"machine": machine(), "video_s": args.video_s, "runtime": args.runtime, "cpu_share": args.cpu_share,
                "videos": {}}
        names = [v.strip() for v in args.videos.split(",") if v.strip()]
        loops = {"megamind": MEGAMIND}
        for name in names:  # the golden boxes first, at full speed: they are the reference, not the node
            golden_for(sources[name], args.video_s, loops.get(name))
        with SlowNode(args.cpu_share) if args.cpu_share else contextlib.nullcontext():
            for name in names:
                data["videos"][name] = bench_video(name, sources[name], planners, delays, args.video_s, tmp,
                                                   loop_of=loops.get(name), worker_log=args.worker_log)
    summarise(data)
    data.update(compile_times() if not args.no_compile else {"compile_s_cold": None, "compile_s_cached": None})
    earlier = sum(part.get("wall_s", 0.0) for part in parts) if args.merge else 0.0
    data["wall_s"] = round(earlier + time.monotonic() - started, 1)
    write_json(args.out.name, data, args.out)
    report(data)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
