"""A cluster-mode cloud tracker with no in-process worker stays small: it never imports torch
or ultralytics (the models live in `vdag worker` processes), and it stops cleanly."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from bench.common import delete_queues, node_queues
from tests.support.pipeline import AMQP_URL, ROOT, rabbit_up

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not rabbit_up(), reason="RabbitMQ not reachable")
def test_a_cloud_tracker_does_not_load_the_models(tmp_path: Path):
    node = f"footprint-{tmp_path.name[-6:]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracker.cli", "tracker", "--side", "cloud", "--mode", "cluster", "--api-port", "0",
         "--video-port", "0", "--service-port", "0", "--broker", AMQP_URL, "--db", f"sqlite:///{tmp_path}/c.db",
         "--data-dir", str(tmp_path), "--node", node],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:  # logs, then "vdag cloud tracker ...: API http://0.0.0.0:PORT ..."
            seen.append(line)
            if "API http://0.0.0.0:" in line:
                break
        else:
            raise AssertionError("".join(seen)[-3000:])
        port = int(line.split("API http://0.0.0.0:")[1].split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nodes", timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())
        time.sleep(3)  # node upkeep has sent heartbeats with this host's resources (GPU included)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "ultralytics" not in maps
        rss_kb = int(next(ln for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                          if ln.startswith("VmRSS")).split()[1])
        assert rss_kb < 400_000, f"cloud tracker RSS {rss_kb / 1024:.0f} MB at rest"
        (front,) = [p for p in psutil.Process(proc.pid).children() if "tracker.web.front" in " ".join(p.cmdline())]
        front_maps = Path(f"/proc/{front.pid}/maps").read_text()
        assert "libtorch" not in front_maps and "ultralytics" not in front_maps
        assert front.memory_info().rss < 300_000_000, f"API front RSS {front.memory_info().rss >> 20} MB at rest"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        delete_queues(*node_queues(node), url=AMQP_URL)
    assert proc.returncode == 0, out[-2000:]
    assert not front.is_running(), "the API front outlived its tracker"
    assert "Traceback" not in out, out[-3000:]
