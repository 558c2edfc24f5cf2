"""Identities across frames and line-crossing counts, on a job's frames in sequence order.

Runs where a job's frames are in order: the aggregator, after its reorder buffer. Workers
see frames out of order and in several processes, so identities cannot be kept there.
Identities: each frame's boxes are matched to the previous frame's tracks by IoU (optimal
assignment); tracked frames carry their boxes by optical flow, so between detected frames
the match is nearly exact, and at a detected frame the detector's boxes meet the tracks
they continue. A track unmatched for `max_age` frames ends. Our own small matcher rather
than ultralytics' ObjectCounter: the tracker process must not import torch/ultralytics.

Counting (seed `count_result`): a track crosses the line when its box centre changes side
of it within the segment; `up` counts crossings to the left of the line's direction (for a
line drawn left to right: moving up the picture), `total` every crossing, and each class
its own crossings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from services.accuracy import box_iou

MATCH_IOU = 0.3


@dataclass
class _Track:
    id: int
    cls: str
    box: list[float]
    centre: tuple[float, float]
    age: int = 0  # frames since last matched
    side: float = 0.0  # last non-zero side of the line its centre was on (0: not yet known)


def _centre(box: Sequence[float]) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def _side(line: Sequence[float], p: tuple[float, float]) -> float:
    x1, y1, x2, y2 = line
    return (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1)


def _crosses_segment(line: Sequence[float], a: tuple[float, float], b: tuple[float, float]) -> bool:
    """The move a -> b meets the line segment itself, not only its extension."""
    x1, y1, x2, y2 = line
    s1, s2 = _side(line, a), _side(line, b)
    if s1 == s2:
        return False
    t = s1 / (s1 - s2)
    px, py = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
    dx, dy = x2 - x1, y2 - y1
    u = ((px - x1) * dx + (py - y1) * dy) / max(dx * dx + dy * dy, 1e-12)
    return 0.0 <= u <= 1.0


@dataclass
class LineCounter:
    """Per job: identities and crossings of one counting line (normalised x1, y1, x2, y2)."""

    line: tuple[float, float, float, float] | None = None
    max_age: int = 5
    tracks: list[_Track] = field(default_factory=list)
    next_id: int = 1
    up: int = 0
    total: int = 0
    by_class: dict[str, int] = field(default_factory=dict)

    def update(self, detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The frame's detections with an `id` each; counts updated."""
        out = [dict(d) for d in detections]
        matched_t: set[int] = set()
        if self.tracks and out:
            cost = np.ones((len(self.tracks), len(out)))
            for i, t in enumerate(self.tracks):
                for j, d in enumerate(out):
                    if d.get("cls") == t.cls:
                        cost[i, j] = 1.0 - box_iou(t.box, d["box"])
            rows, cols = linear_sum_assignment(cost)
            for i, j in zip(rows, cols):
                if cost[i, j] <= 1.0 - MATCH_IOU:
                    self._move(self.tracks[i], out[j])
                    matched_t.add(i)
        for i, t in enumerate(self.tracks):
            if i not in matched_t:
                t.age += 1
        self.tracks = [t for t in self.tracks if t.age <= self.max_age]
        for d in out:
            if "id" not in d:
                centre = _centre(d["box"])
                side = _side(self.line, centre) if self.line is not None else 0.0
                track = _Track(self.next_id, str(d.get("cls", "?")), list(d["box"]), centre, side=side)
                self.next_id += 1
                self.tracks.append(track)
                d["id"] = track.id
        return out

    def _move(self, track: _Track, det: dict[str, Any]) -> None:
        centre = _centre(det["box"])
        if self.line is not None:
            side = _side(self.line, centre)
            # A crossing: the centre is now on the other side from where it last was (a centre
            # exactly on the line keeps its old side), and the move met the segment itself.
            if side and track.side and (side > 0) != (track.side > 0) and \
                    _crosses_segment(self.line, track.centre, centre):
                self.total += 1
                self.by_class[track.cls] = self.by_class.get(track.cls, 0) + 1
                if side < 0:  # image y grows downwards: negative = left of the line's direction
                    self.up += 1
            track.side = side or track.side
        track.box, track.centre, track.age = list(det["box"]), centre, 0
        det["id"] = track.id

    def count_result(self) -> dict[str, int]:
        return {"up": self.up, "total": self.total, **dict(sorted(self.by_class.items()))}


__all__ = ["JobCounts", "LineCounter"]


class JobCounts:
    """Every job's LineCounter per counting stage, fed the job's records in sequence order.

    A counting stage is an `object_count` whose `detections` input names a detector stage: the
    detector's boxes gain track ids, and with a `line` param its stored output gains the seed's
    `count_result` (crossings: up, total, per class)."""

    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, tuple[str, LineCounter]]] = {}

    def start(self, job_uid: str, dag) -> None:
        stages: dict[str, tuple[str, LineCounter]] = {}
        for s in dag.stages:
            if s.service != "object_count" or "detections" not in s.inputs:
                continue
            source = s.inputs["detections"].partition(".")[0]
            line = s.params.get("line")
            stages[s.name] = (source, LineCounter(line=tuple(line) if line else None))
        if stages:
            self._jobs[job_uid] = stages

    def apply(self, job_uid: str, outputs: dict[str, dict]) -> None:
        """Mutates one frame's outputs (the aggregator's record) in place."""
        for stage, (source, counter) in self._jobs.get(job_uid, {}).items():
            det_out = outputs.get(source)
            if not isinstance(det_out, dict) or not isinstance(det_out.get("detections"), list):
                continue
            det_out["detections"] = counter.update(det_out["detections"])
            if counter.line is not None and isinstance(outputs.get(stage), dict):  # no line: nothing crosses
                outputs[stage]["count_result"] = counter.count_result()

    def forget(self, job_uid: str) -> None:
        self._jobs.pop(job_uid, None)

    def __len__(self) -> int:
        return len(self._jobs)
