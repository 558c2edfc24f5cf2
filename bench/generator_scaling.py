"""Is one tracker process the bound on how many streams a node generates? Threads vs processes.

    .venv/bin/python -m bench.generator_scaling          # ~1.5 min; needs RabbitMQ

Issue 12 (item 4) asks that generators not be bound by one Python process. This measures how
far one process goes before that matters: N generators, each the real `FrameGenerator` on
its own copy of vtest.avi (decode, resize to 360p, JPEG q90, envelope, Celery publish to
RabbitMQ on a queue nobody consumes, no pacing), run as N threads of one process and as N
processes of one generator each, interleaved in rounds. Decoding, resizing and encoding are
OpenCV calls that release the GIL; the envelope and the publish are Python that holds it.
If threads carry what processes carry, the GIL is not the bound at that N on this machine.

Also reported: the GIL-held share of one generator's frame (Python time / frame time, from
one thread timing its OpenCV calls apart), the frame rate at which generators alone would make
one process GIL-bound, 1 / (Python seconds a frame), and, from a real tracker running a
`frame_probe` job through a worker, the CPU a frame costs on its generator threads against its
other threads (result consumer, aggregator, store, acks): what else holds the same GIL.
Writes bench/results/generator_scaling.json.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

from bench.common import AMQP_URL, RESULTS_DIR, VTEST, delete_queues, machine, median, unique_node, write_json

RESOLUTION, QUALITY = "360p", 90


def _generator(node: str, job: str, stop: threading.Event):
    from services.codec import Hop
    from services.generator import ActivePlan, FrameGenerator, InFlightWindow
    from services.settings import Settings
    from services.sources import open_source
    from services.video_conf import VideoConf
    from tasks.app import make_celery
    from tasks.stage import dispatch_frame

    celery = make_celery(Settings(broker_url=AMQP_URL, node=node))
    plan = ActivePlan(plan_id=1, video_conf=VideoConf(resolution=RESOLUTION, quality=QUALITY),
                      route=(Hop(stage="probe", service="frame_probe", node=node, params={}),))
    # Nothing acks: a window larger than the file admits every frame.
    return FrameGenerator(job, open_source(str(VTEST)), lambda: plan, lambda env: dispatch_frame(celery, env),
                          InFlightWindow(1 << 20), stop, pace=0.0, backpressure="block")


def _run_one(node: str, job: str, start: threading.Barrier | None = None) -> int:
    gen = _generator(node, job, threading.Event())
    if start is not None:
        start.wait()
    gen.run()
    return gen.stats.sent


def _process_main(node: str, job: str, start, out) -> None:
    out.put(_run_one(node, job, start))


def run_threads(node: str, n: int) -> tuple[int, float, float]:
    """(frames, wall s, CPU s of this process) for n generator threads."""
    start = threading.Barrier(n + 1)
    sent: list[int] = []
    threads = [threading.Thread(target=lambda k=k: sent.append(_run_one(node, f"t{n}-{k}", start)))
               for k in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0, c0 = time.monotonic(), time.process_time()
    for t in threads:
        t.join()
    return sum(sent), time.monotonic() - t0, time.process_time() - c0


def run_processes(node: str, n: int) -> tuple[int, float, float]:
    """(frames, wall s, CPU s of the children) for n generator processes."""
    import psutil

    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(node, f"p{n}-{k}", start, out)) for k in range(n)]
    for p in procs:
        p.start()
    handles = [psutil.Process(p.pid) for p in procs]
    start.wait()
    t0 = time.monotonic()
    c0 = sum(sum(h.cpu_times()[:2]) for h in handles)
    sent = [out.get() for _ in procs]
    wall = time.monotonic() - t0
    cpu = sum(sum(h.cpu_times()[:2]) for h in handles) - c0
    for p in procs:
        p.join()
    return sum(sent), wall, cpu


def gil_share(node: str, frames: int = 300) -> dict:
    """One generator's frame split into OpenCV time (GIL released) and the rest (Python)."""
    import services.generator as generator_module

    spent = {"cv": 0.0}

    def timed(fn):
        def wrapper(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent["cv"] += time.perf_counter() - t
        return wrapper

    saved = generator_module.resize_to, generator_module.encode_jpeg, generator_module.ReadAhead
    generator_module.resize_to, generator_module.encode_jpeg = timed(saved[0]), timed(saved[1])
    try:
        stop = threading.Event()
        gen = _generator(node, "gil", stop)
        frames_of = gen.source.frames

        def timed_frames(start_ts):  # the decode, on the calling thread (no read-ahead below)
            it = frames_of(start_ts)
            while True:
                t = time.perf_counter()
                frame = next(it, None)
                spent["cv"] += time.perf_counter() - t
                if frame is None or gen.stats.sent >= frames:
                    return
                yield frame

        gen.source.frames = timed_frames
        generator_module.ReadAhead = lambda items, **kw: None  # decode inline, so that it is timed
        t0 = time.perf_counter()
        gen.run()
        wall = time.perf_counter() - t0
    finally:
        generator_module.resize_to, generator_module.encode_jpeg, generator_module.ReadAhead = saved
    sent = gen.stats.sent
    python_s = (wall - spent["cv"]) / sent
    return {"frames": sent, "frame_ms": round(1000 * wall / sent, 3), "opencv_ms": round(1000 * spent["cv"] / sent, 3),
            "python_ms": round(1000 * python_s, 3), "gil_share": round(python_s * sent / wall, 3),
            "gil_bound_fps": round(1 / python_s, 1)}


def tracker_threads(node: str) -> dict:
    """CPU ms a frame on the tracker's threads, generator (read-ahead included) vs the rest,
    for one frame_probe job of vtest.avi at 360p, pace 0, through one prefork worker."""
    from bench.common import fixed_plan, rabbit_tracker, run_job, start_worker
    from bench.pipeline import PROBE

    def cpu_by_thread() -> dict[int, tuple[str, float]]:
        out = {}
        for t in threading.enumerate():
            try:
                fields = Path(f"/proc/self/task/{t.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, TypeError):
                continue
            out[t.native_id] = (t.name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        return out

    worker = start_worker(node, concurrency=1)
    seen: dict[int, tuple[str, float]] = {}
    before: dict[int, tuple[str, float]] = {}
    with rabbit_tracker(node, workers=(worker,)) as (server, _):
        plan = fixed_plan(["probe"], node, resolution=RESOLUTION, quality=QUALITY)
        run_job(server, str(VTEST), PROBE, plan)  # warm-up
        before = cpu_by_thread()
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                seen.update(cpu_by_thread())  # a generator thread is gone once its job ends

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        _, job = run_job(server, str(VTEST), PROBE, plan)
        wall = time.monotonic() - t0
        seen.update(cpu_by_thread())
        done.set()
        sampler.join()
    frames = job["stats"]["frames_out"]
    spent = {"generator": 0.0, "other": 0.0}
    for tid, (name, cpu) in seen.items():
        if tid == threading.get_native_id() or name == sampler.name:
            continue
        group = "generator" if name.startswith(("vdag-gen", "vdag-read")) else "other"
        spent[group] += cpu - before.get(tid, (name, 0.0))[1]
    return {"frames": frames, "fps": round(frames / wall, 1),
            "generator_ms_per_frame": round(1000 * spent["generator"] / frames, 2),
            "other_ms_per_frame": round(1000 * spent["other"] / frames, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,2,4", help="generators per arm")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "generator_scaling.json")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    node = unique_node("gs")
    rounds: list[dict] = []
    try:
        gil = gil_share(node)
        split = tracker_threads(node)
        for r in range(args.rounds):
            for n in counts:
                arms = (("threads", run_threads), ("processes", run_processes))
                for arm, fn in arms if r % 2 == 0 else arms[::-1]:
                    frames, wall, cpu = fn(node, n)
                    rounds.append({"round": r, "generators": n, "arm": arm, "frames": frames,
                                   "fps": round(frames / wall, 1), "cores": round(cpu / wall, 2)})
                    delete_queues(f"vdag.node.{node}")
    finally:
        delete_queues(f"vdag.node.{node}")
    rows = []
    for n in counts:
        def med(key: str, arm: str) -> float:
            return round(median([x[key] for x in rounds if x["generators"] == n and x["arm"] == arm]), 2)

        rows.append({"generators": n, "threads_fps": med("fps", "threads"), "processes_fps": med("fps", "processes"),
                     "threads_over_processes": round(med("fps", "threads") / med("fps", "processes"), 3),
                     "threads_cores": med("cores", "threads"), "processes_cores": med("cores", "processes")})
    data = {"machine": machine(), "setup": f"vtest.avi per generator, {RESOLUTION} JPEG q{QUALITY}, pace 0, Celery "
            "publish to RabbitMQ (unconsumed queue); median of rounds, arms interleaved",
            "one_generator": gil, "tracker_threads": split, "scaling": rows, "rounds": rounds}
    write_json(args.out.name, data, args.out)
    print(f"one generator: {gil['frame_ms']} ms a frame, {gil['opencv_ms']} in OpenCV (GIL released), "
          f"{gil['python_ms']} Python: one process is GIL-bound near {gil['gil_bound_fps']} frames/s")
    print(f"a tracker running one frame_probe job ({split['fps']} frames/s): {split['generator_ms_per_frame']} ms CPU a "
          f"frame on generator threads, {split['other_ms_per_frame']} ms on the rest (consumer, aggregator, store, acks)")
    print(f"{'gens':>5} {'threads fps':>12} {'procs fps':>10} {'ratio':>6} {'cores thr':>10} {'cores proc':>11}")
    for row in rows:
        print(f"{row['generators']:>5} {row['threads_fps']:>12} {row['processes_fps']:>10} "
              f"{row['threads_over_processes']:>6} {row['threads_cores']:>10} {row['processes_cores']:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
