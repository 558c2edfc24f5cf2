"""What the aggregator hands to storage: one record per frame, JSON-able, no bytes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StageRecord:
    stage: str
    node: str
    worker: str
    queue_s: float  # waiting on the node queue (includes transfer from the previous node)
    service_s: float  # inside the stage (decode + DNN service)
    runtime: str | None = None  # the model's runtime (services/runtimes.py), for stages with a model
    threads: int | None = None  # inference threads observed during its predict
    batch: int | None = None  # frames in the predict call this frame ran in (services/batching.py)


@dataclass(frozen=True)
class FrameRecord:
    job_uid: str
    seq: int
    plan_id: int
    capture_ts: float
    width: int
    height: int
    latency_s: float  # enqueue by the generator -> result at the aggregator
    outputs: dict[str, dict[str, Any]]  # stage -> JSON-able outputs (bytes removed)
    stages: list[StageRecord] = field(default_factory=list)
    frame_bytes: int = 0
    lost: bool = False  # never arrived within the reorder wait; outputs empty
    produced: str = "detected"  # "tracked": boxes carried by the tracker from the detected frame before it
    late: bool = False  # arrived after the reorder wait had declared it lost; stored in place of that row
