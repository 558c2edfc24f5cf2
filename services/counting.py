"""object_count: per-class counts of the detections an upstream stage produced."""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.registry import Service, ServiceContext, register


class CountParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classes: list[str] | None = Field(None, min_length=1, max_length=80, description="count only these classes")
    min_conf: float = Field(0.0, ge=0.0, le=1.0, description="ignore detections below this confidence")
    line: list[float] | None = Field(
        None, min_length=4, max_length=4,
        description=("counting line x1, y1, x2, y2 in frame fractions (0-1): count_result then counts tracks "
                     "crossing it: up (to the left of its direction; a line drawn left to right: moving up), "
                     "total, and per class"),
    )

    @field_validator("line")
    @classmethod
    def _line_in_frame(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            if any(not 0.0 <= c <= 1.0 for c in v):
                raise ValueError("line coordinates are fractions of the frame, between 0 and 1")
            if (v[0], v[1]) == (v[2], v[3]):
                raise ValueError("line needs two different end points")
        return v


def count_detections(detections: Any, classes: list[str] | None = None, min_conf: float = 0.0) -> dict[str, int]:
    if not isinstance(detections, list):
        raise ValueError(f"detections must be a list, got {type(detections).__name__}")
    counted: Counter[str] = Counter()
    for det in detections:
        if not isinstance(det, Mapping) or "cls" not in det:
            raise ValueError("each detection must be a map with a 'cls' field")
        if float(det.get("conf", 1.0)) >= min_conf:
            counted[str(det["cls"])] += 1
    if classes:
        # Requested classes are always present, zero included, so consumers see stable keys.
        return {c: counted.get(c, 0) for c in classes}
    return dict(sorted(counted.items()))


def run_object_count(frame, inputs: Mapping[str, Any], params: CountParams, ctx: ServiceContext) -> dict:
    counts = count_detections(inputs["detections"], params.classes, params.min_conf)
    return {"counts": counts, "total": sum(counts.values())}


register(Service(
    name="object_count",
    run=run_object_count,
    inputs={"detections": True},
    outputs=("counts", "total"),
    types={"detections": "detections", "counts": "counts", "total": "number"},
    params_model=CountParams,
    description="count detections per class",
    image_input=None,
))
