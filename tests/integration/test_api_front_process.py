"""The API front end to end on the embedded default: one public port, served by a process of
its own, in front of a tracker core running a real job; everything a client does goes over
HTTP to that port."""
from __future__ import annotations

import re
import threading
import time

import pytest
import requests

from bench.common import write_clip
from tests.support.pipeline import VTEST, fixed_plan, settings_for
from tracker.server import TrackerServer

pytestmark = pytest.mark.integration

STAGES = [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}},
          {"name": "render", "service": "render", "inputs": {"image": "generator.image"}}]
FRAMES = 60


@pytest.fixture
def fronted(tmp_path):
    server = TrackerServer(settings_for(tmp_path, "memory://"), in_process_workers=1, pace=0.5,
                           backpressure="block", serve_http=True, scheduler_interval_s=None).start()
    yield server
    server.stop()


def _watch(url: str, seqs: list[int], stop: threading.Event) -> None:
    header = re.compile(rb"X-Frame-Seq: (\d+)\r\n")
    with requests.get(url, stream=True, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        tail = b""
        for chunk in resp.iter_content(1 << 16):
            window = tail + chunk
            seqs.extend(int(m.group(1)) for m in header.finditer(window) if not seqs or int(m.group(1)) > seqs[-1])
            tail = window[-64:]
            if stop.is_set():
                return


@pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc provides vtest.avi")
def test_a_job_submitted_polled_and_watched_through_the_front(fronted, tmp_path):
    assert fronted.front is not None and fronted.front.process.poll() is None
    assert fronted.api_url != fronted.core_url
    api = fronted.api_url
    clip = write_clip(tmp_path / "people.avi", FRAMES)
    resp = requests.post(f"{api}/api/v1/jobs", json={"source": str(clip), "stages": STAGES,
                                                     "plan": fixed_plan(["probe", "render"], resolution="480p")},
                         timeout=30)
    assert resp.status_code == 201, resp.text  # forwarded to the core, which made the job
    uid = resp.json()["uid"]

    seqs: list[int] = []
    stop = threading.Event()
    viewer = threading.Thread(target=_watch, args=(f"{fronted.video_url}/user/video/{uid}", seqs, stop), daemon=True)
    viewer.start()
    polled: list[dict] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        page = requests.get(f"{api}/api/v1/jobs/{uid}/results",
                            params={"after_seq": polled[-1]["seq"] if polled else -1, "limit": 100}, timeout=10)
        assert page.status_code == 200
        polled += page.json()["items"]
        if requests.get(f"{api}/api/v1/jobs/{uid}", timeout=10).json()["state"] == "DONE" and len(polled) >= FRAMES:
            break
        time.sleep(0.2)
    stop.set()
    viewer.join(30)

    assert [r["seq"] for r in polled] == list(range(FRAMES)), "polls missed or repeated frames"
    assert all(r["outputs"]["probe"] for r in polled)
    assert fronted.store.result_count(uid) == FRAMES  # every frame served was stored
    seed = requests.get(f"{api}/user/sync_job_result/{uid}", timeout=10).json()
    assert seed["status"] == 0 and seed["result"]["appended_result"]
    assert seed["result"]["latest_result"]["plan"]["video_conf"]
    assert seqs == sorted(seqs) and len(seqs) >= 0.9 * (max(seqs) - min(seqs) + 1), seqs
    assert len(seqs) >= FRAMES // 2, f"the viewer saw {len(seqs)} of {FRAMES} frames"


def test_stopping_the_tracker_ends_its_front(fronted):
    front = fronted.front
    assert requests.get(f"{fronted.api_url}/api/v1/nodes", timeout=10).status_code == 200
    fronted.stop()
    assert front.process.poll() is not None
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fronted.api_url}/api/v1/nodes", timeout=5)
