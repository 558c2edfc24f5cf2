"""Data-plane benchmark: the pipeline against bare baselines, side by side in one run.

    .venv/bin/python -m bench.pipeline            # ~4 min, writes bench/results/pipeline.json
    .venv/bin/python -m bench.pipeline --quick    # ~1 min
    .venv/bin/python -m bench.pipeline --sweep    # also prefork/solo x prefetch 1/4/16

Everything runs on RabbitMQ (amqp://guest:guest@127.0.0.1:5672//, or $VDAG_BENCH_AMQP)
with one `vdag worker` process and a tracker (generator, aggregator, SQLite store) in
this process, on queues of a unique node name that are deleted afterwards.

1. Inference-bound: the trained person detector on vtest.avi frames. Pipeline frames/s
   (generator unpaced, backpressure=block) against a bare in-process ultralytics
   `predict` loop over the same frames, same model, same torch threads. Rounds alternate
   (bare, pipeline, bare, pipeline...) and the ratio is the median of per-round ratios.
2. Plumbing: a `frame_probe` stage (decode the JPEG only) against a raw kombu round trip
   with the same JPEG payloads: publish, a consumer process decodes and publishes a small
   result, the producer collects it, with the same bound on frames in flight.
3. Added latency at a paced 30 fps: per frame, end-to-end latency minus stage service time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    ArrivalClock,
    CpuMeter,
    all_results,
    fixed_plan,
    machine,
    median,
    pct,
    print_table,
    process_tree,
    rabbit_pids,
    rabbit_tracker,
    read_frames,
    run_job,
    start_worker,
    stop_process,
    unique_node,
    write_clip,
    write_json,
)
from bench.raw_kombu import WINDOW, raw_round_trip_fps

PROBE = [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}}]
DETECT = [{"name": "detect", "service": "person_detection", "inputs": {"image": "generator.image"}}]

DEFAULT = {"infer_frames": 60, "infer_rounds": 2, "infer_resolution": "360p", "plumb_frames": 795,
           "plumb_rounds": 3, "latency_frames": 300, "sweep_frames": 795}
QUICK = {"infer_frames": 12, "infer_rounds": 1, "infer_resolution": "360p", "plumb_frames": 200,
         "plumb_rounds": 1, "latency_frames": 60, "sweep_frames": 200}
TINY = {"infer_frames": 4, "infer_rounds": 1, "infer_resolution": "360p", "plumb_frames": 60,
        "plumb_rounds": 1, "latency_frames": 30, "sweep_frames": 60}
PLUMB_RESOLUTION = "480p"  # 640x480 JPEGs of ~60 KB, like DESIGN.md section 5


# -- inference-bound ---------------------------------------------------------------------
def bare_predict_fps(frames: list, weights: str) -> tuple[float, float]:
    """Bare ultralytics loop, in this process: (frames/s, median ms per frame)."""
    import torch
    from ultralytics import YOLO

    from services.detection import default_imgsz

    model = YOLO(weights)
    ids = [i for i, n in model.names.items() if n.lower() in ("person", "normal", "fall")]
    imgsz = default_imgsz(frames[0])
    for f in frames[:2]:  # warm-up
        model.predict(f, imgsz=imgsz, conf=0.25, classes=ids, device="cpu", verbose=False)
    times = []
    t0 = time.perf_counter()
    for f in frames:
        t = time.perf_counter()
        model.predict(f, imgsz=imgsz, conf=0.25, classes=ids, device="cpu", verbose=False)
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    assert torch.get_num_threads() >= 1
    return len(frames) / total, median(times) * 1e3


def bench_inference(cfg: dict, tmp: Path, log_dir: Path) -> dict:
    import torch

    from services.weights import trained_person_weights

    weights = trained_person_weights() or "yolo11n.yaml"
    clip = write_clip(tmp / f"infer-{cfg['infer_frames']}.avi", cfg["infer_frames"])
    frames = read_frames(clip, cfg["infer_resolution"])
    threads = torch.get_num_threads()
    node = unique_node("bi")
    worker = start_worker(node, concurrency=1, log_path=log_dir / "worker-infer.log",
                          extra_env={"VDAG_TORCH_THREADS": str(threads), "VDAG_PERSON_WEIGHTS": weights,
                                     # the bare loop's runtime; bench/throughput.py measures the best one
                                     "VDAG_RUNTIME": "pytorch"})
    rounds = []
    try:
        with rabbit_tracker(node, max_in_flight=WINDOW, workers=(worker,)) as (server, _):
            clock = ArrivalClock(server)
            plan = fixed_plan(["detect"], node, resolution=cfg["infer_resolution"])
            run_job(server, str(write_clip(tmp / "warm.avi", 3)), DETECT, plan)  # load the model
            for _ in range(cfg["infer_rounds"]):
                bare_fps, bare_ms = bare_predict_fps(frames, weights)
                uid, job = run_job(server, str(clip), DETECT, plan)
                assert job["state"] == "DONE" and job["stats"]["frames_out"] == len(frames), job
                service = [s["service_s"] for r in _results(server, uid) for s in r["stages"]]
                pipe_fps = clock.fps(uid)
                rounds.append({"bare_fps": bare_fps, "bare_ms": bare_ms, "pipeline_fps": pipe_fps,
                               "pipeline_service_ms": median(service) * 1e3, "ratio": pipe_fps / bare_fps})
    finally:
        stop_process(worker)
    return {
        "inference_ratio": median([r["ratio"] for r in rounds]),
        "inference_bare_fps": median([r["bare_fps"] for r in rounds]),
        "inference_pipeline_fps": median([r["pipeline_fps"] for r in rounds]),
        "inference_bare_ms": median([r["bare_ms"] for r in rounds]),
        "inference_service_ms": median([r["pipeline_service_ms"] for r in rounds]),
        "inference_rounds": rounds,
        "inference_setup": f"{Path(weights).name}, {len(frames)} vtest frames at {cfg['infer_resolution']} "
                           f"({frames[0].shape[1]}x{frames[0].shape[0]}), torch threads {threads}, "
                           f"1 prefork worker process, window {WINDOW}",
    }


def _results(server, uid: str) -> list[dict]:
    return all_results(server.app.test_client(), uid)


# -- plumbing ------------------------------------------------------------------------------
class MemorySource:
    """Frames already decoded and resized, served from memory: the pipeline without the
    source read and resize (the generator still JPEG-encodes each frame)."""

    def __init__(self, frames: list, fps: float = 10.0) -> None:
        from services.sources import SourceInfo

        h, w = frames[0].shape[:2]
        self.frames_ = frames
        self.info = SourceInfo(w, h, fps, len(frames), live=False)

    def frames(self, start_ts: float = 0.0):
        from services.sources import SourceFrame

        first = int(round(start_ts * self.info.fps))
        for i in range(first, len(self.frames_)):
            yield SourceFrame(i, i / self.info.fps, self.frames_[i])

    def close(self) -> None:
        pass


def serve_from_memory(path: Path, frames: list) -> None:
    """Make the tracker's generators read `path` from memory (this process only)."""
    import tracker.runtime.generators as runtime

    original = getattr(runtime, "_bench_original_open_source", runtime.open_source)
    runtime._bench_original_open_source = original
    table = getattr(runtime, "_bench_memory_sources", {})
    table[str(path)] = frames
    runtime._bench_memory_sources = table
    runtime.open_source = lambda spec: MemorySource(table[spec]) if spec in table else original(spec)


