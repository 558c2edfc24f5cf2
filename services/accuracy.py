"""Accuracy of a configuration's detections against the golden configuration's, as F1."""
from __future__ import annotations

from typing import Any, Sequence


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def f1_score(pred: list[dict[str, Any]], golden: list[dict[str, Any]], iou: float = 0.5) -> float:
    """F1 of `pred` against `golden` (both in the `detections` format, normalised boxes).

    Pairs of the same class are matched greedily, highest IoU first, each detection at
    most once; a pair counts as a true positive when its IoU is at least `iou`.
    Nothing predicted and nothing there is a perfect score.
    """
    if not pred and not golden:
        return 1.0
    if not pred or not golden:
        return 0.0
    pairs = []
    for i, p in enumerate(pred):
        for j, g in enumerate(golden):
            if p["cls"] != g["cls"]:
                continue
            overlap = box_iou(p["box"], g["box"])
            if overlap >= iou:
                pairs.append((overlap, i, j))
    pairs.sort(key=lambda t: t[0], reverse=True)
    used_p: set[int] = set()
    used_g: set[int] = set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
    true_pos = len(used_p)
    return 2.0 * true_pos / (len(pred) + len(golden))

