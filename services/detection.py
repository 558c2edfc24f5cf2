"""YOLO detection services: generic objects, people, and the seed's car_detection.

Every detector returns `detections`: [{"box": [x1, y1, x2, y2] normalised to the frame,
"cls": name, "conf": score}], so counting, rendering and the accuracy score work the same
whatever model produced them and whatever resolution the planner chose.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from services.models import LoadedModel, ModelCache, default_cache
from services.registry import Service, ServiceContext, register
from services.weights import check_weights_name, coco_names, trained_person_weights

Grade = Literal["n", "s", "m", "l", "x"]
Vehicle = Literal["car", "bus", "truck", "motorcycle", "bicycle"]
VEHICLES: tuple[str, ...] = ("car", "bus", "truck", "motorcycle", "bicycle")
# The trained person checkpoint labels people by posture; for counting, both are people.
PERSON_LABELS = frozenset({"person", "normal", "fall"})
MAX_IMGSZ = 1920


class _YoloParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(
        None, min_length=1, max_length=255,
        description=(
            "pins the model, so grade must not be set too: the bare file name of a .pt checkpoint in the "
            "workers' models directory (VDAG_MODELS_DIR), or a model config ultralytics ships, e.g. "
            "yolo11n.yaml (untrained)"
        ),
    )
    conf: float = Field(0.25, ge=0.0, le=1.0, description="minimum detection confidence")
    imgsz: int | None = Field(
        None, ge=32, le=MAX_IMGSZ, multiple_of=32,
        description="inference size of the longer side; default: the frame's longer side rounded up to 32",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_model(cls, data: Any) -> Any:
        # With weights pinned, a grade would be silently ignored, so say so instead. Before
        # the fields, so that this is the error reported even when the weights are also bad.
        if isinstance(data, Mapping) and data.get("grade") is not None and data.get("weights") is not None:
            raise ValueError("set either grade or weights, not both")
        return data

    @field_validator("weights")
    @classmethod
    def _weights_policy(cls, v: str | None) -> str | None:
        # Loading a .pt unpickles it: a job may only name one, never give a path. Whether the
        # file is in the models directory is checked on the worker that loads it.
        return None if v is None else check_weights_name(v)


class DetectionParams(_YoloParams):
    grade: Grade = Field("n", description="YOLO11 grade, n (fastest) to x (most accurate); the planner tunes it")
    classes: list[str] | None = Field(
        None, min_length=1, max_length=80, description="class names to keep (COCO names for grade models); all if omitted",
    )

    @field_validator("classes")
    @classmethod
    def _coco_classes(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        # With a custom checkpoint the names are only known once it is loaded (on the worker).
        if v and info.data.get("weights") is None:
            unknown = sorted(set(v) - set(coco_names().values()))
            if unknown:
                raise ValueError(f"unknown COCO class names {unknown}; e.g. person, car, bus, dog")
        return v


class PersonParams(_YoloParams):
    grade: Grade | None = Field(
        None, description="use YOLO11 of this grade (COCO 'person') instead of the trained person checkpoint",
    )


class CarParams(_YoloParams):
    grade: Grade = Field("n", description="YOLO11 grade, n (fastest) to x (most accurate); the planner tunes it")
    classes: list[Vehicle] = Field(list(VEHICLES), min_length=1, description="vehicle classes to detect and count")


def default_imgsz(frame: np.ndarray) -> int:
    """The frame's longer side rounded up to a multiple of 32, so a lower planned resolution
    really means less compute instead of being upscaled back to a fixed size."""
    longer = max(frame.shape[:2])
    return int(min(MAX_IMGSZ, max(32, math.ceil(longer / 32) * 32)))


def _cache(ctx: ServiceContext) -> ModelCache:
    return ctx.models if ctx.models is not None else default_cache()


def _need_frame(frame: np.ndarray | None, service: str) -> np.ndarray:
    if frame is None:
        raise ValueError(f"{service} needs a decoded image")
    return frame


def detect(
    frame: np.ndarray,
    model: LoadedModel,
    *,
    conf: float,
    imgsz: int | None,
    keep: set[str] | None = None,
    label: Callable[[str], str] = str,
) -> list[dict[str, Any]]:
    """Run one model on one BGR frame; `label` renames model classes, `keep` filters the renamed ones."""
    names = model.names
    class_ids = None
    if keep is not None:
        class_ids = sorted(i for i, n in names.items() if label(n) in keep)
        missing = keep - {label(names[i]) for i in class_ids}
        if missing:
            raise ValueError(
                f"model {model.weights} has no class {sorted(missing)}; it has {sorted(set(names.values()))[:20]}"
            )
    result = model.predict(frame, imgsz=imgsz or default_imgsz(frame), conf=conf, classes=class_ids)
    boxes = result.boxes
    xyxyn = boxes.xyxyn.cpu().numpy()
    cls = boxes.cls.cpu().numpy().astype(int)
    scores = boxes.conf.cpu().numpy()
    return [
        {"box": [round(float(v), 5) for v in np.clip(box, 0.0, 1.0)], "cls": label(names[c]), "conf": round(float(s), 4)}
        for box, c, s in zip(xyxyn, cls, scores)
    ]


def _person_label(name: str) -> str:
    return "person" if name.lower() in PERSON_LABELS else name


def _model(params: _YoloParams, ctx: ServiceContext, default: str) -> LoadedModel:
    """A job's own weights through the models-directory policy; `default` is trusted config."""
    if params.weights:
        return _cache(ctx).get_user(params.weights, ctx.device)
    return _cache(ctx).get(default, ctx.device)


