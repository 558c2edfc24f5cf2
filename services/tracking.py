"""Carry detections from a detected frame onto the frames after it, without the detector.

Seed semantics: after each detected frame the next `ntracking` kept frames get their boxes
from a tracker. Each kept frame travels as its own message, right away (a frame never waits
for the ones after it); the detector stage of a worker process keeps, per job, the last few
frames it saw and their boxes (`TrackStore`), and a tracked frame is tracked from the one
before it. A node's queue is FIFO, so a process that runs one task at a time has the frame
before; one that runs several (a threads pool) waits for it while it is in progress there;
when this process never got it (another process did, or it was dropped), the frame is
detected instead. Here that is sparse optical flow (`cv2.calcOpticalFlowPyrLK`, pyramidal
Lucas-Kanade) on corners inside each box, checked forward and backward; a box moves by the
median displacement of its good points and scales by the median ratio of their spread.
A box whose points are all lost keeps its place (it is carried forward, as a frame with no
fresh result is shown). Each tracked detection keeps the index of the detection it came
from (`src`), so identities assigned downstream follow it exactly.

Cost on 2 CPU cores: ~1-3 ms per 640x360 frame pair for a dozen boxes (bench/adaptive_real.py
reports tracked-box IoU against golden detections on the same frames).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

MAX_CORNERS_PER_BOX = 24
FB_MAX_ERR_PX = 1.0  # forward-backward error above which a point is not trusted
_LK = dict(winSize=(21, 21), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))


def to_gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def _box_points(gray: np.ndarray, box_px: np.ndarray) -> np.ndarray:
    """Corners inside the box (its inner 80 %, away from the background at the edges); a small
    grid when the box has too little texture for corners."""
    h, w = gray.shape
    x1, y1, x2, y2 = box_px
    mx, my = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
    ix1, iy1 = int(max(0, x1 + mx)), int(max(0, y1 + my))
    ix2, iy2 = int(min(w, x2 - mx)), int(min(h, y2 - my))
    if ix2 - ix1 < 3 or iy2 - iy1 < 3:
        return np.array([[(x1 + x2) / 2, (y1 + y2) / 2]], np.float32)
    corners = cv2.goodFeaturesToTrack(gray[iy1:iy2, ix1:ix2], MAX_CORNERS_PER_BOX, 0.01, 2)
    if corners is not None and len(corners) >= 4:
        return corners.reshape(-1, 2) + np.array([ix1, iy1], np.float32)
    gx, gy = np.meshgrid(np.linspace(ix1, ix2 - 1, 4), np.linspace(iy1, iy2 - 1, 4))
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def track_detections(prev: np.ndarray, nxt: np.ndarray, detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The detections of frame `prev` moved onto frame `nxt` (same size, BGR or gray)."""
    if not detections:
        return []
    g0, g1 = to_gray(prev), to_gray(nxt)
    h, w = g0.shape
    scale = np.array([w, h, w, h], np.float32)
    boxes = np.array([d["box"] for d in detections], np.float32) * scale
    points = [_box_points(g0, b) for b in boxes]
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(points)])
    p0 = np.concatenate(points).reshape(-1, 1, 2)
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(g0, g1, p0, None, **_LK)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(g1, g0, p1, None, **_LK)
    fb_err = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
    good = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb_err < FB_MAX_ERR_PX)
    p0, p1 = p0.reshape(-1, 2), p1.reshape(-1, 2)
    out = []
    for i, det in enumerate(detections):
        box = boxes[i].copy()
        sel = good & (owner == i)
        if sel.any():
            a, b = p0[sel], p1[sel]
            shift = np.median(b - a, axis=0)
            s = 1.0
            if len(a) >= 3:
                da = np.linalg.norm(a - a.mean(axis=0), axis=1)
                db = np.linalg.norm(b - b.mean(axis=0), axis=1)
                ok = da > 1.0
                if ok.sum() >= 3:
                    s = float(np.clip(np.median(db[ok] / da[ok]), 0.8, 1.25))
            cx, cy = (box[0] + box[2]) / 2 + shift[0], (box[1] + box[3]) / 2 + shift[1]
            hw, hh = s * (box[2] - box[0]) / 2, s * (box[3] - box[1]) / 2
            box = np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float32)
        norm = np.clip(box / scale, 0.0, 1.0)
        out.append({**det, "box": [round(float(v), 5) for v in norm]})
    return out


@dataclass
class _Seen:
    gray: np.ndarray
    detections: list[dict[str, Any]]


class TrackStore:
    """Per worker process: the last few frames and boxes of each job's detector stage (bounded
    LRU over jobs), and the frames this process is working on now.

    A pool that runs several tasks at once (threads, for cross-job batching) takes a job's
    detected frame and the frames tracked from it together: a tracked frame waits for its
    source frame when that one is in progress here (`begin` ... `end`), instead of finding it
    missing and running the detector again. A source frame in another process is not waited for.
    """

    def __init__(self, max_jobs: int = 64, per_job: int = 3, wait_s: float = 10.0) -> None:
        self.max_jobs, self.per_job, self.wait_s = max_jobs, per_job, wait_s
        self._seen: OrderedDict[tuple[str, str], OrderedDict[int, _Seen]] = OrderedDict()
        self._busy: set[tuple[str, str, int]] = set()
        self._changed = threading.Condition()

    def begin(self, job: str, stage: str, seq: int) -> None:
        """Frame `seq` is being detected or tracked in this process: frames tracked from it wait."""
        with self._changed:
            self._busy.add((job, stage, seq))

    def end(self, job: str, stage: str, seq: int) -> None:
        with self._changed:
            self._busy.discard((job, stage, seq))
            self._changed.notify_all()

    def _keep(self, job: str, stage: str, seq: int, seen: _Seen) -> None:
        with self._changed:
            frames = self._seen.setdefault((job, stage), OrderedDict())
            frames[seq] = seen
            while len(frames) > self.per_job:
                frames.popitem(last=False)
            self._seen.move_to_end((job, stage))
            while len(self._seen) > self.max_jobs:
                self._seen.popitem(last=False)

    def remember(self, job: str, stage: str, seq: int, frame: np.ndarray, detections: list[dict[str, Any]]) -> None:
        self._keep(job, stage, seq, _Seen(to_gray(frame), detections))

    def wait_for(self, job: str, stage: str, seq: int) -> float:
        """Wait (at most `wait_s`) while frame `seq` is in progress in this process; the seconds waited."""
        t0 = time.monotonic()
        with self._changed:
            self._changed.wait_for(lambda: (job, stage, seq) not in self._busy, timeout=self.wait_s)
        return time.monotonic() - t0

    def track(self, job: str, stage: str, track_from: int, seq: int, frame: np.ndarray) -> list[dict[str, Any]] | None:
        """The boxes of frame `track_from` moved onto `frame`, or None when this process has not
        seen that frame (the caller then detects)."""
        with self._changed:
            source = self._seen.get((job, stage), {}).get(track_from)
        if source is None or source.gray.shape != frame.shape[:2]:
            return None
        gray = to_gray(frame)
        moved = track_detections(source.gray, gray, source.detections)
        self._keep(job, stage, seq, _Seen(gray, moved))
        return moved

    def forget(self, job: str) -> None:
        with self._changed:
            for key in [k for k in self._seen if k[0] == job]:
                del self._seen[key]

    def __len__(self) -> int:
        with self._changed:
            return len(self._seen)


__all__ = ["TrackStore", "track_detections", "to_gray"]
