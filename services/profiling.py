"""Score candidate configs against the golden one on a short segment of the stream (Chameleon).

A segment is `L` consecutive source frames. The golden config (the detector at source
resolution) runs on every one of them; each candidate resolution runs the detector on the
first frame only, and the tracker carries its boxes along the frames the candidate would
keep. Every candidate (resolution, frame step, ntracking) whose group of one detected frame
and its tracked frames fits in the segment is then scored with the frame-level F1 users see:
on *every* source frame, the boxes shown for it (detected, tracked, or carried forward from
the last kept frame) against the golden boxes. Cost: L golden detections, one detection per
resolution and a few optical-flow steps — about L + 1 detector runs per segment.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from services.accuracy import f1_score
from services.tracking import to_gray, track_detections
from services.video_conf import resize_to

Detections = list[dict[str, Any]]
NTRACKING_LEVELS: tuple[int, ...] = (0, 1, 2, 4)


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
) -> list[dict[str, Any]]:
    """Rows {resolution, height, step, ntracking, f1, frames} for every candidate that fits."""
    n = len(frames)
    rows = []
    for res in resolutions:
        resized = [resize_to(f, res) for f in frames]
        first = detect(resized[0])
        grays: dict[int, np.ndarray] = {}
        for step in steps:
            chain = [first]  # boxes on kept frames 0, step, 2*step, ... by tracking frame to frame
            max_k = max(ntracking_levels)
            for i in range(1, max_k + 1):
                j = i * step
                if j >= n:
                    break
                a, b = (i - 1) * step, j
                ga = grays.setdefault(a, to_gray(resized[a]))
                gb = grays.setdefault(b, to_gray(resized[b]))
                chain.append(track_detections(ga, gb, chain[-1]))
            for k in ntracking_levels:
                span = step * (k + 1)
                if span > n or k >= len(chain):
                    continue
                kept = chain[: k + 1]
                f1 = frame_level_f1(shown_boxes(kept, step, span), golden[:span])
                rows.append({"resolution": res, "height": int(resized[0].shape[0]), "step": step,
                             "ntracking": k, "f1": round(f1, 4), "frames": span})
    return rows


__all__ = ["NTRACKING_LEVELS", "frame_level_f1", "score_segment", "shown_boxes", "step_options"]
