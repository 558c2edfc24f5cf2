"""Smoke tests of the benchmarks: each runs in its tiniest mode and writes sane JSON.

They check that the benches work, not the numbers (the machine is shared); the full
runs are marked slow."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import ROOT, VTEST, rabbit_up

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc provides vtest.avi"),
    pytest.mark.skipif(not rabbit_up(), reason="RabbitMQ not reachable"),
]


def _run(module: str, out: Path, *flags: str, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", module, *flags, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _finite(data: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(data[key], (int, float)) and math.isfinite(data[key]), (key, data.get(key))


def test_pipeline_bench_tiny(tmp_path):
    data = _run("bench.pipeline", tmp_path / "pipeline.json", "--tiny", timeout=120)
    _finite(data, "inference_ratio", "plumbing_ratio", "added_latency_p50_ms", "added_latency_p99_ms", "frames")
    assert "cores" in data["machine"] and "torch" in data["machine"]
    assert 0 < data["inference_ratio"] < 3 and 0 < data["plumbing_ratio"] < 3
    assert 0 <= data["added_latency_p50_ms"] <= data["added_latency_p99_ms"] < 5000
    assert data["frames"] > 0 and data["latency_frames"] > 0


def test_api_bench_tiny(tmp_path):
    data = _run("bench.api", tmp_path / "api.json", "--tiny", timeout=120)
    _finite(data, "poll_p50_ms", "poll_p99_ms", "viewer_fps_loss", "viewer_frame_share_min")
    assert 0 < data["poll_p50_ms"] <= data["poll_p99_ms"] < 10_000
    assert data["poll_requests"] > 0 and data["poll_errors"] == 0
    assert 0 <= data["viewer_fps_loss"] <= 1 and 0 <= data["viewer_frame_share_min"] <= 1
    assert "cores" in data["machine"]


@pytest.mark.slow
def test_pipeline_bench_quick_with_sweep(tmp_path):
    data = _run("bench.pipeline", tmp_path / "pipeline.json", "--quick", "--sweep", timeout=900)
    assert len(data["sweep"]) == 6
    assert all("pipeline_fps" in row or "error" in row for row in data["sweep"])
