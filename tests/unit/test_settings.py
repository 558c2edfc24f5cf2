"""One configuration: services/settings.py reads VDAG_* (pydantic-settings), flags override,
mode-dependent defaults are written once, and no other module reads the environment."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from services.settings import Settings, settings_from_env
from tracker.cli.tracker_cmd import tracker_settings

ROOT = Path(__file__).resolve().parents[2]


def test_mode_dependent_defaults():
    embedded = Settings()
    assert (embedded.broker_url, embedded.database_url, embedded.node) == ("memory://", "sqlite:///var/vdag.db",
                                                                          "cloud")
    assert embedded.cors_origins == ("*",)
    cluster = Settings(mode="cluster", cloud_ip="10.0.0.1", data_dir=Path("/srv/vdag"))
    assert cluster.broker_url == "amqp://guest:guest@10.0.0.1:5672//"
    assert cluster.database_url == "sqlite:////srv/vdag/vdag.db" and cluster.cors_origins == ()
    edge = Settings(mode="cluster", side="edge")
    assert edge.node.startswith("edge-")


def test_environment_then_flags(monkeypatch):
    monkeypatch.setenv("VDAG_BROKER_URL", "amqp://u:p@rabbit:5672//")
    monkeypatch.setenv("VDAG_ALLOWED_VIDEO_DIRS", "/videos, /mnt/cams")
    monkeypatch.setenv("VDAG_MAX_IN_FLIGHT", "3")
    monkeypatch.setenv("VDAG_TORCH_THREADS", "2")
    s = settings_from_env(max_in_flight=None, node="edge-7")  # None = the flag was not given
    assert s.broker_url == "amqp://u:p@rabbit:5672//" and s.max_in_flight == 3 and s.torch_threads == 2
    assert s.allowed_video_dirs == (Path("/videos"), Path("/mnt/cams")) and s.node == "edge-7"
    assert settings_from_env(broker_url="memory://").broker_url == "memory://"
    monkeypatch.setenv("VDAG_MAX_IN_FLIGHT", "0")
    with pytest.raises(ValueError, match="max_in_flight"):
        settings_from_env()


def test_the_tracker_flags_and_the_seed_flags(monkeypatch):
    monkeypatch.setenv("VDAG_API_PORT", "6000")
    args = argparse.Namespace(broker=None, db=None, node=None, side="edge", mode="cluster", cloud_ip=None,
                              serv_cloud_addr="10.1.2.3:5000", data_dir=None, api_port=None, video_port=7100,
                              service_port=None, cloud_port=None)
    s = tracker_settings(args)
    assert s.cloud_ip == "10.1.2.3" and s.broker_url == "amqp://guest:guest@10.1.2.3:5672//"
    assert (s.api_port, s.video_port, s.side) == (6000, 7100, "edge")


def test_no_other_module_reads_the_environment():
    readers, read = [], 0
    for path in sorted(p for d in ("services", "tasks", "tracker", "scheduler") for p in (ROOT / d).rglob("*.py")):
        rel, read = path.relative_to(ROOT).as_posix(), read + 1
        for n, line in enumerate(path.read_text().splitlines(), 1):
            # Handing this process's environment to a child (pseudo mode) is not reading settings.
            if re.search(r"os\.environ(?!\.get\(\"PYTHONPATH\"\))|os\.getenv", line) and "**os.environ" not in line:
                readers.append(f"{rel}:{n}: {line.strip()}")
    assert read > 50, f"only {read} modules read: is ROOT the repository?"
    assert [r for r in readers if not r.startswith("services/settings.py")] == []
