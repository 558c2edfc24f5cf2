"""The API front: a process of its own that owns the public API and video ports.

Why a process: the tracker core runs the generators, the aggregator and the planner in one
Python process; request threads there wait for its GIL behind the data plane, and polls
took tens of milliseconds at the p99 (bench/api.py). The front has its own GIL. It answers
result polls and MJPEG streams from what the core feeds it (tracker.web.front.feed) and
the store, and forwards every other request to the core (tracker.web.front.proxy). It is
the same Flask app as the core's, built by the same factory, over its own store handle.

Lifecycle: the core starts it with `ApiFront(...).start()` as `python -m tracker.web.front`
(a fresh interpreter: the core already runs threads, so no fork, and unlike multiprocessing's
spawn nothing re-imports the core's main module), hands it the settings over the pipe and
waits until it listens; it ends when the core says stop, or on its own when the pipe closes
because the core died, so no front outlives its core. A front that dies is started again
by the core's watchdog, on the same ports.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from dataclasses import dataclass

from services.settings import Settings
from tracker.store import Store
from tracker.store.recent_results import RecentResults
from tracker.web.app import create_app
from tracker.web.front.feed import FeedSender, MirroredHub, MirroredRecentResults, apply
from tracker.web.front.proxy import CoreProxy
from tracker.web.http_server import HttpServer
from tracker.web.viewer.hub import ViewerHub

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
BIND_RETRY_S = 10.0
WATCH_EVERY_S = 1.0


@dataclass(frozen=True)
class FrontPorts:
    api: int
    video: int


class ApiFront:
    """The core's handle on its front process, and the mirrored hub and results it feeds.

    Built before the runtime (which writes to `hub` and `recent`), started once the core's
    own HTTP server listens (the front forwards to it). A watchdog starts a new front when
    this one dies; the new one serves polls from the store until fresh results arrive."""

    def __init__(self, settings: Settings, host: str) -> None:
        self.settings, self.host = settings, host
        self.core_url = ""
        self.feed = FeedSender()  # until the front is up, calls are counted as dropped
        self.hub = MirroredHub(self.feed)
        self.recent = MirroredRecentResults(self.feed)
        self.process: subprocess.Popen | None = None
        self.ports: FrontPorts | None = None
        self.restarts = 0
        self._conn: Connection | None = None
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="vdag-front-watchdog", daemon=True)

    def start(self, core_url: str, timeout: float = START_TIMEOUT_S) -> "ApiFront":
        self.core_url = core_url
        self._spawn(timeout)
        self._watchdog.start()
        return self

    def _spawn(self, timeout: float) -> None:
        ours, theirs = socket.socketpair()
        conn = Connection(ours.detach())
        root = logging.getLogger()
        log_file = next((h.baseFilename for h in root.handlers if isinstance(h, logging.FileHandler)), None)
        process = subprocess.Popen(
            [sys.executable, "-m", "tracker.web.front", "--fd", str(theirs.fileno()), "--host", self.host,
             "--core-url", self.core_url, "--log-level", logging.getLevelName(root.getEffectiveLevel()),
             *(["--log-file", log_file] if log_file else [])],
            pass_fds=(theirs.fileno(),))
        theirs.close()  # the child holds its end; EOF on ours means it died
        try:
            conn.send(self.settings.model_dump(mode="json"))
            if not conn.poll(timeout):
                process.kill()
                raise RuntimeError(f"API front did not start within {timeout:.0f} s")
            ports = FrontPorts(*conn.recv())
        except (EOFError, OSError):
            conn.close()
            raise RuntimeError(f"API front exited at start (exit code {process.wait()}); see its log") from None
        self.process, self._conn, self.ports = process, conn, ports
        self.feed.attach(conn)
        log.info("API front (pid %d) on http://%s:%d, video on port %d; core on %s", process.pid, self.host,
                 ports.api, ports.video, self.core_url)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY_S):
            code = self.process.poll()
            if code is None:
                continue
            log.error("API front (pid %d) exited with code %s; starting a new one", self.process.pid, code)
            old = self._conn
            try:
                self._spawn(START_TIMEOUT_S)
                self.restarts += 1
            except RuntimeError:
                log.exception("API front restart failed; trying again in %.0f s", WATCH_EVERY_S)
            finally:
                old.close()
        log.info("API front watchdog stopped")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        self._stop.set()
        if self._watchdog.is_alive():
            self._watchdog.join(timeout)
        self.hub.close()
        self.feed.stop(timeout)  # everything queued is delivered, then the pipe closes
        if self._conn is not None:
            self._conn.close()
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("API front did not stop within %.0f s; terminating it", timeout)
            self.process.terminate()
            self.process.wait(timeout)
        log.info("API front stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tracker.web.front", description="vdag's API front process "
                                     "(started by a tracker core, not by hand)")
    parser.add_argument("--fd", type=int, required=True, help="this end of the core's pipe")
    parser.add_argument("--host", required=True)
    parser.add_argument("--core-url", required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-file", default=None, help="where the core logs (default: stderr)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, filename=args.log_file,
                        format="%(asctime)s %(levelname)s [api-front] %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the core stops us in order
    conn = Connection(args.fd)
    settings = Settings.model_validate(conn.recv())
    serve_front(settings, args.host, args.core_url, conn)


def serve_front(settings: Settings, host: str, core_url: str, conn: Connection) -> None:
    """Serve until the core closes the pipe."""
    store = Store(settings.database_url, migrate_schema=False)  # the core migrated it before starting us
    recent, hub = RecentResults(), ViewerHub()
    app = create_app(settings, store=store, hub=hub, recent=recent)
    CoreProxy(core_url).init_app(app)
    servers = [_bind(app, host, settings.api_port, "vdag-front-api")]
    if settings.video_port != settings.api_port:
        servers.append(_bind(app, host, settings.video_port, "vdag-front-video"))
    for server in servers:
        server.start()
    conn.send((servers[0].port, servers[-1].port))
    log.info("API front (pid %d) serving", os.getpid())
    try:
        _follow_feed(conn, recent, hub)
    finally:
        hub.close()
        for server in reversed(servers):
            server.stop()
        store.close()
        log.info("API front stopped")


def _bind(app, host: str, port: int, name: str) -> HttpServer:
    """The front of a core that was just killed may still hold the port for a moment: retry."""
    deadline = time.monotonic() + BIND_RETRY_S
    while True:
        try:
            return HttpServer(app, host, port, name)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            log.info("port %d still in use; retrying", port)
            time.sleep(0.25)


def _follow_feed(conn, recent, hub) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            log.info("the core closed the feed; the front stops")
            return
        try:
            apply(message, recent, hub)
        except Exception:  # noqa: BLE001 - one bad call must not end every stream
            log.exception("feed call failed")
