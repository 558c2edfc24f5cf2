"""Shared parts of the benchmarks: machine description, clips, a tracker on RabbitMQ with
its own queues, `vdag worker` processes, percentiles, JSON output.

Every bench compares ratios measured side by side in one run: the machines these run on
are small and shared, so one absolute time means little.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import cv2

from services.settings import Settings
from tasks.queues import service_reply_queue_name

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
AMQP_URL = os.environ.get("VDAG_BENCH_AMQP", os.environ.get("VDAG_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//"))
TERMINAL = {"DONE", "FAILED", "CANCELLED"}


def machine() -> str:
    from services.runtime_trial import cpu_model

    cpu = cpu_model()
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:  # pragma: no cover
        torch_v = "none"
    import celery
    import kombu

    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch_v}, "
            f"celery {celery.__version__}, kombu {kombu.__version__}")


def pct(values: list[float], q: float) -> float:
    """q-th percentile (0-100), linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_json(name: str, data: dict, path: Path | None = None) -> Path:
    path = path or RESULTS_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 24))
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        print(f"{key:<{width}}  {value}")


def write_clip(path: Path, frames: int, source: Path = VTEST) -> Path:
    """The first `frames` frames of `source` as an MJPG AVI (10 fps, like vtest.avi)."""
    cap = cv2.VideoCapture(str(source))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    writer = None
    n = 0
    try:
        while n < frames:
            ok, frame = cap.read()
            if not ok:
                cap.release()
                cap = cv2.VideoCapture(str(source))  # loop a short source
                continue
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
            writer.write(frame)
            n += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    return path


def read_frames(path: Path, resolution: str = "source", limit: int | None = None) -> list:
    from services.video_conf import resize_to

    cap = cv2.VideoCapture(str(path))
    out = []
    while limit is None or len(out) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(resize_to(frame, resolution))
    cap.release()
    return out


def rabbit_up(url: str = AMQP_URL) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.connect()
        return True
    except Exception:
        return False


def missing_prerequisite() -> str | None:
    """Why a bench cannot run here (no broker, no test video), or None."""
    if not rabbit_up():
        return f"RabbitMQ not reachable at {AMQP_URL}"
    if not VTEST.exists():
        return f"{VTEST} missing: apt-get install opencv-doc"
    return None


def all_results(client, uid: str) -> list[dict]:
    """Every stored frame of a job, paging through GET /api/v1/jobs/<id>/results."""
    out, after = [], -1
    while True:
        page = client.get(f"/api/v1/jobs/{uid}/results?after_seq={after}&limit=1000").get_json()
        if not page["items"]:
            return out
        out.extend(page["items"])
        after = page["items"][-1]["seq"]


def wait_settled(server, uid: str, sent: int, timeout: float = 60.0) -> None:
    """After a cancel, until every frame the job sent has settled, so that the next run does not
    start behind this one's backlog. The aggregator stores those that arrive before the job
    ends and acks the rest unstored (`frames_after_end`): waiting for all of them to be stored
    ran into the timeout every time (3 minutes of the suite in test_planner_real)."""
    def settled() -> int:
        return server.store.result_count(uid) + server.runtime.aggregator.frames_after_end

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and settled() < sent:
        time.sleep(0.2)
    if settled() < sent:
        log.warning("job %s: %d of %d sent frames settled after %.0f s", uid, settled(), sent, timeout)


def delete_queues(*names: str, url: str = AMQP_URL) -> None:
    from kombu import Connection

    with Connection(url) as conn:
        for name in names:
            try:
                conn.default_channel.queue_delete(name)
            except Exception:
                conn.close()
                conn.connect()


def unique_node(prefix: str = "b") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def node_queues(node: str) -> tuple[str, ...]:
    """Every queue a tracker and workers of this node declare (the service caller's reply queue
    is durable: a run under a one-off node name would leave it behind)."""
    return (f"vdag.node.{node}", f"vdag.results.{node}", f"vdag.acks.{node}", service_reply_queue_name(node))


def bench_settings(tmp: Path, node: str, **kw) -> Settings:
    return Settings(broker_url=kw.pop("broker_url", AMQP_URL), database_url=f"sqlite:///{tmp}/vdag.db", node=node,
                    data_dir=tmp, api_port=0, video_port=0, service_port=0, results_queue=f"vdag.results.{node}",
                    allowed_video_dirs=(VTEST.parent, tmp, Path("/tmp")), **kw)


