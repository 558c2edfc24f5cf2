"""A URL source is opened at submit (issue 10, item 7): one that serves video is a 201 with its
size and rate, one that refuses or never answers is a 422 naming `source`, within the timeout."""
from __future__ import annotations

import functools
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from services.settings import Settings
from tracker.runtime.job_control import RecordedEffects
from tracker.web.app import create_app

STAGES = [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}}]
TIMEOUT_S = 1.5


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_videos(tmp_path):
    """A real HTTP server on this machine serving one MJPG clip."""
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()
    (tmp_path / "zeros.avi").write_bytes(bytes(4096))  # named like a video, holds none
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(module_db_url, store, tmp_path):
    settings = Settings(database_url=module_db_url, allowed_video_dirs=(tmp_path,), url_probe_timeout_s=TIMEOUT_S)
    return create_app(settings, store=store, effects=RecordedEffects()).test_client()


def submit(client, source: str):
    return client.post("/api/v1/jobs", json={"source": source, "stages": STAGES})


def test_a_url_that_serves_video_is_accepted_with_its_size_and_rate(client, http_videos):
    r = submit(client, f"{http_videos}/clip.avi")
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["source_info"] == {"width": 64, "height": 48, "fps": 10.0}


@pytest.mark.parametrize("path", ["missing.avi", "zeros.avi"])
def test_a_url_that_serves_no_video_is_a_422(client, http_videos, path):
    r = submit(client, f"{http_videos}/{path}")
    assert r.status_code == 422
    err = r.get_json()["error"]
    assert err["details"][0]["loc"] == ["source"] and "cannot be opened" in err["message"], err


def test_a_refused_connection_is_a_422_at_once(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again: nothing listens there
    t0 = time.monotonic()
    r = submit(client, f"rtsp://127.0.0.1:{port}/stream")
    assert r.status_code == 422 and "cannot be opened" in r.get_json()["error"]["message"]
    assert time.monotonic() - t0 < TIMEOUT_S


def test_a_url_that_never_answers_is_a_422_after_the_timeout(client):
    with socket.socket() as silent:        # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        t0 = time.monotonic()
        r = submit(client, f"http://127.0.0.1:{silent.getsockname()[1]}/camera.mjpg")
        took = time.monotonic() - t0
    assert r.status_code == 422, r.get_json()
    assert TIMEOUT_S * 0.8 <= took <= TIMEOUT_S + 1.5, took
