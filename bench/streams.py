"""Streams per node: how many live 10-fps vtest.avi streams one node carries within the delay bound.

    .venv/bin/python -m bench.streams            # ~4 min; bench.throughput runs it too

N copies of a 20-s vtest.avi clip play at real time (pace 1, a live stream's drop policy) as
N jobs at once, YOLO11n on 360p frames, on one `vdag worker` (a threads pool of 4 tasks with
cross-job batching, every core for inference) beside the tracker on the same host. A stream
is carried while <= 5 % of its source frames are over D = 1 s, a frame the generator dropped
counting as over. N grows until that fails; `streams_ratio` = the most carried / (bare
best-runtime fps / 10), where the bare loop is ultralytics alone on the same frames, timed
before the streams and again after them (the faster of the two counts).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.common import (
    VTEST,
    all_results,
    bench_main,
    fixed_plan,
    pct,
    rabbit_tracker,
    read_frames,
    start_worker,
    submit_jobs,
    unique_node,
    wait_job,
    write_clip,
)

YOLO11N = [{"name": "detect", "service": "yolo_detection", "inputs": {"image": "generator.image"},
            "params": {"grade": "n"}}]
RESOLUTION, SOURCE_FPS, D_S, LATE_SHARE = "360p", 10.0, 1.0, 0.05


def _bare_fps(threads: int, tmp: Path) -> float:
    from bench.throughput import BareLoop
    from services.detection import default_imgsz
    from services.weights import resolve_weights
    from services.runtimes import choose_runtime

    frames = read_frames(VTEST, RESOLUTION, limit=60)[::3]
    loop = BareLoop(resolve_weights("yolo11n.pt"), choose_runtime("auto", "cpu"), threads, tmp / "exports")
    return 1e3 / min(loop.ms_per_frame(frames, default_imgsz(frames[0])) for _ in range(2))


def _streams(server, clip: Path, node: str, n: int) -> dict:
    client = server.app.test_client()
    uids = submit_jobs(server, str(clip), YOLO11N, fixed_plan(["detect"], node, resolution=RESOLUTION), n)
    per_stream, latencies = [], []
    for uid in uids:
        wait_job(server, uid)
        job = client.get(f"/api/v1/jobs/{uid}").get_json()
        results = [r for r in all_results(client, uid) if not r["lost"]]
        late = sum(r["latency_s"] > D_S for r in results)
        source = job["stats"]["frames_sent"] + job["stats"]["frames_dropped"]
        over = late + (source - len(results))  # dropped or lost: no result within D either
        per_stream.append(over / max(source, 1))
        latencies += [r["latency_s"] for r in results]
    return {"streams": n, "worst_late_share": round(max(per_stream), 4),
            "mean_late_share": round(sum(per_stream) / n, 4),
            "latency_p50_s": round(pct(latencies, 50), 3), "latency_p95_s": round(pct(latencies, 95), 3),
            "carried": max(per_stream) <= LATE_SHARE}


def bench_streams(seconds: float = 20.0, max_streams: int = 8, threads: int | None = None) -> dict:
    threads = threads or os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="vdag-bench-streams-"))
    clip = write_clip(tmp / "clip.avi", int(seconds * SOURCE_FPS))
    bare = _bare_fps(threads, tmp)
    node = unique_node("bs")
    worker = start_worker(node, pool="threads", concurrency=4, log_path=tmp / "worker.log",
                          extra_env={"VDAG_TORCH_THREADS": str(threads), "VDAG_PROFILE_SEGMENT_EVERY_S": "0"})
    tries = []
    with rabbit_tracker(node, max_in_flight=8, workers=(worker,)) as (server, _):
        server.runtime.pace, server.runtime.backpressure = 1.0, "drop"
        _streams(server, write_clip(tmp / "warm.avi", 20), node, 1)  # model load and export
        for n in range(1, max_streams + 1):
            tries.append(_streams(server, clip, node, n))
            print(f"  {n} streams: worst {tries[-1]['worst_late_share']:.1%} of frames over {D_S:g} s, "
                  f"latency p95 {tries[-1]['latency_p95_s']:.2f} s", flush=True)
            if not tries[-1]["carried"]:
                break
    # This host's speed drifts by a third over minutes (a shared VM: the same bare loop measured
    # 33 and 48 fps in two runs): the bare loop runs again once the node is idle, and the faster
    # reading is the one compared against, the less flattering ratio.
    bare_after = _bare_fps(threads, tmp)
    carried = max((t["streams"] for t in tries if t["carried"]), default=0)
    best = max(bare, bare_after)
    return {
        "streams_carried": carried,
        "streams_bare_best_fps": round(best, 2),
        "streams_bare_best_fps_before_after": [round(bare, 2), round(bare_after, 2)],
        "streams_ratio": round(carried / (best / SOURCE_FPS), 3),
        "streams_tries": tries,
        "streams_setup": f"{seconds:g}-s vtest.avi copies at {SOURCE_FPS:g} fps, real time, drop policy, "
                         f"{RESOLUTION} yolo_detection grade n, 1 worker (threads pool of 4, batching, {threads} "
                         f"inference threads) beside the tracker; carried = <= {LATE_SHARE:.0%} of frames over "
                         f"D = {D_S:g} s",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max-streams", type=int, default=8)
    args = p.parse_args(argv)
    return bench_main("streams", "streams", lambda: bench_streams(args.seconds, args.max_streams))


if __name__ == "__main__":
    sys.exit(main())
