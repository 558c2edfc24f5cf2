"""The test harness's TCP proxy (bench/tcp_proxy.py): transparent until cut, refuses while cut,
and many short links never mix their bytes (each link closes its sockets only when both pipe
threads are done, so no thread reads a descriptor that a new link was given)."""
from __future__ import annotations

import socket
import threading

import pytest

from bench.tcp_proxy import TcpProxy


@pytest.fixture
def echo_server():
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()
    server.shutdown(socket.SHUT_RDWR)
    server.close()


def _round_trip(port: int, payload: bytes) -> bytes:
    """What comes back through the proxy: b"" when the link was refused (closed or reset)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(payload)
            while len(got) < len(payload) and (chunk := s.recv(65536)):
                got += chunk
        except ConnectionResetError:
            pass
    return got


def test_links_are_transparent_until_cut_and_refused_until_restored(echo_server):
    proxy = TcpProxy(echo_server)
    try:
        long_lived = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        long_lived.sendall(b"ping")
        assert long_lived.recv(16) == b"ping"
        proxy.cut()
        assert long_lived.recv(16) == b"", "a cut ends the links that were open"
        assert _round_trip(proxy.port, b"x") == b"", "a cut refuses new links"
        proxy.restore()
        assert _round_trip(proxy.port, b"back") == b"back"
    finally:
        proxy.close()


def test_many_short_links_keep_their_own_bytes(echo_server):
    proxy = TcpProxy(echo_server)
    errors: list[str] = []

    def client(n: int) -> None:
        for i in range(40):
            payload = f"{n}:{i}:".encode() * 50
            if (got := _round_trip(proxy.port, payload)) != payload:
                errors.append(f"client {n} link {i} got {got[:20]!r}")

    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        deadline = threading.Event()
        for _ in range(50):
            if proxy.links == 0:
                break
            deadline.wait(0.05)
        assert proxy.links == 0, "every closed link was released"
    finally:
        proxy.close()
