"""The tracker's HTTP servers: waitress, a production WSGI server (a pool of request threads
behind one event loop), not werkzeug's development server.

Tuned for what this API serves: short JSON polls and long MJPEG streams. Every part of a
stream is sent as soon as it is written (`send_bytes=1`; waitress would otherwise hold a
small JPEG back until 18 kB piled up); a viewer that stops reading blocks only its own
thread once 1 MiB is queued for it (`outbuf_high_watermark`), and its connection is closed
after `channel_timeout` without progress, which ends its stream (tracker.web.viewer.routes).
Each stream holds a request thread while it runs: `threads` bounds viewers plus polls in flight.
"""
from __future__ import annotations

import logging
import threading

from waitress import create_server, wasyncore

log = logging.getLogger(__name__)

HTTP_THREADS = 32
STREAM_BUFFER = 1 << 20
IDLE_CONNECTION_S = 30


class HttpServer:
    def __init__(self, app, host: str, port: int, name: str, threads: int = HTTP_THREADS) -> None:
        self._map: dict = {}
        self.server = create_server(app, map=self._map, host=host, port=port, threads=threads, ident="vdag",
                                    send_bytes=1, outbuf_high_watermark=STREAM_BUFFER,
                                    channel_timeout=IDLE_CONNECTION_S, connection_limit=max(100, 4 * threads),
                                    # whole seconds: waitress reads it with int(), and 0 is a busy loop
                                    # (0.2 here made every server spin a core); stop() pulls the trigger,
                                    # so the loop still ends at once
                                    asyncore_loop_timeout=1,
                                    expose_tracebacks=False)
        self.port = int(self.server.effective_port)  # waitress gives the port as text
        self.name = name
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self._stopped = False

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every connection, then let the request threads end.
        A second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)
        # Closed on the loop's own thread (a socket closed under its select() is EBADF there);
        # with the map empty, the loop returns.
        self.server.trigger.pull_trigger(lambda: wasyncore.close_all(self._map))
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("http server %s did not stop within %.0f s", self.name, timeout)
