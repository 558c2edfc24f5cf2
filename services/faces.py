"""Seed-003 face services: Haar-cascade face detection, and eye-based face alignment.

Cascades are loaded once per thread: a CascadeClassifier keeps scratch buffers inside,
so one instance must not run detections on two threads at once.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.registry import Service, ServiceContext, register
from services.render import draw_banner
from services.video_conf import encode_jpeg

FACE_CASCADE = "haarcascade_frontalface_default.xml"
EYE_CASCADE = "haarcascade_eye.xml"
# Eyes in a small face are below the eye cascade's 20 px window: search a rescaled crop.
EYE_SEARCH_WIDTH = 160
UP_COLOR, TILTED_COLOR, NO_EYES_COLOR = (0, 200, 0), (0, 140, 255), (160, 160, 160)

_local = threading.local()


def cascade_dirs() -> list[Path]:
    dirs = [Path("/usr/share/opencv4/haarcascades"), Path("/usr/share/opencv/haarcascades")]
    data = getattr(cv2, "data", None)
    if data is not None and getattr(data, "haarcascades", None):
        dirs.append(Path(data.haarcascades))
    return dirs


def load_cascade(name: str):
    """A CascadeClassifier for `name`, cached per thread."""
    cache = _local.__dict__.setdefault("cascades", {})
    if name in cache:
        return cache[name]
    if not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeError("this OpenCV has no CascadeClassifier (OpenCV 5 moved it to contrib); install opencv-python<5")
    for directory in cascade_dirs():
        path = directory / name
        if path.is_file():
            classifier = cv2.CascadeClassifier(str(path))
            if classifier.empty():
                raise RuntimeError(f"could not load cascade {path}")
            cache[name] = classifier
            return classifier
    raise RuntimeError(
        f"Haar cascade {name} not found in {', '.join(map(str, cascade_dirs()))}; install the opencv-data package"
    )


def squash(level_weight: float) -> float:
    """Cascade level weight -> 0..1. Monotone, 0.5 at a weight of 0; not a calibrated probability."""
    return round(1.0 / (1.0 + math.exp(-level_weight / 2.0)), 4)


class FaceDetectionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale_factor: float = Field(1.1, ge=1.01, le=2.0, description="image pyramid step; larger is faster, misses more")
    min_neighbors: int = Field(5, ge=0, le=50, description="overlapping hits needed to keep a face")
    min_size: int = Field(30, ge=8, le=2048, description="smallest face side in pixels")


def detect_faces(frame: np.ndarray, params: FaceDetectionParams) -> tuple[list[list[int]], list[float]]:
    gray = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    rects, _levels, weights = load_cascade(FACE_CASCADE).detectMultiScale3(
        gray,
        scaleFactor=params.scale_factor,
        minNeighbors=params.min_neighbors,
        minSize=(params.min_size, params.min_size),
        outputRejectLevels=True,
    )
    bbox = [[int(x), int(y), int(x + w), int(y + h)] for x, y, w, h in rects]
    prob = [squash(float(np.ravel(w)[0])) for w in weights] if len(bbox) else []
    return bbox, prob


def run_face_detection(frame, inputs: Mapping[str, Any], params: FaceDetectionParams, ctx: ServiceContext) -> dict:
    if frame is None:
        raise ValueError("face_detection needs a decoded image")
    bbox, prob = detect_faces(frame, params)
    return {"bbox": bbox, "prob": prob}


class FaceAlignmentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tolerance_deg: float = Field(15.0, ge=0.0, le=90.0, description="eye-line tilt up to which a face counts as up")
    min_prob: float = Field(0.0, ge=0.0, le=1.0, description="skip faces whose detection prob is below this")
    quality: int = Field(80, ge=10, le=100, description="JPEG quality of the rendered frame")


@dataclass(frozen=True)
class FaceAlignment:
    box: tuple[int, int, int, int]
    eyes: tuple[tuple[float, float], tuple[float, float]] | None  # frame pixels, left eye first
    angle_deg: float | None  # eye-line tilt; rotating the face by it levels the eyes

    def is_up(self, tolerance_deg: float) -> bool:
        return self.angle_deg is not None and abs(self.angle_deg) <= tolerance_deg


def _parse_boxes(bbox: Any, prob: Any) -> tuple[list[tuple[int, int, int, int]], list[float] | None]:
    if not isinstance(bbox, list):
        raise ValueError(f"bbox must be a list of [x1, y1, x2, y2], got {type(bbox).__name__}")
    boxes = []
    for b in bbox:
        if not isinstance(b, (list, tuple)) or len(b) != 4:
            raise ValueError(f"each bbox must be [x1, y1, x2, y2], got {b!r}")
        boxes.append(tuple(int(round(float(v))) for v in b))
    if prob is None:
        return boxes, None
    if not isinstance(prob, list) or len(prob) != len(boxes):
        raise ValueError("prob must be a list as long as bbox")
    return boxes, [float(p) for p in prob]


def _eye_pair(eyes: np.ndarray, face_w: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The two biggest eye candidates far enough apart to be a left and a right eye."""
    centres = sorted(
        ((x + w / 2.0, y + h / 2.0, w * h) for x, y, w, h in eyes), key=lambda c: c[2], reverse=True
    )[:4]
    best = None
    for i in range(len(centres)):
        for j in range(i + 1, len(centres)):
            a, b = centres[i], centres[j]
            if abs(a[0] - b[0]) < 0.2 * face_w:
                continue
            if best is None or a[2] + b[2] > best[0]:
                best = (a[2] + b[2], a, b)
    if best is None:
        return None
    left, right = sorted(best[1:], key=lambda c: c[0])
    return np.array(left[:2]), np.array(right[:2])


