"""This node's own registration: what it is, which sources it offers, what it has."""
from __future__ import annotations

from pathlib import Path

from services.settings import Settings
from services.sources import SYNTHETIC_PREFIX
from tracker.cluster.heartbeat import node_resources

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
SYNTHETIC_DEFAULT = SYNTHETIC_PREFIX + "640x360@15/450"


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
        resources=node_resources(check_gpu=False),
    )
