"""The frame envelope: a msgpack map around JPEG bytes. Never pickle, never eval.

Every hop decodes with `decode_envelope`, which checks the shape strictly, so a corrupt
or foreign message is rejected with a clear reason instead of reaching a DNN service.
"""
from __future__ import annotations

from typing import Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENVELOPE_VERSION = 1
MAX_ENVELOPE_BYTES = 32 * 1024 * 1024


class BadEnvelope(ValueError):
    pass


class Hop(BaseModel):
    """One remaining stage of the route: what runs, with which inputs, where."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    service: str
    node: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)


class StageTiming(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str
    node: str
    worker: str
    enqueued: float  # wall time the frame was put on this stage's queue
    started: float
    finished: float
    runtime: str | None = None  # what the stage's model ran in (services/runtimes.py), when it has one
    threads: int | None = None  # inference threads observed during its predict
    batch: int | None = None  # frames in the predict call this frame ran in (services/batching.py)


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: int = ENVELOPE_VERSION
    job: str = Field(..., min_length=1, max_length=128)
    seq: int = Field(..., ge=0)
    plan: int = Field(..., ge=0)
    capture_ts: float = Field(..., description="source timestamp, seconds from stream start")
    sent_at: float = Field(..., description="wall time the generator enqueued the frame")
    width: int = Field(..., gt=0)
    height: int = Field(..., gt=0)
    image: bytes | None = None
    clip: list[bytes] = Field(default_factory=list)
    route: list[Hop] = Field(default_factory=list)
    timings: list[StageTiming] = Field(default_factory=list)
    outputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    enqueued_at: float = 0.0  # wall time of the last enqueue, for queue-wait measurement
    frame_bytes: int = 0  # size of the JPEG the generator sent, for transfer-time learning
    origin: str = "cloud"  # node whose generator sent the frame; acks go back there
    results_queue: str = "vdag.results"  # where the last stage publishes the finished frame
    profile: bool = False  # also run the golden config on this frame, for accuracy
    golden_image: bytes | None = None  # the frame at source resolution, on profiled frames
    golden_grade: str = "m"
    read_at: float = 0.0  # wall time the generator read this frame (0: sent_at); delay counts from here
    # Seed ntracking: >= 0 on a frame whose detector stage tracks the boxes of kept frame
    # `track_from` (the kept frame just before it) instead of running the detector; -1 = detect.
    track_from: int = Field(-1, ge=-1)
    # kind "profile": `segment` holds consecutive source frames (source resolution) on which the
    # worker scores candidate configs against the golden one (services/profiling.py).
    kind: Literal["frame", "profile"] = "frame"
    segment: list[bytes] = Field(default_factory=list, max_length=64)
    segment_fps: float = 0.0
    segment_golden_every: int = Field(1, ge=1, le=16)  # the golden config runs on every Nth (profiling.golden_stride)
    # A job's first segments: the planner has no accuracy from the video until one is scored,
    # so the worker scores them first and at a higher priority than idle capacity only.
    urgent: bool = False


def encode_envelope(env: Envelope) -> bytes:
    return msgpack.packb(env.model_dump(), use_bin_type=True)


def decode_envelope(data: Any) -> Envelope:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadEnvelope(f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_ENVELOPE_BYTES:
        raise BadEnvelope(f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise BadEnvelope(f"not msgpack: {exc}") from None
    if not isinstance(raw, dict):
        raise BadEnvelope("envelope is not a map")
    if raw.get("v") != ENVELOPE_VERSION:
        raise BadEnvelope(f"unsupported envelope version {raw.get('v')!r}")
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadEnvelope(f"bad field {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
