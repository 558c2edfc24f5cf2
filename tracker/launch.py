"""`vdag tracker`: start a cloud or an edge tracker, or a whole pseudo-distributed system.

  cluster, cloud:  vdag tracker --side cloud --mode cluster --cloud-ip 10.0.0.1 \\
                       --broker amqp://guest:guest@10.0.0.1:5672// --db postgresql+psycopg://...
  cluster, edge:   vdag tracker --side edge --mode cluster --cloud-ip 10.0.0.1 --node edge-1
                   vdag worker --node edge-1 --concurrency 2
  pseudo:          vdag tracker --mode pseudo     (cloud + edge-1 + edge-2 + one worker each)

The seed's flags work too: `--side=c|e`, `--cloud_ip`, `--serv_cloud_addr=IP:PORT`.
Heavy modules (torch via the services, Flask) are imported by the role that needs them,
so `vdag --help` stays fast.
"""
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

from services.settings import Settings, settings_from_env

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_API_PORT = 5000
DEFAULT_VIDEO_PORT = 5100
STOP_TIMEOUT_S = 15.0


def add_tracker_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `vdag tracker` beyond the seed's (added to the parser in tracker.cli)."""
    p.add_argument("--cloud-port", type=int, default=None,
                   help="edge: the cloud API's port (default: the --serv_cloud_addr port, else 5000)")
    p.add_argument("--host", default=None, help="cloud: address the API listens on "
                   "(default 0.0.0.0 in cluster mode, 127.0.0.1 in pseudo mode)")
    p.add_argument("--advertise-ip", default=None,
                   help="edge: the IP the cloud lists for this node (default: the address that reaches the cloud)")
    p.add_argument("--planner", default="bayes",
                   help="cloud: bayes | golden | pid | greedy, or module:callable returning a planner")
    p.add_argument("--scheduler-interval", type=float, default=2.0, help="cloud: seconds between planning rounds")
    p.add_argument("--node-timeout", type=float, default=None,
                   help="cloud: seconds without a heartbeat before a node is marked down (default 4)")
    p.add_argument("--pace", type=float, default=1.0, help="generators: 1 = real time for files, 0 = as fast as possible")
    p.add_argument("--no-elastic", dest="elastic", action="store_false",
                   help="cloud: do not grow/shrink worker pools")
    p.add_argument("--max-concurrency", type=int, default=None, help="cloud: elasticity's upper bound per node")
    p.add_argument("--edges", type=int, default=2, help="pseudo: how many edge nodes")
    p.add_argument("--prefix", default="", help="pseudo: prefix of the edge node names (edge-1 -> PREFIXedge-1)")
    p.add_argument("--worker-concurrency", type=int, default=1, help="pseudo: pool processes of each node's worker")
    p.add_argument("--data-dir", default=None, help="SQLite file and pseudo-mode logs (default ./var)")
    p.add_argument("--state-file", default=None, help="pseudo: where the supervisor writes its children (JSON)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one role of a pseudo system


def run_tracker(args: argparse.Namespace) -> int:
    if args.mode == "pseudo" and not args.child:
        if args.side != "cloud":
            print("pseudo mode starts the whole system from the cloud side: use --side cloud (or --side=c)",
                  file=sys.stderr)
            return 2
        return PseudoSupervisor(args).run()
    settings = tracker_settings(args)
    if settings.side == "cloud":
        return run_cloud(settings, args)
    return run_edge(settings, args)


# -- settings --------------------------------------------------------------------------------


def _cloud_ip_and_port(args: argparse.Namespace) -> tuple[str | None, int | None]:
    ip, port = args.cloud_ip, args.cloud_port
    if args.serv_cloud_addr:  # the seed's "ip:port" of the cloud's services
        host, _, p = args.serv_cloud_addr.rpartition(":")
        if not host:
            host, p = p, ""
        ip = ip or host
        if port is None and p.isdigit() and args.side == "edge":
            port = int(p)
    return ip, port


def tracker_settings(args: argparse.Namespace, environ: dict | None = None) -> Settings:
    env = os.environ if environ is None else environ
    cloud_ip, _ = _cloud_ip_and_port(args)
    cloud_ip = cloud_ip or env.get("VDAG_CLOUD_IP") or "127.0.0.1"
    data_dir = Path(args.data_dir or env.get("VDAG_DATA_DIR") or "var")
    broker = args.broker or env.get("VDAG_BROKER_URL") or f"amqp://guest:guest@{cloud_ip}:5672//"
    db = args.db or env.get("VDAG_DATABASE_URL") or f"sqlite:///{data_dir}/vdag.db"
    default_node = "cloud" if args.side == "cloud" else f"edge-{socket.gethostname()}"
    return settings_from_env(
        env, broker_url=broker, database_url=db, node=args.node or env.get("VDAG_NODE") or default_node,
        side=args.side, mode=args.mode, cloud_ip=cloud_ip, data_dir=data_dir,
        api_port=args.api_port if args.api_port is not None else env.get("VDAG_API_PORT", DEFAULT_API_PORT),
        video_port=args.video_port if args.video_port is not None else env.get("VDAG_VIDEO_PORT", DEFAULT_VIDEO_PORT),
        service_port=getattr(args, "service_port", None),
    )


def resolve_planner(spec: str):
    """A planner factory from a name (tracker.scheduling.PLANNERS) or "module:callable"."""
    if ":" in spec:
        import importlib

        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)
    from tracker.scheduling import planner_factory

    return planner_factory(spec)


