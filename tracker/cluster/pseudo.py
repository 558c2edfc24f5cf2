"""Pseudo mode: a cloud and N edges on one host, each a separate `vdag tracker` process with
its own queue and a `vdag worker`, started, watched and stopped by one supervisor
(`vdag tracker --mode pseudo`)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from services.settings import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 15.0


@dataclass
class Child:
    name: str  # e.g. "tracker:edge-1", "worker:edge-1"
    node: str
    kind: str  # tracker | worker
    argv: list[str]
    log: str
    pid: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies without stopping them (Linux)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class PseudoSupervisor:
    """A cloud and N edges on one host, each a separate process with its own queue and a
    worker: `vdag tracker --mode pseudo`. Ctrl-C / SIGTERM stops them all (edges first,
    then the cloud, then the workers). The children are listed in the state file."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.data_dir = Path(settings.data_dir)
        self.broker = settings.broker_url
        self.database = settings.database_url
        self.cloud = args.node or "cloud"
        self.edges = [f"{args.prefix}edge-{i}" for i in range(1, args.edges + 1)]
        self.api_port = settings.api_port or free_port()
        self.video_port = settings.video_port or free_port()
        self.service_port = settings.service_port or free_port()
        self.state_file = Path(args.state_file) if args.state_file else self.data_dir / "pseudo.json"
        self.children: list[Child] = []
        self.procs: dict[str, subprocess.Popen] = {}

    def _common(self) -> list[str]:
        a = self.args
        out = ["--mode", "pseudo", "--child", "--broker", self.broker, "--log-level", a.log_level,
               "--pace", str(a.pace), "--data-dir", str(self.data_dir)]
        return out

    def plan_children(self) -> list[Child]:
        a, py = self.args, [sys.executable, "-m", "tracker.cli"]
        logs = self.data_dir / "pseudo-logs"
        cloud_argv = py + ["tracker", "--side", "cloud", "--node", self.cloud, "--db", self.database,
                           "--api-port", str(self.api_port), "--video-port", str(self.video_port),
                           "--service-port", str(self.service_port),
                           "--planner", a.planner, "--scheduler-interval", str(a.scheduler_interval)] + self._common()
        if a.node_timeout:
            cloud_argv += ["--node-timeout", str(a.node_timeout)]
        if not a.elastic:
            cloud_argv.append("--no-elastic")
        if a.max_concurrency:
            cloud_argv += ["--max-concurrency", str(a.max_concurrency)]
        children = [Child(f"tracker:{self.cloud}", self.cloud, "tracker", cloud_argv, str(logs / f"tracker-{self.cloud}.log"))]
        for i, edge in enumerate(self.edges, start=1):
            argv = py + ["tracker", "--side", "edge", "--node", edge, "--cloud-ip", "127.0.0.1",
                         "--cloud-port", str(self.api_port), "--advertise-ip", "127.0.0.1",
                         "--api-port", str(self.api_port + i)] + self._common()
            children.append(Child(f"tracker:{edge}", edge, "tracker", argv, str(logs / f"tracker-{edge}.log")))
        for node in [self.cloud, *self.edges]:
            argv = py + ["worker", "--node", node, "--concurrency", str(a.worker_concurrency),
                         "--broker", self.broker, "--log-level", a.log_level]
            children.append(Child(f"worker:{node}", node, "worker", argv, str(logs / f"worker-{node}.log")))
        return children

    def start(self) -> None:
        self.children = self.plan_children()
        Path(self.children[0].log).parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        for child in self.children:
            with open(child.log, "ab") as out:
                proc = subprocess.Popen(child.argv, cwd=os.getcwd(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            child.pid = proc.pid
            self.procs[child.name] = proc
            log.info("started %s (pid %d), log %s", child.name, proc.pid, child.log)
        self.write_state()

    def write_state(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        state = {"api_url": f"http://127.0.0.1:{self.api_port}", "video_port": self.video_port,
                 "service_port": self.service_port,
                 "supervisor_pid": os.getpid(), "cloud": self.cloud, "edges": self.edges,
                 "broker": self.broker.split("@")[-1], "database": self.database,
                 "children": [asdict(c) | {"argv": c.argv} for c in self.children]}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def stop(self) -> None:
        # Edges first (their generators stop sending), then the cloud, then the workers.
        order = ([c for c in self.children if c.kind == "tracker" and c.node != self.cloud]
                 + [c for c in self.children if c.kind == "tracker" and c.node == self.cloud]
                 + [c for c in self.children if c.kind == "worker"])
        for child in order:
            proc = self.procs[child.name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in order:
            proc = self.procs[child.name]
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s: killed", child.name, STOP_TIMEOUT_S)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
            log.info("%s stopped (rc %s)", child.name, proc.returncode)

    def run(self) -> int:
        stop = threading.Event()

        def handler(signum, _frame):
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)
        self.start()
        print(f"vdag pseudo mode: cloud {self.cloud} API http://127.0.0.1:{self.api_port}, edges "
              f"{', '.join(self.edges)}; logs in {self.data_dir / 'pseudo-logs'}; Ctrl-C stops all", flush=True)
        reported: set[str] = set()
        while not stop.wait(0.5):
            for name, proc in self.procs.items():
                if proc.poll() is not None and name not in reported:
                    reported.add(name)
                    log.warning("%s exited with rc %s", name, proc.returncode)
            if len(reported) == len(self.procs):
                log.error("every child exited; stopping")
                break
        self.stop()
        return 0