def start_worker(node: str, *, pool: str = "prefork", concurrency: int = 1, prefetch: int | None = None,
                 log_path: Path | None = None, extra_env: dict | None = None,
                 log_level: str = "WARNING") -> subprocess.Popen:
    """A real `vdag worker` process on the node's queue."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    if prefetch is not None:
        env["VDAG_PREFETCH"] = str(prefetch)
    if pool != "prefork":
        # run_worker only sizes torch threads for prefork; give the solo pool the same threads.
        env.setdefault("VDAG_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // concurrency)))
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "tracker.cli", "worker", "--node", node, "--concurrency", str(concurrency),
         "--pool", pool, "--broker", AMQP_URL, "--log-level", log_level],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def fixed_plan(stages: list[str], node: str, resolution: str = "source", fps: float = 0, quality: int = 85) -> dict:
    return {
        "video_conf": {"resolution": resolution, "fps": fps, "quality": quality},
        "flow_mapping": {s: {"node": node, "node_role": "cloud", "grade": None} for s in stages},
        "planner": "bench", "reason": "fixed by the benchmark",
    }


class ArrivalClock:
    """Wall times at which the aggregator received each frame, per job (hooked in front of
    the runtime's on_frame, on the result-consumer thread)."""

    def __init__(self, server) -> None:
        self.times: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        consumer = server.runtime.result_consumer
        inner = consumer.on_frame

        def on_frame(env):
            now = time.monotonic()
            with self._lock:
                self.times.setdefault(env.job, []).append(now)
            inner(env)

        consumer.on_frame = on_frame

    def fps(self, job: str, skip: int = 0) -> float:
        """Steady-state rate: frames after the first `skip` arrivals over the time they took."""
        with self._lock:
            t = self.times.get(job, [])[skip:]
        if len(t) < 2:
            return float("nan")
        return (len(t) - 1) / (t[-1] - t[0])


@contextmanager
def rabbit_tracker(node: str, *, serve_http: bool = False, workers: tuple = (), **settings_kw) -> Iterator[tuple]:
    """A cloud tracker (store, aggregator, generators) on RabbitMQ with this run's own queues;
    yields (server, tmpdir); afterwards stops `workers` (before the queues go, or a worker
    would declare its queue again) and deletes the queues."""
    from tracker.server import TrackerServer

    tmp = Path(tempfile.mkdtemp(prefix="vdag-bench-"))
    settings = bench_settings(tmp, node, **settings_kw)
    server = TrackerServer(settings, pace=0.0, backpressure="block", serve_http=serve_http,
                           scheduler_interval_s=None).start()
    try:
        yield server, tmp
    finally:
        server.stop()
        for proc in workers:
            stop_process(proc)
        delete_queues(*node_queues(node))


def run_job(server, source: str, stages: list[dict], plan: dict, *, pace: float = 0.0,
            backpressure: str = "block", timeout: float = 600.0) -> tuple[str, dict]:
    """Submit a job with a fixed plan through the API, wait until it ends; (uid, job json)."""
    server.runtime.pace, server.runtime.backpressure = pace, backpressure
    (uid,) = submit_jobs(server, source, stages, plan)
    wait_job(server, uid, timeout)
    return uid, server.app.test_client().get(f"/api/v1/jobs/{uid}").get_json()


def submit_jobs(server, source: str, stages: list[dict], plan: dict, n: int = 1) -> list[str]:
    """`n` jobs of one source and fixed plan, submitted at once through the API; their uids."""
    client = server.app.test_client()
    uids = []
    for _ in range(n):
        resp = client.post("/api/v1/jobs", json={"source": source, "stages": stages, "plan": plan})
        if resp.status_code != 201:
            raise RuntimeError(f"job rejected: {resp.get_json()}")
        uids.append(resp.get_json()["uid"])
    return uids


def bench_main(name: str, what: str, run: Callable[[], dict]) -> int:
    """A bench run on its own: prerequisites checked, `run()` timed, its result written to
    bench/results/<name>.json and printed as a table."""
    missing = missing_prerequisite()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    t0 = time.monotonic()
    result = {"machine": machine(), **run()}
    result["wall_s"] = round(time.monotonic() - t0, 1)
    path = write_json(f"{name}.json", result, RESULTS_DIR / f"{name}.json")
    print_table(f"vdag {what} bench on {result['machine']}",
                [(k, v) for k, v in result.items() if isinstance(v, (int, float, str)) and k != "machine"])
    print(f"wrote {path}")
    return 0


def wait_job(server, uid: str, timeout: float = 600.0) -> None:
    """Wait on the store, not the API: a GET of the job view every 50 ms cost the tracker
    process a third of a core, which the measurement would then charge to the pipeline."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = str(getattr(server.store.get_job(uid).state, "value", server.store.get_job(uid).state))
        if state in TERMINAL:
            return
        time.sleep(0.2)
    raise RuntimeError(f"job {uid} still {state} after {timeout}s")


# -- CPU accounting: where a frame's CPU time goes, per process ---------------------------
def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (a prefork worker's pool children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rabbit_pids() -> list[int]:
    """The local broker's Erlang VM, when it runs on this host and is visible."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "beam.smp":
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


class CpuMeter:
    """CPU seconds used by named groups of processes between start() and stop()."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._t0: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: sum(_proc_cpu_s(p) for p in pids) for name, pids in self.groups.items()}

    def __enter__(self) -> "CpuMeter":
        self._t0 = self._now()
        return self

    def __exit__(self, *exc) -> None:
        now = self._now()
        self.used = {k: now[k] - self._t0[k] for k in now}

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        return {k: round(v / max(frames, 1) * 1e3, 2) for k, v in self.used.items()}
