"""The video knobs a plan sets, and how each is really applied to frames."""
from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Height -> width at 16:9; a source with another aspect keeps its own aspect.
RESOLUTION_HEIGHTS: dict[str, int] = {"360p": 360, "480p": 480, "720p": 720, "1080p": 1080}
Resolution = Literal["360p", "480p", "720p", "1080p", "source"]
GRADES: tuple[str, ...] = ("n", "s", "m", "l", "x")
# Frame rates a plan may ask for (below the source's own); the planner, the profiling segments
# and the benches all use these.
FPS_LEVELS: tuple[float, ...] = (1, 2, 5, 10, 15, 20, 30)
QUALITY_LEVELS: tuple[int, ...] = (60, 75, 90)  # JPEG qualities a plan may ask for


def resolutions_below(src_h: int) -> list[str]:
    """The resolution classes smaller than a source of height src_h, then the source itself."""
    return [r for r, h in RESOLUTION_HEIGHTS.items() if h < src_h] + ["source"]


class VideoConf(BaseModel):
    """Seed-003 video_conf plus the knobs it lacked (JPEG quality). Every field is applied."""

    model_config = ConfigDict(extra="forbid")

    resolution: Resolution = Field("source", description="output height class, capped at the source")
    fps: float = Field(0, ge=0, le=240, description="target frames/s by skipping on source time; 0 = every frame")
    nskip: int = Field(0, ge=0, le=1000, description="seed-003: after each kept frame skip nskip frames")
    quality: int = Field(85, ge=10, le=100, description="JPEG quality of the enqueued frame")
    encoder: Literal["JPEG", "H264"] = Field("JPEG", description="accepted for seed compatibility; frames are JPEG")
    ntracking: int = Field(
        0, ge=0, le=32,
        description="seed-003: after each detected frame the next ntracking kept frames get tracked boxes",
    )

    @model_validator(mode="after")
    def _one_rate_knob(self) -> "VideoConf":
        if self.fps and self.nskip:
            raise ValueError("set either fps or nskip, not both")
        return self


def target_size(resolution: str, src_w: int, src_h: int) -> tuple[int, int]:
    """(width, height) for a resolution class, keeping aspect, never upscaling."""
    if resolution == "source" or resolution not in RESOLUTION_HEIGHTS:
        return src_w, src_h
    h = min(RESOLUTION_HEIGHTS[resolution], src_h)
    w = int(round(src_w * h / src_h / 2)) * 2
    return max(w, 2), h


def resize_to(frame: np.ndarray, resolution: str) -> np.ndarray:
    h, w = frame.shape[:2]
    tw, th = target_size(resolution, w, h)
    if (tw, th) == (w, h):
        return frame
    # Area averaging only where bilinear would alias (shrinking by more than 2x); for milder
    # shrinking bilinear looks the same and costs a fifth (0.8 vs 4.1 ms for 768x576 -> 480p).
    interpolation = cv2.INTER_AREA if th * 2 < h else cv2.INTER_LINEAR
    return cv2.resize(frame, (tw, th), interpolation=interpolation)


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise ValueError("not a decodable image")
    return frame


class FrameSkipper:
    """Decides per source frame whether to keep it, on source time (fps) or count (nskip).

    Source time rather than wall time, so a file read faster than real time still yields
    the requested rate of *video* time; changing the conf takes effect at the next frame.
    """

    def __init__(self) -> None:
        self._next_keep_ts: float | None = None
        self._skipped_since_keep = 0
        self._kept_any = False

    def keep(self, conf: VideoConf, source_ts: float) -> bool:
        if conf.nskip:
            if not self._kept_any or self._skipped_since_keep >= conf.nskip:
                self._kept_any, self._skipped_since_keep = True, 0
                return True
            self._skipped_since_keep += 1
            return False
        if not conf.fps:
            self._kept_any = True
            return True
        period = 1.0 / conf.fps
        # Tolerance for float drift, so 10 fps from a 10 fps source keeps every frame.
        if self._next_keep_ts is None or source_ts >= self._next_keep_ts - 1e-6:
            base = source_ts if self._next_keep_ts is None or source_ts - self._next_keep_ts > period else self._next_keep_ts
            self._next_keep_ts = base + period
            self._kept_any = True
            return True
        return False
