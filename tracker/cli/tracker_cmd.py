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
import logging
import os
import signal
import sys
import threading

from services.settings import Settings, settings_from_env

log = logging.getLogger(__name__)

DEFAULT_API_PORT = 5000


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
        from tracker.cluster.pseudo import PseudoSupervisor

        return PseudoSupervisor(args, tracker_settings(args)).run()
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


def tracker_settings(args: argparse.Namespace) -> Settings:
    """The flags over the VDAG_* environment (services/settings.py fills in what neither gives)."""
    cloud_ip, _ = _cloud_ip_and_port(args)
    return settings_from_env(
        broker_url=args.broker, database_url=args.db, node=args.node, side=args.side, mode=args.mode,
        cloud_ip=cloud_ip, data_dir=args.data_dir, api_port=args.api_port, video_port=args.video_port,
        service_port=getattr(args, "service_port", None),
    )


def resolve_planner(spec: str):
    """A planner factory from a name (scheduler.registry.PLANNERS) or "module:callable"."""
    if ":" in spec:
        import importlib

        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)
    from scheduler.registry import planner_factory

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
    from tracker.cluster.elasticity import ElasticPolicy
    from tracker.cluster.heartbeat import NODE_TIMEOUT_S
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
    from tracker.cluster.edge import CloudClient, EdgeAgent, describe_sources, local_ip_towards
    from tracker.cluster.nodes import default_video_sources

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
