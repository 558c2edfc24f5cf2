"""A TCP proxy a test can cut and restore: a real network partition between the tracker and
a real server (PostgreSQL), without stopping the server that other tests share.

A link's two sockets are closed only after both of its pipe threads have finished: a thread
blocked in recv() on a socket that another thread closes is not woken on Linux, and the freed
descriptor number can be handed to the next accepted connection, whose bytes the stale thread
then steals (a connection that hangs on a healthy proxy). Ending a link is a shutdown(), which
wakes both threads; the last one out closes.
"""
from __future__ import annotations

import socket
import threading


class _Link:
    """One client <-> upstream pair and its two pipe threads."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self._running = 2
        self._lock = threading.Lock()

    def sever(self) -> None:
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pipe_done(self) -> bool:
        """Called by each pipe thread as it ends; True for the last one (which closes)."""
        self.sever()
        with self._lock:
            self._running -= 1
            if self._running:
                return False
        for s in self.sockets:
            s.close()
        return True


class TcpProxy:
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self._open = True
        self._links: set[_Link] = set()
        self._lock = threading.Lock()  # _open and _links together: a cut misses no new link
        self._closed = False
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def cut(self) -> None:
        """Drop every connection and refuse new ones until `restore`."""
        with self._lock:
            self._open = False
            links, self._links = self._links, set()
        for link in links:
            link.sever()

    def restore(self) -> None:
        with self._lock:
            self._open = True

    @property
    def links(self) -> int:
        with self._lock:
            return len(self._links)

    def close(self) -> None:
        self._closed = True
        self.cut()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread (close alone does not)
        except OSError:
            pass
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = None
            try:
                if self._open:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)  # the 5 s is for connecting: an idle link must not time out
            except OSError:
                pass
            link = _Link(client, upstream) if upstream else None
            with self._lock:
                if link and self._open:
                    self._links.add(link)
                else:
                    link = None
            if link is None:
                for s in (client, upstream):
                    if s is not None:
                        s.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, link), name="tcp-proxy-pipe", daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, link: _Link) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            link.pipe_done()
            with self._lock:
                self._links.discard(link)