def probe_pipeline(server, clip: Path, node: str, *, pace: float = 0.0) -> tuple[str, dict]:
    plan = fixed_plan(["probe"], node, resolution=PLUMB_RESOLUTION)
    return run_job(server, str(clip), PROBE, plan, pace=pace, backpressure="block" if pace == 0 else "drop")


def bench_plumbing(cfg: dict, tmp: Path, log_dir: Path) -> dict:
    from services.video_conf import encode_jpeg

    clip = write_clip(tmp / f"plumb-{cfg['plumb_frames']}.avi", cfg["plumb_frames"])
    frames = read_frames(clip, PLUMB_RESOLUTION)
    payloads = [encode_jpeg(f, 85) for f in frames]
    mem_clip = tmp / "plumb-memory.avi"
    mem_clip.write_bytes(clip.read_bytes())  # passes the source checks; served from memory
    serve_from_memory(mem_clip, frames)
    n = len(payloads)
    node = unique_node("bp")
    worker = start_worker(node, concurrency=1, log_path=log_dir / "worker-plumb.log")
    rounds = []
    try:
        with rabbit_tracker(node, max_in_flight=WINDOW, workers=(worker,)) as (server, _):
            clock = ArrivalClock(server)
            probe_pipeline(server, write_clip(tmp / "warm20.avi", 20), node)  # worker warm-up
            groups = {"tracker": [os.getpid()], "worker": process_tree(worker.pid), "rabbit": rabbit_pids()}
            for _ in range(cfg["plumb_rounds"]):
                raw, raw_cpu = raw_round_trip_fps(payloads)
                raw_durable, raw_durable_cpu = raw_round_trip_fps(payloads, durable=True)
                with CpuMeter(groups) as file_cpu:
                    uid, job = probe_pipeline(server, clip, node)
                assert job["state"] == "DONE" and job["stats"]["frames_out"] == n, job
                pipe = clock.fps(uid)
                with CpuMeter(groups) as mem_cpu:
                    uid, job = probe_pipeline(server, mem_clip, node)
                assert job["state"] == "DONE" and job["stats"]["frames_out"] == n, job
                mem = clock.fps(uid)
                rounds.append({"raw_fps": raw, "pipeline_fps": pipe, "ratio": pipe / raw,
                               "raw_durable_fps": raw_durable, "ratio_to_raw_durable": pipe / raw_durable,
                               "memory_source_fps": mem, "memory_source_ratio": mem / raw,
                               "cpu_ms_per_frame": {"raw": raw_cpu, "raw_durable": raw_durable_cpu,
                                                    "pipeline": file_cpu.per_frame_ms(n),
                                                    "pipeline_memory_source": mem_cpu.per_frame_ms(n)}})
    finally:
        stop_process(worker)
    return {
        "plumbing_ratio": median([r["ratio"] for r in rounds]),
        "plumbing_raw_fps": median([r["raw_fps"] for r in rounds]),
        "plumbing_pipeline_fps": median([r["pipeline_fps"] for r in rounds]),
        # The pipeline's queues are durable (a broker restart redelivers the frames in them):
        # the same raw round trip on durable queues says what that durability costs.
        "plumbing_raw_durable_fps": median([r["raw_durable_fps"] for r in rounds]),
        "plumbing_ratio_to_raw_durable": median([r["ratio_to_raw_durable"] for r in rounds]),
        "plumbing_memory_source_ratio": median([r["memory_source_ratio"] for r in rounds]),
        "plumbing_memory_source_fps": median([r["memory_source_fps"] for r in rounds]),
        "plumbing_cpu_ms_per_frame": rounds[len(rounds) // 2]["cpu_ms_per_frame"],
        "plumbing_rounds": rounds,
        "plumbing_setup": f"frame_probe, {n} vtest frames at {PLUMB_RESOLUTION}, "
                          f"mean JPEG {sum(map(len, payloads)) // n} B, window {WINDOW}, "
                          f"1 prefork worker (prefetch 4); pipeline = from the MJPG clip (read+resize+encode "
                          f"in the generator); memory_source = pre-decoded, pre-resized frames (encode only)",
    }


# -- added latency ------------------------------------------------------------------------
def bench_latency(cfg: dict, tmp: Path, log_dir: Path) -> dict:
    """frame_probe at a paced 30 fps (vtest.avi is 10 fps: pace 3)."""
    clip = write_clip(tmp / f"lat-{cfg['latency_frames']}.avi", cfg["latency_frames"])
    node = unique_node("bl")
    worker = start_worker(node, concurrency=1, log_path=log_dir / "worker-latency.log")
    try:
        with rabbit_tracker(node, max_in_flight=WINDOW, workers=(worker,)) as (server, _):
            clock = ArrivalClock(server)
            probe_pipeline(server, write_clip(tmp / "warm20.avi", 20), node)
            uid, job = probe_pipeline(server, clip, node, pace=3.0)
            results = [r for r in _results(server, uid) if not r["lost"]]
    finally:
        stop_process(worker)
    added = [(r["latency_s"] - sum(s["service_s"] for s in r["stages"])) * 1e3 for r in results]
    e2e = [r["latency_s"] * 1e3 for r in results]
    return {
        "added_latency_p50_ms": pct(added, 50), "added_latency_p99_ms": pct(added, 99),
        "added_latency_max_ms": max(added) if added else float("nan"),
        "e2e_latency_p50_ms": pct(e2e, 50), "e2e_latency_p99_ms": pct(e2e, 99),
        "latency_frames": len(results), "latency_dropped": job["stats"].get("frames_dropped", 0),
        "latency_fps_out": clock.fps(uid),
        "latency_setup": f"frame_probe at 30 fps (vtest.avi paced x3), {PLUMB_RESOLUTION}, backpressure=drop",
    }


# -- worker settings sweep ------------------------------------------------------------------
def bench_sweep(cfg: dict, tmp: Path, log_dir: Path) -> list[dict]:
    """frame_probe frames/s and 30 fps latency per (pool, prefetch), raw round trip alongside."""
    clip = write_clip(tmp / f"sweep-{cfg['sweep_frames']}.avi", cfg["sweep_frames"])
    lat_clip = write_clip(tmp / "sweep-lat.avi", min(150, cfg["sweep_frames"]))
    payloads = None
    out = []
    for pool in ("prefork", "solo"):
        for prefetch in (1, 4, 16):
            node = unique_node("bs")
            worker = start_worker(node, pool=pool, prefetch=prefetch, log_path=log_dir / f"worker-{pool}-{prefetch}.log")
            row: dict = {"pool": pool, "prefetch": prefetch}
            try:
                with rabbit_tracker(node, max_in_flight=WINDOW, reorder_wait_s=5.0, workers=(worker,)) as (server, _):
                    clock = ArrivalClock(server)
                    probe_pipeline(server, write_clip(tmp / "warm20.avi", 20), node)
                    if payloads is None:
                        from services.video_conf import encode_jpeg

                        payloads = [encode_jpeg(f, 85) for f in read_frames(clip, PLUMB_RESOLUTION)]
                    row["raw_fps"], _ = raw_round_trip_fps(payloads)
                    t0 = time.monotonic()
                    uid, job = probe_pipeline(server, clip, node)
                    row["pipeline_fps"] = clock.fps(uid)
                    row["frames_out"] = job["stats"]["frames_out"]
                    row["wall_s"] = time.monotonic() - t0
                    row["ratio"] = row["pipeline_fps"] / row["raw_fps"]
                    uid, job = probe_pipeline(server, lat_clip, node, pace=3.0)
                    lat = [r["latency_s"] * 1e3 for r in _results(server, uid) if not r["lost"]]
                    row["lat30_p50_ms"], row["lat30_p99_ms"] = pct(lat, 50), pct(lat, 99)
            except Exception as exc:  # a stalled setting is a result, not a crash
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                stop_process(worker)
            out.append(row)
            print(f"  sweep {pool:8s} prefetch {prefetch:3d}: " + ", ".join(
                f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                if k not in ("pool", "prefetch")), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run (~1 min)")
    p.add_argument("--tiny", action="store_true", help="smoke-test size (seconds)")
    p.add_argument("--sweep", action="store_true", help="also sweep prefork/solo x prefetch 1/4/16")
    p.add_argument("--only", choices=("inference", "plumbing", "latency", "sweep"), action="append",
                   help="run only these parts (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/pipeline.json)")
    args = p.parse_args(argv)
    from bench.common import missing_prerequisite

    missing = missing_prerequisite()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    cfg = TINY if args.tiny else QUICK if args.quick else DEFAULT
    parts = args.only or ["inference", "plumbing", "latency"] + (["sweep"] if args.sweep else [])
    tmp = Path(tempfile.mkdtemp(prefix="vdag-bench-pipe-"))
    log_dir = tmp / "logs"
    log_dir.mkdir()
    result: dict = {"machine": machine(), "mode": "tiny" if args.tiny else "quick" if args.quick else "default",
                    "broker": "RabbitMQ (amqp) + 1 vdag worker process; tracker in the bench process",
                    "frames": 0, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    t0 = time.monotonic()
    if "inference" in parts:
        result.update(bench_inference(cfg, tmp, log_dir))
        result["frames"] += cfg["infer_frames"] * cfg["infer_rounds"]
    if "plumbing" in parts:
        result.update(bench_plumbing(cfg, tmp, log_dir))
        result["frames"] += cfg["plumb_frames"] * cfg["plumb_rounds"]
    if "latency" in parts:
        result.update(bench_latency(cfg, tmp, log_dir))
        result["frames"] += cfg["latency_frames"]
    if "sweep" in parts:
        result["sweep"] = bench_sweep(cfg, tmp, log_dir)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    result["targets"] = {
        "inference_ratio>=0.90": _met(result.get("inference_ratio"), 0.90, ge=True),
        "plumbing_ratio>=0.5": _met(result.get("plumbing_ratio"), 0.5, ge=True),
        "added_latency_p50_ms<=10": _met(result.get("added_latency_p50_ms"), 10, ge=False),
        "added_latency_p99_ms<=50": _met(result.get("added_latency_p99_ms"), 50, ge=False),
    }
    out = args.out or RESULTS_DIR / "pipeline.json"
    if args.only and out.exists():  # a partial run updates the last full one
        merged = json.loads(out.read_text())
        merged.update({k: v for k, v in result.items() if k not in ("frames", "targets", "mode", "started", "wall_s")})
        merged[f"{'_'.join(parts)}_mode"] = result["mode"]
        merged["frames"] = merged.get("frames", 0) + result["frames"]
        merged["targets"] = {k: v if v is not None else merged.get("targets", {}).get(k)
                             for k, v in result["targets"].items()}
        result = merged
    path = write_json("pipeline.json", result, out)
    rows = [(k, v) for k, v in result.items() if isinstance(v, (int, float, str)) and k != "machine"]
    print_table(f"vdag pipeline bench ({result['mode']}) on {result['machine']}", rows)
    for row in result.get("sweep", []):
        print("  sweep", row)
    print("targets:", result["targets"])
    print(f"wrote {path}")
    return 0


def _met(value, target: float, ge: bool):
    if value is None:
        return None
    return bool(value >= target) if ge else bool(value <= target)


if __name__ == "__main__":
    sys.exit(main())