def run_yolo_detection(frame, inputs: Mapping[str, Any], params: DetectionParams, ctx: ServiceContext) -> dict:
    frame = _need_frame(frame, "yolo_detection")
    model = _model(params, ctx, params.grade)
    keep = set(params.classes) if params.classes else None
    return {"detections": detect(frame, model, conf=params.conf, imgsz=params.imgsz, keep=keep)}


def person_weights(params: PersonParams, ctx: ServiceContext) -> str:
    """Without job weights: an explicit grade, then the configured or installed trained
    person detector, then YOLO11n (untrained when offline)."""
    return params.grade or ctx.person_weights or trained_person_weights() or "n"


def run_person_detection(frame, inputs: Mapping[str, Any], params: PersonParams, ctx: ServiceContext) -> dict:
    frame = _need_frame(frame, "person_detection")
    model = _model(params, ctx, person_weights(params, ctx))
    dets = detect(frame, model, conf=params.conf, imgsz=params.imgsz, keep={"person"}, label=_person_label)
    return {"detections": dets}


def run_car_detection(frame, inputs: Mapping[str, Any], params: CarParams, ctx: ServiceContext) -> dict:
    frame = _need_frame(frame, "car_detection")
    model = _model(params, ctx, params.grade)
    dets = detect(frame, model, conf=params.conf, imgsz=params.imgsz, keep=set(params.classes))
    counted = Counter(d["cls"] for d in dets)
    # Every requested class appears, zero included, so a viewer's display keeps stable keys.
    return {"detections": dets, "count_result": {c: counted.get(c, 0) for c in params.classes}}


register(Service(
    name="yolo_detection",
    run=run_yolo_detection,
    inputs={"image": True},
    outputs=("detections",),
    types={"image": "jpeg", "detections": "detections"},
    params_model=DetectionParams,
    description="YOLO11 object detection (COCO classes); boxes normalised to the frame",
    tunable_grade=True,
    aliases=("object_detection",),
))

register(Service(
    name="person_detection",
    run=run_person_detection,
    inputs={"image": True},
    outputs=("detections",),
    types={"image": "jpeg", "detections": "detections"},
    params_model=PersonParams,
    description="people only: the trained person checkpoint when installed, else YOLO11 'person'",
    # One trained checkpoint: the planner tunes its resolution, fps and node, not a grade
    # (the YOLO11 grades have no trained weights offline).
    tunable_grade=False,
))

register(Service(
    name="car_detection",
    run=run_car_detection,
    inputs={"image": True},
    outputs=("detections", "count_result"),
    types={"image": "jpeg", "detections": "detections", "count_result": "count_result"},
    params_model=CarParams,
    description="seed-003 service: YOLO11 limited to vehicles, with per-class counts",
    tunable_grade=True,
))
