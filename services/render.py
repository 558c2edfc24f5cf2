"""render: draw detections and a counts banner onto the frame, for the viewer."""
from __future__ import annotations

import zlib
from typing import Any, Mapping

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.registry import Service, ServiceContext, register
from services.video_conf import encode_jpeg

BANNER_BG = (32, 32, 32)
BANNER_FG = (255, 255, 255)


class RenderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quality: int = Field(80, ge=10, le=100, description="JPEG quality of the rendered frame")
    show_conf: bool = Field(True, description="append the confidence to each label")
    line_width: int | None = Field(None, ge=1, le=16, description="box line width; default scales with the frame")


def class_color(name: str) -> tuple[int, int, int]:
    """A colour per class name that is the same on every worker (unlike hash(), which is salted)."""
    from ultralytics.utils.plotting import colors

    return colors(zlib.crc32(name.encode()) % colors.n, True)


def banner_text(counts: Mapping[str, Any]) -> str:
    return "  ".join(f"{k}: {v}" for k, v in counts.items())


def draw_banner(image: np.ndarray, text: str) -> None:
    if not text:
        return
    h, w = image.shape[:2]
    scale = max(0.4, min(1.2, w / 1100))
    thickness = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(4, th // 2)
    cv2.rectangle(image, (0, 0), (min(w, tw + 2 * pad), th + base + 2 * pad), BANNER_BG, thickness=-1)
    cv2.putText(image, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, BANNER_FG, thickness, cv2.LINE_AA)


def draw_detections(image: np.ndarray, detections: list, show_conf: bool, line_width: int | None) -> np.ndarray:
    from ultralytics.utils.plotting import Annotator

    h, w = image.shape[:2]
    annotator = Annotator(image, line_width=line_width)
    for det in detections:
        x1, y1, x2, y2 = (float(v) for v in det["box"])
        name = str(det.get("cls", "?"))
        label = f"{name} {float(det['conf']):.2f}" if show_conf and "conf" in det else name
        annotator.box_label([x1 * w, y1 * h, x2 * w, y2 * h], label, color=class_color(name))
    return annotator.result()


def render(frame: np.ndarray, inputs: Mapping[str, Any], params: RenderParams) -> np.ndarray:
    # Annotator draws in place; the caller's frame may be reused (e.g. for profiling).
    image = np.ascontiguousarray(frame.copy())
    detections = inputs.get("detections") or []
    if not isinstance(detections, list):
        raise ValueError(f"detections must be a list, got {type(detections).__name__}")
    if detections:
        image = draw_detections(image, detections, params.show_conf, params.line_width)
    draw_banner(image, banner_text(_banner_counts(inputs, detections)))
    return image


def _banner_counts(inputs: Mapping[str, Any], detections: list) -> dict:
    merged: dict = {}
    for key in ("count_result", "counts"):  # a counting stage's counts win over a seed count_result
        value = inputs.get(key)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"{key} must be a map, got {type(value).__name__}")
        merged.update(value)
    if not merged:
        for det in detections:
            merged[det.get("cls", "?")] = merged.get(det.get("cls", "?"), 0) + 1
    return merged


def run_render(frame, inputs: Mapping[str, Any], params: RenderParams, ctx: ServiceContext) -> dict:
    if frame is None:
        raise ValueError("render needs a decoded image")
    return {"image": encode_jpeg(render(frame, inputs, params), params.quality)}


register(Service(
    name="render",
    run=run_render,
    inputs={"image": True, "detections": False, "counts": False, "count_result": False},
    outputs=("image",),
    types={"image": "jpeg", "detections": "detections", "counts": "counts", "count_result": "count_result"},
    params_model=RenderParams,
    description="draw boxes, labels and a counts banner; returns a JPEG",
))
