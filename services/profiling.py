"""Score candidate configs against the golden one on a short segment of the stream (Chameleon).

A segment is `L` consecutive source frames, sent near-lossless (SEGMENT_QUALITY). The golden
config (the detector at source resolution) runs on every one of them; each candidate
(resolution, JPEG quality) sees the frames as the pipeline would deliver them, resized and
JPEG-coded at that quality, runs the detector on a few frames of it, and the tracker
carries their boxes along the frames the candidate would keep. Quality is scored, not assumed:
on vtest.avi the person detector's F1 against the uncompressed frame is 0.98 at q90 and 0.95
at q60-75. Every candidate (resolution, frame step, ntracking) whose group of one detected frame
and its tracked frames fits in the segment is then scored with the frame-level F1 users see:
on *every* source frame, the boxes shown for it (detected, tracked, or carried forward from
the last kept frame) against the golden boxes, averaged over groups starting at up to
START_FRAMES frames of the segment. Cost: L golden detections, START_FRAMES per resolution,
one per extra quality and some optical-flow steps — about 2L + 2 detector runs for L = 10.

On a fast source the golden config runs on every `golden_every`-th frame only
(`golden_stride`): a segment covers about a second of video whatever the source's rate, for
the same golden cost. Ten consecutive frames of Megamind.avi (24 fps) are 0.4 s, and no plan
at 5 fps tracking 2 or 4 (a source-frame step of 5, a group of 15 or 25 frames) fitted in one:
on a slow node those are the plans it can afford, and the planner ran them on its pooled model
alone (720p@5fps track 2 at E[F1] 0.71 where the profiled plans beside it measured 0.87-0.98).
Frame-level F1 over the frames that have golden boxes estimates it over all of them.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from services.accuracy import f1_score
from services.tracking import to_gray, track_detections
from services.video_conf import decode_jpeg, encode_jpeg, resize_to

Detections = list[dict[str, Any]]
NTRACKING_LEVELS: tuple[int, ...] = (0, 1, 2, 4)
# The golden frames' coding: q100 keeps the detector within ~0.013 F1 of the raw frame (q90:
# 0.017 lower again), at ~300 kB a 768x576 frame; PNG would be exact at 640 kB and 27 ms each.
SEGMENT_QUALITY = 100
START_FRAMES = 5  # detected frames per candidate resolution and segment (its groups' starts)
GOLDEN_FPS = 10.0  # golden-scored frames per second of video in a segment, at most


def golden_stride(src_fps: float) -> int:
    """Every how many source frames a segment's golden config runs: 1 up to GOLDEN_FPS."""
    return max(1, math.ceil(src_fps / GOLDEN_FPS - 1e-6)) if src_fps > 0 else 1


