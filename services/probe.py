"""`frame_probe`: decodes the frame and reports its size and mean brightness.

The cheapest real stage: the plumbing benchmark and smoke tests use it to measure the
pipeline itself, and it is a handy first stage for checking a camera feed."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from services.registry import EmptyParams, Service, ServiceContext, register


def _probe(frame: np.ndarray | None, inputs: Mapping[str, Any], params: EmptyParams, ctx: ServiceContext) -> dict:
    assert frame is not None
    return {"width": int(frame.shape[1]), "height": int(frame.shape[0]),
            "brightness": round(float(frame.mean()), 2)}


FRAME_PROBE = register(Service(
    name="frame_probe", run=_probe, inputs={"image": True}, outputs=("width", "height", "brightness"),
    types={"image": "jpeg", "width": "number", "height": "number", "brightness": "number"},
    description="decode the JPEG; report width, height and mean brightness",
))
