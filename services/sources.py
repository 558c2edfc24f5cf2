"""Video sources: a file, an RTSP/HTTP URL, a webcam index, or the bundled synthetic clip.

Every frame carries a source timestamp (seconds from stream start): video time for files,
so frame skipping is exact however fast the file is read; arrival time for live streams.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator, Protocol

import cv2
import numpy as np

SYNTHETIC_PREFIX = "synthetic://"


class SourceError(RuntimeError):
    """The source cannot be opened or read; the job fails with this message."""


@dataclass(frozen=True)
class SourceInfo:
    width: int
    height: int
    fps: float
    frame_count: int | None  # None for live streams
    live: bool


@dataclass(frozen=True)
class SourceFrame:
    index: int
    ts: float
    image: np.ndarray


class VideoSource(Protocol):
    info: SourceInfo

    def frames(self, start_ts: float = 0.0) -> Iterator[SourceFrame]: ...

    def close(self) -> None: ...


class OpenCVSource:
    """File, URL or webcam through cv2.VideoCapture."""

    def __init__(self, spec: str | int, live: bool, timeout_s: float | None = None) -> None:
        self._spec = spec
        if timeout_s and isinstance(spec, str):
            # FFmpeg's own open/read timeouts: a URL that never answers cannot hold a thread.
            ms = int(timeout_s * 1000)
            self._cap = cv2.VideoCapture(spec, cv2.CAP_FFMPEG,
                                         [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            self._cap = cv2.VideoCapture(spec)
        if not self._cap.isOpened():
            raise SourceError(f"cannot open video source {spec!r}")
        w = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and math.isfinite(fps) and 0 < fps < 1000 else 25.0
        if live and isinstance(spec, str) and spec.lower().startswith(("http://", "https://")) \
                and self._cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0:
            live = False  # a file served over HTTP, not a camera: video time, paced like a local file
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else None
        if w <= 0 or h <= 0:
            ok, first = self._cap.read()
            if not ok:
                raise SourceError(f"video source {spec!r} yields no frames")
            h, w = first.shape[:2]
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self.info = SourceInfo(w, h, fps, count if count and count > 0 else None, live)

    def frames(self, start_ts: float = 0.0) -> Iterator[SourceFrame]:
        index = 0
        if start_ts > 0 and not self.info.live:
            index = int(round(start_ts * self.info.fps))
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        t0 = time.monotonic()
        while True:
            ok, image = self._cap.read()
            if not ok:
                if index == 0:
                    raise SourceError(f"video source {self._spec!r} yields no frames")
                return
            ts = time.monotonic() - t0 if self.info.live else index / self.info.fps
            yield SourceFrame(index, ts, image)
            index += 1

    def close(self) -> None:
        self._cap.release()


class SyntheticSource:
    """A deterministic moving-shapes clip so the embedded default runs with no video at all.

    `synthetic://640x360@15/300` = size, fps, frame count.
    """

    def __init__(self, spec: str) -> None:
        body = spec[len(SYNTHETIC_PREFIX):] or "640x360@15/300"
        try:
            size, _, rest = body.partition("@")
            w, h = (int(v) for v in size.split("x"))
            fps_s, _, count_s = rest.partition("/")
            fps, count = float(fps_s or 15), int(count_s or 300)
        except ValueError:
            raise SourceError(f"bad synthetic source {spec!r}; use synthetic://WxH@FPS/COUNT") from None
        if not (16 <= w <= 3840 and 16 <= h <= 2160 and 0 < fps <= 120 and count > 0):
            raise SourceError(f"synthetic source {spec!r} out of range")
        self.info = SourceInfo(w, h, fps, count, live=False)

    def frames(self, start_ts: float = 0.0) -> Iterator[SourceFrame]:
        w, h = self.info.width, self.info.height
        first = int(round(start_ts * self.info.fps))
        for i in range(first, self.info.frame_count or 0):
            img = np.full((h, w, 3), (40, 30, 20), np.uint8)
            for k in range(3):
                phase = i / self.info.fps * (0.6 + 0.3 * k) + k * 2.1
                cx = int(w * (0.5 + 0.35 * math.sin(phase)))
                cy = int(h * (0.5 + 0.3 * math.cos(phase * 1.3)))
                # Person-sized upright boxes, so a detector has something plausible to chew on.
                cv2.rectangle(img, (cx - h // 16, cy - h // 6), (cx + h // 16, cy + h // 6), (60 + 60 * k, 180, 220 - 50 * k), -1)
                cv2.circle(img, (cx, cy - h // 5), h // 20, (200, 200, 230), -1)
            cv2.putText(img, f"vdag synthetic #{i}", (10, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
            yield SourceFrame(i, i / self.info.fps, img)

    def close(self) -> None:
        pass


def open_source(spec: str | int) -> VideoSource:
    """Open a source from a job's `source` field (already checked against the policy)."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return OpenCVSource(int(spec), live=True)
    if spec.startswith(SYNTHETIC_PREFIX):
        return SyntheticSource(spec)
    live = "://" in spec
    return OpenCVSource(spec, live=live)


def probe_source(spec: str | int, timeout_s: float | None = None) -> dict:
    """{width, height, fps, frame_count, live} of a source, opened and closed again; a URL
    must open (and show its first frame) within `timeout_s`."""
    if timeout_s and isinstance(spec, str) and "://" in spec and not spec.startswith(SYNTHETIC_PREFIX):
        source: VideoSource = OpenCVSource(spec, live=True, timeout_s=timeout_s)
    else:
        source = open_source(spec)
    try:
        i = source.info
        return {"width": i.width, "height": i.height, "fps": i.fps, "frame_count": i.frame_count, "live": i.live}
    finally:
        source.close()
