"""What the viewer tests of both tiers share: the real app on a SQLite store with one running
job, a real HTTP server for it, and frames to publish."""
from __future__ import annotations

import http.client
import io
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from flask import Flask
from werkzeug.serving import make_server

from scheduler.interface import Plan, StageMapping
from services.settings import Settings
from services.video_conf import VideoConf
from tracker.store import Store
from tracker.store.jobs import JobState, dag_unchecked
from tracker.web.app import create_app
from tracker.web.viewer.hub import ViewerHub

JOB = "job-1"
FAST = dict(VIEWER_POLL_S=0.2, VIEWER_CHECK_S=0.3, VIEWER_KEEPALIVE_S=0.5)


def fake_jpeg(seq: int, size: int = 20_000) -> bytes:
    """Distinct bytes shaped like a JPEG (SOI ... EOI); the stream does not decode them."""
    body = (f"frame-{seq:06d}-".encode() * (size // 13 + 1))[:size]
    return b"\xff\xd8" + body + b"\xff\xd9"


def real_app(tmp_path: Path, hub: ViewerHub, uid: str = JOB, **config: Any) -> tuple[Flask, Store]:
    """tracker.web.app.create_app over a real SQLite store holding one EXEC job with a plan."""
    store = Store(f"sqlite:///{tmp_path / 'viewer.db'}")
    dag = dag_unchecked({"stages": [
        {"name": "detect", "service": "yolo_detect", "params": {}, "inputs": {}},
        {"name": "count", "service": "count", "params": {}, "inputs": {}},
    ]})
    store.create_job(dag=dag, source="synthetic:test", uid=uid, name="corridor", node="edge-7")
    store.add_plan(uid, Plan(
        video_conf=VideoConf(resolution="480p", fps=10, quality=80),
        flow_mapping={"detect": StageMapping(node="edge-7", node_role="edge", grade="n"),
                      "count": StageMapping(node="cloud", node_role="cloud")},
        planner="bayes", reason="p95 delay 0.4 s within 1.0 s",
    ))
    store.transition(uid, JobState.EXEC, "planned")
    app = create_app(Settings(database_url=store.database_url), store=store, hub=hub)
    app.config.update(FAST, **config)
    return app, store


@contextmanager
def serve(app: Flask) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def wait_until(pred, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def png_jpeg(seq: int) -> bytes:
    from PIL import Image, ImageDraw

    hue = (seq * 47) % 256
    img = Image.new("RGB", (320, 180), (hue, 255 - hue, (hue * 3) % 256))
    ImageDraw.Draw(img).rectangle([10 + (seq * 13) % 250, 60, 60 + (seq * 13) % 250, 120], fill=(0, 0, 0))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def parse_parts(buf: bytearray) -> Iterator[tuple[dict[str, str], bytes]]:
    """Pop complete multipart parts (headers, body) off the front of `buf`."""
    while True:
        start = buf.find(b"--frame\r\n")
        if start < 0:
            return
        head_end = buf.find(b"\r\n\r\n", start)
        if head_end < 0:
            return
        lines = buf[start + 9 : head_end].decode("ascii").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        n = int(headers["content-length"])
        body_start = head_end + 4
        if len(buf) < body_start + n + 2:
            return
        body = bytes(buf[body_start : body_start + n])
        assert buf[body_start + n : body_start + n + 2] == b"\r\n"
        del buf[: body_start + n + 2]
        yield headers, body


class StreamClient(threading.Thread):
    """Reads an MJPEG stream over a real socket and records the sequence numbers."""

    def __init__(self, port: int, path: str, stop_after: int | None = None) -> None:
        super().__init__(daemon=True, name=f"client-{path}")
        self.port, self.path, self.stop_after = port, path, stop_after
        self.seqs: list[int] = []
        self.parts = 0
        self.status: int | None = None
        self.content_type = ""
        self.ended_cleanly = False
        self.connected = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request("GET", self.path)
            resp = conn.getresponse()
            self.status = resp.status
            self.content_type = resp.getheader("Content-Type", "")
            self.connected.set()
            buf = bytearray()
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    self.ended_cleanly = True
                    return
                buf += chunk
                for headers, _body in parse_parts(buf):
                    self.parts += 1
                    if "x-frame-seq" in headers:
                        self.seqs.append(int(headers["x-frame-seq"]))
                    if self.stop_after is not None and self.parts >= self.stop_after:
                        return  # walk away mid-stream
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.connected.set()
            conn.close()
