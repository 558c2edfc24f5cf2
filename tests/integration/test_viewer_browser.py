"""The job page in headless Chromium on the real app: live MJPEG, plan and stats from the JSON API."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.viewer import JOB, png_jpeg, real_app, serve, wait_until
from tracker.web.viewer.hub import ViewerHub


@pytest.fixture
def hub() -> ViewerHub:
    return ViewerHub()


@pytest.mark.browser
def test_browser_job_page_shows_live_video(chrome: Any, hub: ViewerHub, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    frames = [png_jpeg(i) for i in range(40)]
    stop = threading.Event()

    app, store = real_app(tmp_path, hub)

    def publisher() -> None:
        seq = 0
        while not stop.is_set():
            hub.publish(JOB, seq, frames[seq % len(frames)])
            if seq % 10 == 0:
                store.update_stats(JOB, {"frames_published": seq})
            seq += 1
            time.sleep(0.1)

    with serve(app) as port:
        pub = threading.Thread(target=publisher, daemon=True)
        pub.start()
        try:
            chrome.get(f"http://127.0.0.1:{port}/jobs/{JOB}")
            img = chrome.find_element(By.ID, "live")
            WebDriverWait(chrome, 10).until(
                lambda d: d.execute_script("return arguments[0].naturalWidth", img) == 320
            )
            shots = []
            for _ in range(3):
                shots.append(img.screenshot_as_png)
                time.sleep(1.0)
            assert len(set(shots)) >= 2, "the <img> did not change while frames were published"
            # Plan and stats come from the JSON API, refreshed by JS.
            WebDriverWait(chrome, 5).until(lambda d: "edge-7" in d.find_element(By.ID, "plan").text)
            assert "480p" in chrome.find_element(By.ID, "plan").text
            WebDriverWait(chrome, 5).until(lambda d: "updated" in d.find_element(By.ID, "stats-updated").text)
            frames_shown = lambda: chrome.find_element(By.ID, "stats").text  # noqa: E731
            first = frames_shown()
            WebDriverWait(chrome, 5).until(lambda d: frames_shown() != first)
            assert hub.subscriber_count(JOB) == 1
            chrome.get(f"http://127.0.0.1:{port}/jobs")
            assert JOB in chrome.find_element(By.ID, "jobs").text
            assert wait_until(lambda: hub.subscriber_count(JOB) == 0, 10), "page left, stream kept"
        finally:
            stop.set()
            pub.join(2)