def frame_level_f1(shown: Sequence[Detections], golden: Sequence[Optional[Detections]]) -> float:
    """Mean F1 over frames of what each frame shows against its golden boxes (one definition,
    used by profiling, the benches and the simulator's truth). Frames whose golden entry is
    None have no golden boxes and are not scored."""
    scores = [f1_score(list(s), list(g)) for s, g in zip(shown, golden) if g is not None]
    return float(np.mean(scores)) if scores else 1.0


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
    golden: Sequence[Optional[Detections]],
    resolutions: Sequence[str],
    steps: Sequence[int],
    ntracking_levels: Sequence[int] = NTRACKING_LEVELS,
    qualities: Sequence[int | None] = (None,),
    starts: int = START_FRAMES,
) -> list[dict[str, Any]]:
    """Rows {resolution, height, quality, step, ntracking, f1, frames} for every candidate that
    fits; quality None scores the frames as given. Each resolution is scored at the last (best)
    quality: a candidate's groups (a detected frame and the frames its boxes are shown on) start
    at up to `starts` frames spread over the segment, and its F1 is their mean: one detection
    per resolution made a config's score one roll of the detector's dice (Megamind.avi, three
    segments: 360p at 1.00 and 480p at 0.67 on the same frames). The largest resolution (the
    last) is scored at every quality too, where the job's quality slope is learned, from the
    first group only (the child's CPU is what a busy node leaves idle): an extra quality's F1 is
    the best quality's plus what the extra one lost against it on that same group.

    Frames whose golden entry is None are tracked through but not scored. A group's frames
    are not alike (its first is detected, the later ones older or tracked further), so where
    golden boxes are on every g-th frame the groups start at every residue mod g in turn, and
    a config's F1 is the mean over positions in the group of the mean over groups scored there
    (with golden boxes on every frame: the mean of its groups' F1). Scored on one group's golden
    frames alone, a 5-frame step without tracking on Megamind.avi (golden on every third) was
    its detected frame and the one 3 frames later: 0.83-1.00 at q60, 0.88 over the clip."""
    n = len(frames)
    scored = [j for j, g in enumerate(golden) if g is not None]
    g = scored[1] - scored[0] if len(scored) > 1 else 1
    stride = max(1, -(-n // max(1, starts)))
    all_starts = sorted({min(n - 1, i * stride + i % g) for i in range(min(starts, n))})
    rows = []
    for res in resolutions:
        resized: dict[int, np.ndarray] = {}

        def sized(j: int) -> np.ndarray:
            return resized[j] if j in resized else resized.setdefault(j, resize_to(frames[j], res))

        best = qualities[-1]
        base: dict[tuple[int, int], tuple[float, float]] = {}  # (step, k) -> (F1, F1 of the first group)
        for q in [best, *qualities[:-1]] if res == resolutions[-1] else [best]:
            scores = _score_quality(sized, detect, q, all_starts if q == best else all_starts[:1],
                                    steps, ntracking_levels, golden)
            for (step, k), (f1, first, groups) in scores.items():
                if q == best:
                    base[(step, k)] = (f1, first)
                elif (step, k) in base:
                    f1 = min(1.0, max(0.0, base[(step, k)][0] + first - base[(step, k)][1]))
                else:
                    continue
                rows.append({"resolution": res, "height": int(sized(0).shape[0]), "quality": q,
                             "step": step, "ntracking": k, "f1": round(f1, 4), "frames": step * (k + 1) * groups})
    return rows


def _score_quality(sized: Callable[[int], np.ndarray], detect: Callable[[np.ndarray], Detections], q: int | None,
                   group_starts: Sequence[int], steps: Sequence[int], ntracking_levels: Sequence[int],
                   golden: Sequence[Optional[Detections]]) -> dict[tuple[int, int], tuple[float, float, int]]:
    """(step, ntracking) -> (F1 over the groups that fit, F1 of the first group, groups) for the
    frames resized by `sized` and coded at quality `q`."""
    n = len(golden)
    max_k = max(ntracking_levels)
    coded: dict[int, np.ndarray] = {}  # source index -> the frame as the candidate gets it
    grays: dict[int, np.ndarray] = {}

    def frame(j: int) -> np.ndarray:
        if j not in coded:
            coded[j] = sized(j) if q is None else decode_jpeg(encode_jpeg(sized(j), q))
        return coded[j]

    def gray(j: int) -> np.ndarray:
        return grays[j] if j in grays else grays.setdefault(j, to_gray(frame(j)))

    detected = {j: detect(frame(j)) for j in group_starts}
    out = {}
    for step in steps:
        # Boxes on kept frames j, j+step, j+2*step, ... tracked frame to frame from j.
        chains = {}
        for j, boxes in detected.items():
            chain = [boxes]
            for i in range(1, max_k + 1):
                a, b = j + (i - 1) * step, j + i * step
                if b >= n:
                    break
                chain.append(track_detections(gray(a), gray(b), chain[-1]))
            chains[j] = chain
        for k in ntracking_levels:
            span = step * (k + 1)
            groups = [j for j, chain in chains.items() if j + span <= n and k < len(chain)]
            if not groups:
                continue

            def position_f1(j: int) -> list[float | None]:
                return [f1_score(list(chains[j][o // step]), list(golden[j + o])) if golden[j + o] is not None
                        else None for o in range(span)]

            per_group = [position_f1(j) for j in groups]
            by_position = [[f[o] for f in per_group if f[o] is not None] for o in range(span)]
            f1 = float(np.mean([np.mean(f) for f in by_position if f]))
            out[(step, k)] = (f1, float(np.mean([f for f in per_group[0] if f is not None])), len(groups))
    return out


__all__ = ["NTRACKING_LEVELS", "SEGMENT_QUALITY", "START_FRAMES", "frame_level_f1", "golden_stride", "score_segment",
           "shown_boxes", "step_options"]
