"""Planner observations: a job's recent window of measured frames, and the accuracy and speed
measurements that are not a processed frame.

- The recent window (`recent_window`): the service-time corrections and the measured queueing
  wait read the same frames, newest first, within a horizon of the newest.
- A scored profiling segment (services/profiling.py): one accuracy observation per candidate
  config, frame-level F1 against the golden config; no service time.
- A node's `vdag profile` (services/node_profile.py): one latency observation per service x
  grade x resolution, time stamp 0, so that a job's own, newer measurements take over.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from scheduler.interface import Observation
from services.dag import DagSpec
from services.profiling import SEGMENT_QUALITY


RECENT_HORIZON_S = 8.0  # how far back from its newest measured frame a job's recent window reaches


def recent_window(observations: list[Observation], accept: Callable[[Observation], bool],
                  horizon_s: float = RECENT_HORIZON_S) -> Iterator[Observation]:
    """The accepted observations within horizon_s of the newest accepted one, newest first
    (observations come oldest first)."""
    newest = None
    for o in reversed(observations):
        if not accept(o):
            continue
        newest = o.ts if newest is None else newest
        if o.ts < newest - horizon_s:
            return
        yield o


def measured_frames(observations: list[Observation]) -> int:
    """Processed frames a job has measured (its stages share a sequence number)."""
    return len({o.seq for o in observations if o.source == "frame" and o.service_s > 0})


def segment_observations(stage: str, node: str, grade: str | None, rows: Iterable[dict[str, Any]],
                         src_width: int, src_height: int, src_fps: float, ts: float) -> list[Observation]:
    out = []
    for r in rows:
        f1 = r.get("f1")
        if not isinstance(f1, (int, float)) or not 0.0 <= f1 <= 1.0:
            continue
        step = max(1, int(r.get("step", 1)))
        out.append(Observation(
            stage=stage, node=node, grade=grade, width=int(round(src_width * r["height"] / src_height)),
            height=int(r["height"]), fps=0.0 if step == 1 else src_fps / step, ntracking=int(r.get("ntracking", 0)),
            quality=int(r.get("quality") or SEGMENT_QUALITY), service_s=0.0, ts=ts, accuracy=float(f1), source="segment",
        ))
    return out


def profile_observations(profiles: dict[str, dict[str, Any]], dag: DagSpec, nodes: set[str]) -> list[Observation]:
    """Every profiled (service, grade) that a stage of the DAG runs, on the nodes given."""
    out = []
    for stage in dag.stages:
        for node, profile in profiles.items():
            if node not in nodes:
                continue
            for row in profile.get("rows", []):
                if row.get("service") == stage.service and row.get("grade") == stage.params.get("grade"):
                    out.append(Observation(stage=stage.name, node=node, grade=row.get("grade"), width=row["width"],
                                           height=row["height"], service_s=row["service_s"], ts=0.0,
                                           source="profile"))
    return out
