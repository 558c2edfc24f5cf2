"""`vdag`: one command for every role.

  vdag up [SOURCE]                 embedded default: SQLite + in-process broker and worker
  vdag tracker --side cloud|edge   a cloud or edge tracker (cluster / pseudo mode)
  vdag worker --node NAME          a Celery worker on that node's queue
  vdag export [WEIGHTS...]         export models to the fastest runtime ahead of first use
  vdag db upgrade                  migrate the job store
"""
from __future__ import annotations

import argparse
import logging
import sys

from services.runtimes import RUNTIMES
from services.settings import settings_from_env
from tracker.cli.tracker_cmd import add_tracker_arguments

log = logging.getLogger("vdag")

_SIDES = {"c": "cloud", "cloud": "cloud", "e": "edge", "edge": "edge"}


def _side(value: str) -> str:
    try:
        return _SIDES[value]
    except KeyError:
        raise argparse.ArgumentTypeError("side must be cloud|edge (or the seed's c|e)") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="Celery broker URL (VDAG_BROKER_URL)")
    p.add_argument("--db", help="SQLAlchemy database URL (VDAG_DATABASE_URL)")
    p.add_argument("--node", help="this node's name (VDAG_NODE)")
    p.add_argument("--log-level", default="INFO")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdag", description="Adaptive video-analytics DAG jobs")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the main job on the embedded default (no servers needed)")
    up.add_argument("source", nargs="?", help="video file, RTSP/HTTP URL or webcam index; default: vtest.avi from opencv-doc")
    up.add_argument("--pipeline", choices=("people", "probe", "faces"), default="people",
                    help="people: person detection -> count -> render (default)")
    up.add_argument("--delay", type=float, default=1.0, help="delay constraint, seconds per frame")
    up.add_argument("--accuracy", type=float, default=0.0)
    # One worker thread: torch already uses every core for one frame, and a second thread
    # would only queue behind the model's lock.
    up.add_argument("--workers", type=int, default=1, help="in-process worker threads")
    up.add_argument("--log-file", default="var/vdag.log", help="where logs go while the live table shows")
    up.add_argument("--api-port", type=int, default=None)
    up.add_argument("--video-port", type=int, default=None)
    up.add_argument("--service-port", type=int, default=None, help="the seed's service API (default 5500)")
    up.add_argument("--exit-when-done", action="store_true", help="stop when the video ends")
    up.add_argument("--fast", action="store_true", help="read the file as fast as possible instead of real time")
    _common(up)

    pr = sub.add_parser("profile", help="time each DNN service x grade x resolution on this node (< 1 min)")
    pr.add_argument("video", nargs="?", default="/usr/share/doc/opencv-doc/examples/data/vtest.avi",
                    help="frames to time on (default: vtest.avi from opencv-doc)")
    pr.add_argument("--device", default=None, help="cpu | cuda:0 | auto")
    pr.add_argument("--repeats", type=int, default=5, help="timed frames per case (median)")
    _common(pr)

    tr = sub.add_parser("tracker", help="a cloud or edge tracker")
    tr.add_argument("--side", type=_side, default="cloud")
    tr.add_argument("--mode", choices=("pseudo", "cluster", "embedded"), default="cluster")
    tr.add_argument("--cloud-ip", "--cloud_ip", dest="cloud_ip")
    tr.add_argument("--serv-cloud-addr", "--serv_cloud_addr", dest="serv_cloud_addr",
                    help="seed flag: cloud service address ip:port (its ip is used as the cloud ip)")
    tr.add_argument("--api-port", type=int)
    tr.add_argument("--video-port", type=int)
    tr.add_argument("--service-port", type=int, help="cloud: the seed's service API (default 5500)")
    tr.add_argument("--workers", type=int, default=0, help="in-process worker threads (pseudo/embedded)")
    add_tracker_arguments(tr)
    _common(tr)

    wk = sub.add_parser("worker", help="a Celery worker on a node's queue")
    wk.add_argument("--device", default=None, help="cpu | cuda:0 | auto")
    wk.add_argument("--runtime", choices=RUNTIMES, default=None,
                    help="what models run in (VDAG_RUNTIME); auto = the fastest this device has")
    wk.add_argument("--concurrency", type=int, default=1)
    wk.add_argument("--pool", default="prefork", choices=("prefork", "solo", "threads"))
    _common(wk)

    ex = sub.add_parser("export", help="export models to the fastest runtime ahead of first use")
    ex.add_argument("weights", nargs="*", help="grades, .pt paths or model .yaml names; default: the person detector")
    ex.add_argument("--runtime", choices=RUNTIMES, default="auto")
    ex.add_argument("--device", default=None, help="cpu | cuda:0 | auto")
    _common(ex)

    db = sub.add_parser("db", help="job store maintenance")
    db.add_argument("action", choices=("upgrade",))
    _common(db)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_file = getattr(args, "log_file", None)
    if log_file:
        from pathlib import Path

        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=args.log_level.upper(), filename=log_file,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "up":
        from tracker.cli.up import run_up

        return run_up(args)
    if args.command == "worker":
        from tasks.app import make_celery
        from tasks.worker import pool_torch_threads, run_worker

        settings = settings_from_env(broker_url=args.broker, node=args.node, device=args.device,
                                     database_url=args.db, runtime=args.runtime)
        if settings.torch_threads is None and args.pool == "prefork":
            settings = settings.model_copy(update={"torch_threads": pool_torch_threads(args.concurrency)})
        run_worker(make_celery(settings), settings.node, args.concurrency, args.pool, args.log_level.upper())
        return 0
    if args.command == "profile":
        from tracker.cli.profile_cmd import run_profile

        return run_profile(args)
    if args.command == "export":
        from tracker.cli.export_cmd import run_export

        return run_export(args)
    if args.command == "db":
        from tracker.store.migrate import upgrade

        settings = settings_from_env(database_url=args.db)
        upgrade(settings.database_url)
        print(f"job store at {settings.database_url} is at the latest revision")
        return 0
    if args.command == "tracker":
        from tracker.cli.tracker_cmd import run_tracker

        return run_tracker(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
