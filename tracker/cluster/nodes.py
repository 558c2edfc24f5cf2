"""This node's own registration: what it is, which sources it offers, what it has."""
from __future__ import annotations

import os
from pathlib import Path

import psutil

from services.settings import Settings
from services.sources import SYNTHETIC_PREFIX
from tracker.cluster.heartbeat import gpu_info

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
SYNTHETIC_DEFAULT = SYNTHETIC_PREFIX + "640x360@15/450"


def gpu_present() -> bool:
    return bool(gpu_info()["gpu"])


def local_resources(check_gpu: bool = False) -> dict:
    mem = psutil.virtual_memory()
    return {
        "cpu_count": os.cpu_count() or 1,
        "cpu_ratio": round(psutil.cpu_percent(interval=None) / 100.0, 3),
        "mem_ratio": round(mem.percent / 100.0, 3),
        "mem_mb": mem.total >> 20,
        "gpu": gpu_present() if check_gpu else False,
    }


def default_video_sources() -> list[dict]:
    sources = [{"id": 0, "url": SYNTHETIC_DEFAULT, "type": "synthetic shapes"}]
    if VTEST.exists():
        sources.append({"id": 1, "url": str(VTEST), "type": "people indoor"})
    return sources


def register_local_node(store, settings: Settings, role: str | None = None, video_sources: list[dict] | None = None):
    role = role or settings.side
    return store.upsert_node(
        name=settings.node,
        role=role,
        ip=settings.cloud_ip if role == "cloud" else "127.0.0.1",
        address=f"{settings.cloud_ip if role == 'cloud' else '127.0.0.1'}:{settings.api_port}",
        video_sources=video_sources if video_sources is not None else default_video_sources(),
        services=[],
        resources=local_resources(),
    )