def _wait_for_signal() -> int:
    """Block until SIGINT or SIGTERM; returns the signal number."""
    got = threading.Event()
    received: list[int] = []

    def handler(signum, _frame):
        received.append(signum)
        got.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    while not got.wait(1.0):
        pass
    return received[0]


# -- one role --------------------------------------------------------------------------------


def run_cloud(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.elasticity import ElasticPolicy
    from tracker.heartbeat import NODE_TIMEOUT_S
    from tracker.server import TrackerServer

    host = args.host or ("127.0.0.1" if settings.mode == "pseudo" else "0.0.0.0")
    elastic = None
    if args.elastic and not settings.broker_url.startswith("memory://"):
        cap = args.max_concurrency or max(2, os.cpu_count() or 1)
        elastic = ElasticPolicy(max_concurrency=cap)
    server = TrackerServer(
        settings, in_process_workers=args.workers, planner_factory=resolve_planner(args.planner),
        pace=args.pace, host=host, scheduler_interval_s=args.scheduler_interval,
        node_timeout_s=args.node_timeout or NODE_TIMEOUT_S, elasticity=elastic,
    )
    server.start()
    print(f"vdag cloud tracker {settings.node}: API {server.api_url}  services {server.service_url}  "
          f"metrics {server.api_url}/metrics  "
          f"broker {settings.broker_url.split('@')[-1]}", flush=True)
    sig = _wait_for_signal()
    log.info("signal %d: stopping", sig)
    server.stop()
    return 0


def run_edge(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.edge import CloudClient, EdgeAgent, describe_sources, local_ip_towards
    from tracker.nodes import default_video_sources

    _, cloud_port = _cloud_ip_and_port(args)
    cloud_url = f"http://{settings.cloud_ip}:{cloud_port or DEFAULT_API_PORT}"
    agent = EdgeAgent(
        settings, CloudClient(cloud_url, token=settings.api_token),
        advertise_ip=args.advertise_ip or local_ip_towards(settings.cloud_ip, cloud_port or DEFAULT_API_PORT),
        video_sources=describe_sources(default_video_sources()), pace=args.pace,
    )
    stopping = threading.Event()

    def handler(signum, _frame):
        stopping.set()
        agent.stop_event.set()  # also ends a registration that is still retrying

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    agent.start()
    print(f"vdag edge tracker {settings.node}: cloud {cloud_url}, queue vdag.node.{settings.node}", flush=True)
    while not stopping.wait(1.0):
        pass
    agent.stop()
    return 0


# -- pseudo mode -----------------------------------------------------------------------------


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

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        settings = tracker_settings(args)
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
