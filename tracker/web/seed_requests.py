"""What every seed route (seed 003 and its later routes) does with a request: the bodies,
parsed as JSON and validated, never evaluated (fields beyond these are ignored), the job
lookup, and a seed submission (a node's video + a seed DAG or pipeline -> a job)."""
from __future__ import annotations

import re
from typing import Any

from flask import jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scheduler.interface import NodeRole
from scheduler.seed_format import constraint_from_seed
from services.dag import DagSpec, dag_from_pipeline, dag_from_seed
from services.registry import UnknownService
from tracker.store import NodeRecord
from tracker.store.jobs import Job
from tracker.web.api.schemas import JOB_UID_PATTERN, NODE_NAME_PATTERN
from tracker.web.context import TrackerContext
from tracker.web.errors import BadRequest, NotFound, ValidationFailed, pydantic_details, pydantic_message
from tracker.web.security import CheckedSource
from tracker.web.submit import submit_job

_UID = re.compile(JOB_UID_PATTERN)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # seed clients may send more than we read


class SeedDag(_Body):
    generator: str = "SingleFrameGenerator"
    flow: list[str] = Field(..., min_length=1, max_length=33)
    input: dict[str, dict[str, str]] = Field(default_factory=dict)


class SubmitJob(_Body):
    dag: SeedDag
    node_addr: str = Field(..., max_length=128)
    video_id: int | str
    user_constraint: dict[str, Any] | None = None


class NodeSubmitJob(SubmitJob):
    unique_job_id: str = Field(..., pattern=JOB_UID_PATTERN)


class SubmitQuery(_Body):
    node_addr: str = Field(..., max_length=128)
    video_id: int | str
    pipeline: list[str] = Field(..., min_length=1, max_length=32)
    user_constraint: dict[str, Any] | None = None


class JobConstraint(_Body):
    """The seed's `job_uid`, or the later front end's `query_id`; `user_constraint` is read
    strictly by scheduler.seed_format.constraint_update_from_seed."""

    job_uid: str | None = Field(None, pattern=JOB_UID_PATTERN)
    query_id: str | None = Field(None, pattern=JOB_UID_PATTERN)
    user_constraint: Any = None

    @model_validator(mode="after")
    def _one_id(self) -> "JobConstraint":
        if not (self.job_uid or self.query_id):
            raise ValueError("job_uid (or query_id) is required")
        return self

    @property
    def uid(self) -> str:
        return self.job_uid or self.query_id or ""


class GetPlan(_Body):
    job_uid: str = Field(..., pattern=JOB_UID_PATTERN)
    dag: dict[str, Any] | None = None
    last_plan_result: dict[str, Any] | None = None
    user_constraint: dict[str, Any] | None = None


class UpdatePlan(_Body):
    job_uid: str = Field(..., pattern=JOB_UID_PATTERN)
    video_conf: dict[str, Any]
    flow_mapping: dict[str, dict[str, Any]] = Field(..., min_length=1)
    planner: str = Field("node/update_plan", max_length=64)
    reason: str = Field("pushed over /node/update_plan", max_length=1000)


class VideoSourceEntry(BaseModel):
    model_config = ConfigDict(extra="allow")  # width/height/fps and the like are kept

    id: int | str
    url: str = Field(..., min_length=1, max_length=4096)
    type: str = Field("", max_length=200)


class RegisterNode(_Body):
    name: str = Field(..., pattern=NODE_NAME_PATTERN)
    role: NodeRole = "edge"
    ip: str = Field(..., min_length=1, max_length=64)
    address: str | None = Field(None, max_length=128, description='"ip:port" of the node\'s API')
    port: int | None = Field(None, ge=1, le=65535)
    video_sources: list[VideoSourceEntry] = Field(default_factory=list, max_length=256)
    services: list[str] = Field(default_factory=list, max_length=256)
    resources: dict[str, Any] = Field(default_factory=dict)


class Heartbeat(_Body):
    name: str = Field(..., pattern=NODE_NAME_PATTERN)
    resources: dict[str, Any] = Field(default_factory=dict)
    # Stats of the generators this node runs (tracker.cluster.edge), merged into each job's stats.
    jobs: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=1000)


def parse_body(model: type[BaseModel]) -> Any:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = pydantic_details(exc)
        raise BadRequest(pydantic_message(details), details) from None


def seed_ok(**fields: Any):
    return jsonify({"status": 0, **fields})


def is_job_uid(uid: str) -> bool:
    return bool(_UID.match(uid))


def job_or_404(ctx: TrackerContext, job_uid: str) -> Job:
    job = ctx.store.find_job(job_uid) if is_job_uid(job_uid) else None
    if job is None:
        raise NotFound(f"unknown job_uid {job_uid!r}")
    return job


def _resolve_video(ctx: TrackerContext, node_addr: str, video_id: int | str) -> tuple[NodeRecord, CheckedSource]:
    node = ctx.store.node_by_address(node_addr)
    if node is None:
        raise NotFound(f"node_addr: no node registered at {node_addr!r}; see /node/get_video_info")
    entry = node.video_source(video_id)
    if entry is None:
        raise NotFound(f"video_id: node {node_addr!r} has no video {video_id!r}")
    info = {k: entry[k] for k in ("width", "height", "fps") if isinstance(entry.get(k), (int, float))}
    return node, CheckedSource("url" if "://" in str(entry["url"]) else "file", str(entry["url"]), info or None)


def submit_seed_job(ctx: TrackerContext, dag: DagSpec, node_addr: str, video_id: int | str,
                    user_constraint: dict | None, uid: str | None = None) -> Job:
    constraint = constraint_from_seed(user_constraint)
    node, source = _resolve_video(ctx, node_addr, video_id)
    return submit_job(ctx, dag=dag, source=source, constraint=constraint, node=node.name,
                      seed_node_addr=node_addr, video_id=str(video_id), uid=uid)


def dag_from_seed_body(seed: SeedDag) -> DagSpec:
    try:
        return dag_from_seed(seed.model_dump())
    except ValidationError as exc:
        details = pydantic_details(exc, ("dag",))
        raise ValidationFailed(pydantic_message(details), details) from None
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="dag") from None


def dag_from_pipeline_body(pipeline: list[str]) -> DagSpec:
    try:
        return dag_from_pipeline(pipeline)
    except UnknownService as exc:
        raise ValidationFailed(str(exc), field="pipeline") from None
    except ValidationError as exc:
        details = pydantic_details(exc, ("pipeline",))
        raise ValidationFailed(pydantic_message(details), details) from None
