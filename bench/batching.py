"""Cross-job batching (services/batching.py) in a real worker: concurrent jobs on one node, with
and without shared predict calls.

    .venv/bin/python -m bench.batching            # ~3 min; bench.throughput runs it too

Two real `vdag worker` processes, each a threads pool of `jobs` tasks on its own node queue,
identical but for VDAG_BATCH_WINDOW_MS (default vs 0). Each round submits `jobs` copies of a
vtest.avi clip at once, YOLO11n at 320 on 360p frames, to one of them; rounds alternate. The
gain is the aggregate frames/s ratio; the added delay is what batching adds to a frame's
generator-to-aggregator latency and to its service time (p50 and p95).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.common import (
    ArrivalClock,
    CpuMeter,
    all_results,
    bench_main,
    delete_queues,
    fixed_plan,
    median,
    node_queues,
    pct,
    process_tree,
    rabbit_pids,
    rabbit_tracker,
    start_worker,
    stop_process,
    submit_jobs,
    unique_node,
    wait_job,
    write_clip,
)

YOLO11N_320 = [{"name": "detect", "service": "yolo_detection", "inputs": {"image": "generator.image"},
                "params": {"grade": "n", "imgsz": 320}}]
RESOLUTION = "360p"


def _run_jobs(server, clip: Path, node: str, jobs: int) -> list[str]:
    uids = submit_jobs(server, str(clip), YOLO11N_320, fixed_plan(["detect"], node, resolution=RESOLUTION), jobs)
    for uid in uids:
        wait_job(server, uid)
    return uids


def _round(server, clock: ArrivalClock, clip: Path, node: str, jobs: int, worker_pid: int) -> dict:
    client = server.app.test_client()
    meter = CpuMeter({"tracker": [os.getpid()], "worker": process_tree(worker_pid), "rabbitmq": rabbit_pids()})
    with meter:
        uids = _run_jobs(server, clip, node, jobs)
    arrivals = sorted(t for uid in uids for t in clock.times.get(uid, []))
    frames = [r for uid in uids for r in all_results(client, uid)]
    stages = [s for r in frames for s in r["stages"]]
    assert len(frames) == len(arrivals) > 0
    skip = min(jobs * 4, len(arrivals) // 4)  # the first frames of each job start the pipeline
    steady = arrivals[skip:]
    return {
        "fps": (len(steady) - 1) / (steady[-1] - steady[0]),
        "frames": len(frames),
        "latency_p50_s": pct([r["latency_s"] for r in frames], 50),
        "latency_p95_s": pct([r["latency_s"] for r in frames], 95),
        "service_p50_s": pct([s["service_s"] for s in stages], 50),
        "service_p95_s": pct([s["service_s"] for s in stages], 95),
        "batch_mean": sum(s.get("batch") or 1 for s in stages) / len(stages),
        "cpu_ms_per_frame": meter.per_frame_ms(len(frames)),
    }


def bench_batching(frames: int = 120, rounds: int = 2, jobs: int = 4, threads: int | None = None,
                   runtime: str = "auto", log_dir: Path | None = None) -> dict:
    from services.settings import Settings

    threads = threads or os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="vdag-bench-batch-"))
    log_dir = log_dir or tmp
    clip = write_clip(tmp / "clip.avi", frames)
    nodes = {"batched": unique_node("bon"), "unbatched": unique_node("boff")}
    env = {"VDAG_TORCH_THREADS": str(threads), "VDAG_RUNTIME": runtime, "VDAG_PROFILE_SEGMENT_EVERY_S": "0"}
    workers = {
        "batched": start_worker(nodes["batched"], pool="threads", concurrency=jobs, log_path=log_dir / "w-on.log",
                                extra_env=env),
        "unbatched": start_worker(nodes["unbatched"], pool="threads", concurrency=jobs,
                                  log_path=log_dir / "w-off.log", extra_env={**env, "VDAG_BATCH_WINDOW_MS": "0"}),
    }
    measured: dict[str, list[dict]] = {"batched": [], "unbatched": []}
    try:
        with rabbit_tracker(nodes["batched"], max_in_flight=8, workers=tuple(workers.values())) as (server, _):
            server.runtime.pace, server.runtime.backpressure = 0.0, "block"
            clock = ArrivalClock(server)
            warm = write_clip(tmp / "warm.avi", 12)
            for mode in measured:  # loads and exports the model in both before anything is timed
                _run_jobs(server, warm, nodes[mode], jobs)  # not measured: a first frame may outlast its wait
            for _ in range(rounds):
                for mode in measured:
                    r = _round(server, clock, clip, nodes[mode], jobs, workers[mode].pid)
                    measured[mode].append(r)
                    print(f"  {mode}: {r['fps']:.1f} fps, mean batch {r['batch_mean']:.2f}, "
                          f"latency p50 {r['latency_p50_s']:.3f} s, CPU ms/frame {r['cpu_ms_per_frame']}", flush=True)
    finally:
        for proc in workers.values():
            stop_process(proc)
        delete_queues(*node_queues(nodes["unbatched"]))

    def med(mode: str, key: str) -> float:
        return round(median([r[key] for r in measured[mode]]), 4)

    gains = [b["fps"] / u["fps"] for b, u in zip(measured["batched"], measured["unbatched"])]
    return {
        "batching_gain": round(median(gains), 3),
        "batching_gain_rounds": [round(g, 3) for g in gains],
        "batching_fps": {m: med(m, "fps") for m in measured},
        "batching_mean_batch": med("batched", "batch_mean"),
        "batching_added_latency_p50_s": round(med("batched", "latency_p50_s") - med("unbatched", "latency_p50_s"), 4),
        "batching_added_service_p50_s": round(med("batched", "service_p50_s") - med("unbatched", "service_p50_s"), 4),
        "batching_added_service_p95_s": round(med("batched", "service_p95_s") - med("unbatched", "service_p95_s"), 4),
        "batching_rounds": measured,
        "batching_setup": f"{jobs} concurrent jobs x {frames} vtest frames at {RESOLUTION}, yolo_detection grade n "
                          f"imgsz 320, 1 worker process: threads pool of {jobs}, {threads} inference threads, "
                          f"window {Settings.model_fields['batch_window_ms'].default:g} ms vs 0",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="inference threads of the worker; default: every core")
    p.add_argument("--runtime", default="auto", help="the workers' VDAG_RUNTIME")
    args = p.parse_args(argv)
    return bench_main("batching", "batching",
                      lambda: bench_batching(args.frames, args.rounds, args.jobs, args.threads, args.runtime))


if __name__ == "__main__":
    sys.exit(main())
