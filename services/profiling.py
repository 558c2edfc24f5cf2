"""Score candidate configs against the golden one on a short segment of the stream (Chameleon).

A segment is `L` consecutive source frames, sent near-lossless (SEGMENT_QUALITY). The golden
config (the detector at source resolution) runs on every one of them; each candidate
(resolution, JPEG quality) sees the frames as the pipeline would deliver them, resized and
JPEG-coded at that quality, runs the detector on the first frame only, and the tracker
carries its boxes along the frames the candidate would keep. Quality is scored, not assumed:
on vtest.avi the person detector's F1 against the uncompressed frame is 0.98 at q90 and 0.95
at q60-75. Every candidate (resolution, frame step, ntracking) whose group of one detected frame
and its tracked frames fits in the segment is then scored with the frame-level F1 users see:
on *every* source frame, the boxes shown for it (detected, tracked, or carried forward from
the last kept frame) against the golden boxes. Cost: L golden detections, one detection per
resolution and quality and a few optical-flow steps — about L + 5 detector runs per segment.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from services.accuracy import f1_score
from services.tracking import to_gray, track_detections
from services.video_conf import decode_jpeg, encode_jpeg, resize_to

Detections = list[dict[str, Any]]
NTRACKING_LEVELS: tuple[int, ...] = (0, 1, 2, 4)
# The golden frames' coding: q100 keeps the detector within ~0.013 F1 of the raw frame (q90:
# 0.017 lower again), at ~300 kB a 768x576 frame; PNG would be exact at 640 kB and 27 ms each.
SEGMENT_QUALITY = 100


def frame_level_f1(shown: Sequence[Detections], golden: Sequence[Detections]) -> float:
    """Mean F1 over frames of what each frame shows against its golden boxes (one definition,
    used by profiling, the benches and the simulator's truth)."""
    if not golden:
        return 1.0
    return float(np.mean([f1_score(list(s), list(g)) for s, g in zip(shown, golden)]))


def shown_boxes(kept: Sequence[Detections], step: int, n_frames: int) -> list[Detections]:
    """Per source frame, the boxes of the last kept frame at or before it (kept frames every
    `step` source frames, starting at frame 0)."""
    return [kept[min(j // step, len(kept) - 1)] for j in range(n_frames)]


def step_options(src_fps: float, fps_levels: Sequence[float]) -> list[int]:
    """Source-frame steps of the planner's fps levels (1 = every frame)."""
    return sorted({max(1, int(round(src_fps / f))) for f in fps_levels if f > 0})


def score_segment(
    frames: Sequence[np.ndarray],
    detect: Callable[[np.ndarray], Detections],
    golden: Sequence[Detections],
    resolutions: Sequence[str],
    steps: Sequence[int],
    ntracking_levels: Sequence[int] = NTRACKING_LEVELS,
    qualities: Sequence[int | None] = (None,),
) -> list[dict[str, Any]]:
    """Rows {resolution, height, quality, step, ntracking, f1, frames} for every candidate that
    fits; quality None scores the frames as given. Each resolution is scored at the last (best)
    quality; the largest one (the last) at every quality too, where the job's quality slope is
    learned: one detector run per extra quality, not one per resolution and quality (the
    child's CPU is what a busy node leaves idle)."""
    n = len(frames)
    max_k = max(ntracking_levels)
    rows = []
    for res in resolutions:
        resized = [resize_to(f, res) for f in frames]
        for q in qualities if res == resolutions[-1] else qualities[-1:]:
            coded: dict[int, np.ndarray] = {}  # source index -> the frame as the candidate gets it

            def frame(j: int) -> np.ndarray:
                if j not in coded:
                    coded[j] = resized[j] if q is None else decode_jpeg(encode_jpeg(resized[j], q))
                return coded[j]

            first = detect(frame(0))
            grays: dict[int, np.ndarray] = {}
            for step in steps:
                chain = [first]  # boxes on kept frames 0, step, 2*step, ... by tracking frame to frame
                for i in range(1, max_k + 1):
                    a, b = (i - 1) * step, i * step
                    if b >= n:
                        break
                    ga = grays.setdefault(a, to_gray(frame(a)))
                    gb = grays.setdefault(b, to_gray(frame(b)))
                    chain.append(track_detections(ga, gb, chain[-1]))
                for k in ntracking_levels:
                    span = step * (k + 1)
                    if span > n or k >= len(chain):
                        continue
                    f1 = frame_level_f1(shown_boxes(chain[: k + 1], step, span), golden[:span])
                    rows.append({"resolution": res, "height": int(resized[0].shape[0]), "quality": q, "step": step,
                                 "ntracking": k, "f1": round(f1, 4), "frames": span})
    return rows


__all__ = ["NTRACKING_LEVELS", "SEGMENT_QUALITY", "frame_level_f1", "score_segment", "shown_boxes", "step_options"]