def align_face(gray: np.ndarray, box: tuple[int, int, int, int]) -> FaceAlignment:
    h, w = gray.shape[:2]
    x1, y1, x2, y2 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
    if x2 - x1 < 8 or y2 - y1 < 8:
        return FaceAlignment((x1, y1, x2, y2), None, None)
    scale = EYE_SEARCH_WIDTH / (x2 - x1)
    crop = cv2.equalizeHist(cv2.resize(gray[y1:y2, x1:x2], None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR))
    upper = crop[: int(crop.shape[0] * 0.6)]  # eyes sit in the upper part of a frontal face
    eyes = load_cascade(EYE_CASCADE).detectMultiScale(upper, scaleFactor=1.05, minNeighbors=3, minSize=(16, 16))
    pair = _eye_pair(eyes, EYE_SEARCH_WIDTH) if len(eyes) >= 2 else None
    if pair is None:
        return FaceAlignment((x1, y1, x2, y2), None, None)
    left, right = (p / scale + (x1, y1) for p in pair)
    angle = math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))
    return FaceAlignment((x1, y1, x2, y2), (tuple(left), tuple(right)), angle)


def aligned_crop(frame: np.ndarray, face: FaceAlignment, size: int) -> np.ndarray:
    """The face rotated about the midpoint of its eyes so that the eye line is level."""
    x1, y1, x2, y2 = face.box
    if face.eyes is None:
        crop = frame[y1:y2, x1:x2]
    else:
        (lx, ly), (rx, ry) = face.eyes
        centre = ((lx + rx) / 2.0, (ly + ry) / 2.0)
        rotation = cv2.getRotationMatrix2D(centre, face.angle_deg, 1.0)
        rotated = cv2.warpAffine(frame, rotation, (frame.shape[1], frame.shape[0]), borderMode=cv2.BORDER_REPLICATE)
        crop = rotated[y1:y2, x1:x2]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def render_alignments(frame: np.ndarray, faces: list[FaceAlignment], tolerance_deg: float) -> np.ndarray:
    image = frame.copy()
    h, w = image.shape[:2]
    thumb = max(24, min(96, h // 5))
    for i, face in enumerate(faces):
        color = NO_EYES_COLOR if face.eyes is None else UP_COLOR if face.is_up(tolerance_deg) else TILTED_COLOR
        x1, y1, x2, y2 = face.box
        cv2.rectangle(image, (x1, y1), (x2, y2), color, 2)
        if face.eyes is not None:
            (lx, ly), (rx, ry) = face.eyes
            cv2.line(image, (int(lx), int(ly)), (int(rx), int(ry)), color, 2, cv2.LINE_AA)
            cv2.putText(image, f"{face.angle_deg:+.0f} deg", (x1, min(h - 4, y2 + 16)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
        # Aligned faces along the bottom edge, as many as fit.
        left = i * (thumb + 4)
        if left + thumb <= w and thumb <= h and x2 > x1 and y2 > y1:
            image[h - thumb:h, left:left + thumb] = aligned_crop(frame, face, thumb)
    return image


def run_face_alignment(frame, inputs: Mapping[str, Any], params: FaceAlignmentParams, ctx: ServiceContext) -> dict:
    if frame is None:
        raise ValueError("face_alignment needs a decoded image")
    boxes, prob = _parse_boxes(inputs["bbox"], inputs.get("prob"))
    if prob is not None:
        boxes = [b for b, p in zip(boxes, prob) if p >= params.min_prob]
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    faces = [align_face(gray, b) for b in boxes]
    up = sum(f.is_up(params.tolerance_deg) for f in faces)
    count_result = {"up": up, "total": len(faces)}
    image = render_alignments(frame, faces, params.tolerance_deg)
    draw_banner(image, f"up: {up}  total: {len(faces)}")
    return {"image": encode_jpeg(image, params.quality), "count_result": count_result}


register(Service(
    name="face_detection",
    run=run_face_detection,
    inputs={"image": True},
    outputs=("bbox", "prob"),
    types={"image": "jpeg", "bbox": "face_boxes", "prob": "scores"},
    params_model=FaceDetectionParams,
    description="seed-003 service: Haar-cascade frontal faces; bbox in pixels, prob a 0..1 score",
))

register(Service(
    name="face_alignment",
    run=run_face_alignment,
    inputs={"image": True, "bbox": True, "prob": False},
    outputs=("image", "count_result"),
    types={"image": "jpeg", "bbox": "face_boxes", "prob": "scores", "count_result": "count_result"},
    params_model=FaceAlignmentParams,
    description="seed-003 service: level each face by its eyes; counts faces whose eyes are level",
))
