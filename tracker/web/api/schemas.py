"""Request and response models of the native API (/api/v1); the OpenAPI document is built
from them."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from scheduler.interface import Plan, UserConstraint
from services.dag import StageSpec
from tracker.store.jobs import JobState

# Job uids: ours are "job-<hex>", the seed's look like "GLOBAL_ID_1.SUB_ID".
JOB_UID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
NODE_NAME_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"

JobUid = Annotated[str, Field(pattern=JOB_UID_PATTERN, description="job uid")]
NodeName = Annotated[str, Field(pattern=NODE_NAME_PATTERN)]


# -- requests ------------------------------------------------------------------------------


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200, description="display name; defaults to the uid")
    source: Annotated[StrictStr, Field(min_length=1, max_length=4096)] | StrictInt = Field(
        ..., description="video file path (under an allowed directory), rtsp/http(s) URL, webcam index, "
        "or synthetic://WxH@FPS/COUNT"
    )
    generator: str = Field("SingleFrameGenerator", description="SingleFrameGenerator | ClipGenerator")
    stages: list[StageSpec] = Field(..., min_length=1, max_length=32, description="the DAG's stages")
    constraints: UserConstraint = Field(default_factory=UserConstraint, description="delay / accuracy goals")
    plan: Plan | None = Field(None, description="fixed plan: the planner is not consulted")
    node: NodeName | None = Field(None, description="node whose generator reads the source; default this tracker's node")


class JobPath(BaseModel):
    job_uid: JobUid


class JobListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: JobState | None = Field(None, description="only jobs in this state")
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=1_000_000_000)


class ResultsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after_seq: int = Field(-1, ge=-1, le=2**53, description="return frames with seq > after_seq")
    limit: int = Field(100, ge=1, le=1000)


class PlansQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, ge=1, le=500)


# -- responses -----------------------------------------------------------------------------


class TransitionOut(BaseModel):
    at: datetime
    from_: JobState | None = Field(None, alias="from", serialization_alias="from")
    to: JobState
    reason: str

    model_config = ConfigDict(populate_by_name=True)


class PlanOut(BaseModel):
    id: int
    created_at: datetime
    planner: str
    reason: str
    video_conf: dict[str, Any]
    flow_mapping: dict[str, Any]


class JobSummary(BaseModel):
    uid: str
    name: str
    source: str
    node: str
    state: JobState
    reason: str
    created_at: datetime
    updated_at: datetime


class JobOut(JobSummary):
    source_info: dict[str, Any] | None = None
    dag: dict[str, Any]
    constraint: UserConstraint
    fixed_plan: dict[str, Any] | None = None
    stats: dict[str, Any]
    seed_node_addr: str | None = None
    video_id: str | None = None
    plan: PlanOut | None = Field(None, description="the current plan")
    transitions: list[TransitionOut] = Field(default_factory=list)
    result_count: int = 0


class JobList(BaseModel):
    items: list[JobSummary]
    total: int
    limit: int
    offset: int


class StageTiming(BaseModel):
    stage: str
    node: str
    worker: str
    queue_s: float
    service_s: float
    runtime: str | None = Field(None, description="what the stage's model ran in: pytorch, openvino, onnx, tensorrt")
    threads: int | None = Field(None, description="inference threads observed during the stage's predict")
    batch: int | None = Field(None, description="frames (of any job) in the predict call this frame ran in")


class FrameOut(BaseModel):
    seq: int
    plan_id: int
    capture_ts: float
    width: int
    height: int
    latency_s: float
    frame_bytes: int = 0
    lost: bool
    produced: Literal["detected", "tracked"] = Field(
        "detected", description="detected: the detector ran on this frame; tracked: its boxes were tracked "
                                "from the kept frame before (the plan's ntracking)")
    outputs: dict[str, dict[str, Any]]
    stages: list[StageTiming]


class ResultsPage(BaseModel):
    items: list[FrameOut]
    next_after_seq: int = Field(..., description="pass as after_seq to get the next page")
    total: int = Field(..., description="frames stored for this job")


class PlanList(BaseModel):
    items: list[PlanOut]


class NodeOut(BaseModel):
    name: str
    role: str
    ip: str
    address: str
    alive: bool
    last_heartbeat: datetime
    video_sources: list[dict[str, Any]]
    services: list[str]
    resources: dict[str, Any]


class NodeList(BaseModel):
    items: list[NodeOut]


class ServiceOut(BaseModel):
    name: str
    description: str
    inputs: dict[str, Any] = Field(description="field -> {required, type}")
    outputs: list[str]
    output_types: dict[str, str] = Field(description="output field -> type; an input takes only its own type")
    params: dict[str, Any]
    tunable_grade: bool
    aliases: list[str]


class ServiceList(BaseModel):
    items: list[ServiceOut]
