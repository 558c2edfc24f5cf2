"""Throughput per node: the inference runtime a worker picks, against PyTorch and against itself bare.

    .venv/bin/python -m bench.throughput           # ~9 min, writes bench/results/throughput.json
    .venv/bin/python -m bench.throughput --quick   # ~5 min

1. runtime_speedup: bare ultralytics predict loops over the same vtest.avi frames, PyTorch
   against the best runtime this machine has (services/runtimes.py: OpenVINO on a CPU), same
   threads (every core: the bench runs nothing else meanwhile), for the trained person model and
   YOLO11n at 320 and 640. The runtimes alternate in rounds and each figure is a median, because
   a small shared machine drifts by more than the effects measured.
2. threads_in_predict, inference_ratio_best: a real `vdag worker` on RabbitMQ (runtime auto,
   VDAG_TORCH_THREADS = cores) runs person_detection on 360p frames, the tracker in this process;
   its frames/s against the bare best-runtime loop on the same frames, rounds alternating. The
   thread count is what the worker saw inside predict (each stage timing carries it). Run again
   with every core but one (the worker's default), where the plumbing has a core to itself, and
   with a threads pool of 4 (several of the job's frames at once, sharing predict calls).
3. plumbing_ratio: bench.pipeline's definition (frame_probe pipeline vs a raw kombu round trip).
4. batching_gain: bench.batching, 4 concurrent jobs of YOLO11n at 320 on one worker, shared
   predict calls against one call per frame, in the best runtime and in PyTorch; beside it
   batching_bare_gain, the same model's bare loop at 4 frames per predict call against 1 (what
   the runtime itself gains from a batch: the pipeline's ceiling).
5. streams_ratio: bench.streams, live 10-fps vtest.avi streams one node carries within D = 1 s,
   against the bare best-runtime loop's frames/s / 10.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    VTEST,
    ArrivalClock,
    all_results,
    fixed_plan,
    machine,
    median,
    print_table,
    rabbit_tracker,
    read_frames,
    run_job,
    start_worker,
    stop_process,
    unique_node,
    write_clip,
    write_json,
)

DETECT = [{"name": "detect", "service": "person_detection", "inputs": {"image": "generator.image"}}]
DEFAULT = {"frames": 24, "rounds": 3, "pipe_frames": 80, "pipe_rounds": 2, "plumb_frames": 400, "plumb_rounds": 2,
           "batch_frames": 120, "batch_rounds": 2, "stream_s": 20.0}
QUICK = {"frames": 10, "rounds": 2, "pipe_frames": 40, "pipe_rounds": 1, "plumb_frames": 200, "plumb_rounds": 1,
         "batch_frames": 60, "batch_rounds": 1, "stream_s": 10.0}
PIPE_RESOLUTION = "360p"


def _models() -> list[tuple[str, str]]:
    from services.weights import resolve_weights, trained_person_weights

    person = trained_person_weights()
    return ([("person", person)] if person else []) + [("yolo11n", resolve_weights("yolo11n.pt"))]


class BareLoop:
    """One model in one runtime, predicting straight through ultralytics (no vdag code on the path)."""

    def __init__(self, weights: str, runtime: str, threads: int, exports: Path) -> None:
        from ultralytics import YOLO

        from services import runtimes

        self.runtime, self.threads = runtime, threads
        self.path = None if runtime == "pytorch" else runtimes.export(weights, runtime, runtimes.exports_dir(weights, exports))
        self.model = YOLO(weights) if self.path is None else YOLO(str(self.path), task="detect")
        self._threads_set = False

    def ms_per_frame(self, frames: list, imgsz: int, batch: int = 1) -> float:
        """Median ms per frame over predict calls of `batch` frames each (the first call warms up)."""
        import torch

        from services.runtimes import set_openvino_threads

        calls = [frames[i:i + batch] for i in range(0, len(frames) - batch + 1, batch)]
        times = []
        for i, call in enumerate([calls[0], *calls]):
            torch.set_num_threads(self.threads)  # ultralytics resets it at predictor setup
            t0 = time.perf_counter()
            self.model.predict(call if batch > 1 else call[0], imgsz=imgsz, conf=0.25, device="cpu", verbose=False)
            if i:
                times.append((time.perf_counter() - t0) / batch)
            if self.runtime == "openvino" and not self._threads_set:
                self._threads_set = set_openvino_threads(self.model, self.path, self.threads)
        return median(times) * 1e3


def bench_runtimes(cfg: dict, threads: int, exports: Path, best: str) -> dict:
    frames = read_frames(VTEST, "source", limit=cfg["frames"] * 5)[::5]
    cases = {}
    for name, weights in _models():
        loops = {rt: BareLoop(weights, rt, threads, exports) for rt in ("pytorch", best)}
        for imgsz in (320, 640):
            rounds = []
            for _ in range(cfg["rounds"]):
                rounds.append({rt: loop.ms_per_frame(frames, imgsz) for rt, loop in loops.items()})
            pt, fast = median([r["pytorch"] for r in rounds]), median([r[best] for r in rounds])
            cases[f"{name}@{imgsz}"] = {"pytorch_ms": round(pt, 1), f"{best}_ms": round(fast, 1),
                                        "speedup": round(pt / fast, 3), "rounds": rounds}
            print(f"  {name}@{imgsz}: PyTorch {pt:.1f} ms, {best} {fast:.1f} ms, x{pt / fast:.2f}", flush=True)
    return cases


def bench_batch_ceiling(cfg: dict, threads: int, exports: Path, best: str, batch: int = 4) -> dict:
    """What batching can gain at most: the bare loop's ms per frame at one frame per predict call
    against `batch` frames per call, YOLO11n at 320 on the 360p frames bench.batching sends, per
    runtime (the two call sizes alternate in rounds). The pipeline's batching_gain is bounded by
    this, less the per-frame work outside predict that batching does not share."""
    from bench.batching import RESOLUTION
    from services.weights import resolve_weights

    frames = read_frames(VTEST, RESOLUTION, limit=cfg["frames"] * batch * 2)[::2]
    out = {}
    for runtime in (best, "pytorch"):
        loop = BareLoop(resolve_weights("yolo11n.pt"), runtime, threads, exports)
        rounds = [(loop.ms_per_frame(frames, 320), loop.ms_per_frame(frames, 320, batch)) for _ in range(cfg["rounds"])]
        one, many = median([r[0] for r in rounds]), median([r[1] for r in rounds])
        out[runtime] = {"ms_batch_1": round(one, 1), f"ms_batch_{batch}": round(many, 1),
                        "gain": round(one / many, 3), "rounds": rounds}
        print(f"  bare {runtime} YOLO11n@320: {one:.1f} ms a frame alone, {many:.1f} in batches of {batch}, "
              f"x{one / many:.2f}", flush=True)
    return {"batching_bare_gain": out[best]["gain"], "batching_bare_gain_pytorch": out["pytorch"]["gain"],
            "batching_bare": out}


def bench_worker(cfg: dict, threads: int, exports: Path, best: str, tmp: Path, log_dir: Path,
                 pool: str = "prefork", concurrency: int = 1) -> dict:
    from services.detection import default_imgsz
    from services.weights import trained_person_weights

    weights = trained_person_weights() or "yolo11n.yaml"
    clip = write_clip(tmp / "pipe.avi", cfg["pipe_frames"])
    frames = read_frames(clip, PIPE_RESOLUTION)
    bare = BareLoop(weights, best, threads, exports)  # also makes the export the worker loads
    node = unique_node("bt")
    worker = start_worker(node, pool=pool, concurrency=concurrency, log_path=log_dir / "worker.log",
                          extra_env={"VDAG_TORCH_THREADS": str(threads), "VDAG_PERSON_WEIGHTS": weights,
                                     "VDAG_RUNTIME": "auto"})
    rounds, seen, batches = [], [], []
    try:
        with rabbit_tracker(node, max_in_flight=8, workers=(worker,)) as (server, _):
            clock = ArrivalClock(server)
            plan = fixed_plan(["detect"], node, resolution=PIPE_RESOLUTION)
            run_job(server, str(write_clip(tmp / "warm.avi", 5)), DETECT, plan)
            for _ in range(cfg["pipe_rounds"]):
                bare_ms = bare.ms_per_frame(frames, default_imgsz(frames[0]))
                uid, job = run_job(server, str(clip), DETECT, plan)
                assert job["state"] == "DONE" and job["stats"]["frames_out"] == len(frames), job
                stages = [s for r in all_results(server.app.test_client(), uid) for s in r["stages"]]
                seen += [(s["runtime"], s["threads"]) for s in stages]
                batches += [s.get("batch") or 1 for s in stages]
                fps = clock.fps(uid)
                rounds.append({"bare_fps": 1e3 / bare_ms, "pipeline_fps": fps, "ratio": fps * bare_ms / 1e3})
    finally:
        stop_process(worker)
    runtimes_seen = sorted({r for r, _ in seen if r})
    threads_seen = sorted({t for _, t in seen if t is not None})
    return {
        "threads_in_predict": threads_seen[0] if len(threads_seen) == 1 else threads_seen,
        "threads_configured": threads,
        "worker_runtime": runtimes_seen[0] if len(runtimes_seen) == 1 else runtimes_seen,
        "inference_ratio_best": round(median([r["ratio"] for r in rounds]), 3),
        "inference_bare_best_fps": round(median([r["bare_fps"] for r in rounds]), 2),
        "inference_pipeline_fps": round(median([r["pipeline_fps"] for r in rounds]), 2),
        "inference_rounds": rounds,
        "inference_batch_mean": round(sum(batches) / len(batches), 2) if batches else None,
        "inference_setup": f"{Path(weights).name} on {len(frames)} vtest frames at {PIPE_RESOLUTION}, "
                           f"{threads} threads, 1 worker process ({pool} pool of {concurrency}), window 8",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from bench.common import missing_prerequisite
    from bench.pipeline import QUICK as PIPE_QUICK
    from bench.pipeline import bench_plumbing
    from services.runtimes import choose_runtime, label

    missing = missing_prerequisite()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    cfg = QUICK if args.quick else DEFAULT
    threads = os.cpu_count() or 1
    best = choose_runtime("auto", "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="vdag-bench-tp-"))
    (tmp / "logs").mkdir()
    t0 = time.monotonic()
    result: dict = {"machine": machine(), "mode": "quick" if args.quick else "default",
                    "best_runtime": label(best), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    cases = bench_runtimes(cfg, threads, tmp / "exports", best)
    result["runtime_speedup"] = {k: v["speedup"] for k, v in cases.items()}
    result["runtime_cases"] = cases
    result.update(bench_worker(cfg, threads, tmp / "exports", best, tmp, tmp / "logs"))
    if threads > 1:  # the worker's default: every core but one, which the plumbing then has to itself
        spare = bench_worker(cfg, threads - 1, tmp / "exports", best, tmp, tmp / "logs")
        result["spare_core"] = {k: spare[k] for k in ("threads_in_predict", "inference_ratio_best",
                                                      "inference_bare_best_fps", "inference_pipeline_fps")}
    # A threads pool runs several of the job's frames at once: decoding and publishing overlap
    # a predict call, and frames in flight together share one (services/batching.py).
    pooled = bench_worker(cfg, threads, tmp / "exports", best, tmp, tmp / "logs", pool="threads", concurrency=4)
    result["threads_pool"] = {k: pooled[k] for k in ("threads_in_predict", "inference_ratio_best", "inference_batch_mean",
                                                     "inference_bare_best_fps", "inference_pipeline_fps")}
    plumb = bench_plumbing({**PIPE_QUICK, "plumb_frames": cfg["plumb_frames"], "plumb_rounds": cfg["plumb_rounds"]},
                           tmp, tmp / "logs")
    result.update({k: plumb[k] for k in ("plumbing_ratio", "plumbing_raw_fps", "plumbing_pipeline_fps",
                                         "plumbing_raw_durable_fps", "plumbing_ratio_to_raw_durable")})
    from bench.batching import bench_batching

    result.update(bench_batch_ceiling(cfg, threads, tmp / "exports", best))
    for runtime in (best, "pytorch"):
        batching = bench_batching(frames=cfg["batch_frames"], rounds=cfg["batch_rounds"], threads=threads,
                                  runtime=runtime, log_dir=tmp / "logs")
        suffix = "" if runtime == best else "_pytorch"
        result.update({f"{k}{suffix}" if k.startswith("batching_") else k: v for k, v in batching.items()})
    from bench.streams import bench_streams

    result.update(bench_streams(seconds=cfg["stream_s"], threads=threads))
    result["wall_s"] = round(time.monotonic() - t0, 1)
    result["targets"] = {
        "threads_in_predict==configured": result["threads_in_predict"] == threads,
        "inference_ratio_best>=0.90": result["inference_ratio_best"] >= 0.90,
        "plumbing_ratio>=0.6": result["plumbing_ratio"] >= 0.6,
        "batching_gain>=1.3": result["batching_gain"] >= 1.3,
        "streams_ratio>=0.8": result["streams_ratio"] >= 0.8,
    }
    path = write_json("throughput.json", result, args.out or RESULTS_DIR / "throughput.json")
    rows = [(f"runtime_speedup {k}", v) for k, v in result["runtime_speedup"].items()]
    rows += [(k, v) for k, v in result.items() if isinstance(v, (int, float, str)) and k not in ("machine",)]
    rows += [(f"cores-1 threads: {k}", v) for k, v in result.get("spare_core", {}).items()]
    rows += [(f"threads pool of 4: {k}", v) for k, v in result.get("threads_pool", {}).items()]
    print_table(f"vdag throughput bench ({result['mode']}) on {result['machine']}", rows)
    print("targets:", result["targets"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
