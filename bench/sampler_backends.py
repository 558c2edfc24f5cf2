"""How nutpie runs the planner's model: its C callbacks ("cfunc") against pytensor's numba
functions called from Python ("pyfunc", scheduler/nutpie_model.py), side by side.

    .venv/bin/python -m bench.sampler_backends [--rounds 20] [--jobs 4] [--out bench/results/sampler_backends.json]

Per backend, each in fresh processes on an empty PyTensor cache of its own:
- compile_s_cold: the first start (numba compiles everything);
- compile_s_cached: the next start, the same cache (what every tracker start after the first pays);
- refresh_s_p50 / refresh_cpu_s_p50: wall and CPU seconds a posterior refresh takes while a
  simulated 4-edge cluster running `jobs` jobs feeds the planner, one refresh a round;
- draws_digest: a hash of the last posterior's draws; equal digests = the same posterior.
The tracker refreshes every 5 s in a niced process of its own (scheduler/sampler_process.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS_DIR, ROOT, machine, median, print_table, write_json

BACKENDS = ("cfunc", "pyfunc")


def _child(backend: str, rounds: int, jobs: int) -> dict:
    """One tracker start: compile, then `rounds` refreshes fed by the simulator."""
    import numpy as np

    from scheduler import simulator as sm
    from scheduler.bayes import BayesModel
    from scheduler.bayes_planner import BayesPlanner
    from scheduler.sim_scenarios import make_job

    model = BayesModel(backend=backend)
    t0 = time.perf_counter()
    model.compile()
    out = {"compile_s": round(time.perf_counter() - t0, 2)}
    if rounds:
        nodes = [sm.SimNode(f"edge-{i}", cpu_count=4, n_process=2, speed=0.8 + 0.05 * (i % 5), bg_load=0.1)
                 for i in range(4)]
        bw = {(a.name, b.name): 12.5e6 for a in nodes for b in nodes if a.name < b.name}
        sim_jobs = [make_job(f"job-{i}", delay=0.5, motion=1 + (i % 3) * 0.5, source_node=f"edge-{i % 4}")
                    for i in range(jobs)]
        sim = sm.Simulator(nodes, sim_jobs, bandwidth=bw, seed=0)
        planner = BayesPlanner(model, background=False, seed=0)
        cpu = []
        for _ in range(rounds):
            sim.step({j.uid: planner for j in sim_jobs})
            c0 = time.process_time()
            planner.refresh_now()
            cpu.append(time.process_time() - c0)
        digest = hashlib.sha256()
        for name, value in sorted(planner.snapshot.draws.items()):
            if isinstance(value, np.ndarray):
                digest.update(name.encode() + np.round(value, 6).tobytes())
        out.update(refresh_s=[round(x, 3) for x in planner.refresh_times], refresh_cpu_s=[round(x, 3) for x in cpu],
                   latency_obs=planner.snapshot.n_lat, accuracy_obs=planner.snapshot.n_acc,
                   draws_digest=digest.hexdigest()[:16])
    return out


def run_backend(backend: str, rounds: int, jobs: int) -> dict:
    cache = Path(tempfile.mkdtemp(prefix=f"vdag-pytensor-{backend}-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTENSOR_FLAGS": f"base_compiledir={cache}"}
    row = {}
    for key, n in (("cold", 0), ("cached", rounds)):
        res = subprocess.run([sys.executable, "-m", "bench.sampler_backends", "--child", backend, "--rounds", str(n),
                              "--jobs", str(jobs)], env=env, capture_output=True, text=True, cwd=ROOT, timeout=1200)
        if res.returncode != 0:
            raise RuntimeError(f"{backend} {key} start failed:\n{res.stderr[-2000:]}")
        child = json.loads(res.stdout.strip().splitlines()[-1])
        row[f"compile_s_{key}"] = child.pop("compile_s")
        row.update(child)
        print(f"  {backend} {key}: compiled in {row[f'compile_s_{key}']} s", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    row["refresh_s_p50"] = round(median(row["refresh_s"][1:]), 3)  # the first includes numba's first calls
    row["refresh_cpu_s_p50"] = round(median(row["refresh_cpu_s"][1:]), 3)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "sampler_backends.json")
    ap.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.rounds, args.jobs)))
        return 0
    started = time.monotonic()
    data = {"machine": machine(), "rounds": args.rounds, "jobs": args.jobs,
            "backends": {b: run_backend(b, args.rounds, args.jobs) for b in BACKENDS}}
    cf, py = data["backends"]["cfunc"], data["backends"]["pyfunc"]
    data["same_posterior"] = cf["draws_digest"] == py["draws_digest"]
    data["start_speedup_cached"] = round(cf["compile_s_cached"] / py["compile_s_cached"], 2)
    data["refresh_cpu_ratio"] = round(py["refresh_cpu_s_p50"] / cf["refresh_cpu_s_p50"], 2)
    data["wall_s"] = round(time.monotonic() - started, 1)
    write_json(args.out.name, data, args.out)
    rows = [(f"{b} {k}", data["backends"][b][k]) for b in BACKENDS
            for k in ("compile_s_cold", "compile_s_cached", "refresh_s_p50", "refresh_cpu_s_p50")]
    rows += [(k, data[k]) for k in ("same_posterior", "start_speedup_cached", "refresh_cpu_ratio")]
    print_table(f"nutpie backends ({data['machine']})", rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
