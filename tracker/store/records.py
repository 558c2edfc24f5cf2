"""What the store hands out (plain dataclasses and pydantic models, never ORM objects), its
errors, and the conversions between them and the ORM rows."""
from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

from pydantic import Field, ValidationError

from scheduler.interface import NodeInfo, Observation, Plan, UserConstraint
from services.records import FrameRecord, StageRecord
from tracker.store.jobs import Job, JobState, dag_unchecked
from tracker.store.models import FrameResultRow, JobRow, NodeRow, ObservationRow, PlanRow

log = logging.getLogger(__name__)


class JobExists(ValueError):
    def __init__(self, job_uid: str) -> None:
        super().__init__(f"job {job_uid!r} already exists")
        self.job_uid = job_uid


class JobEnded(RuntimeError):
    """A change (plan, constraint) to a job that is DONE, FAILED or CANCELLED."""

    def __init__(self, job_uid: str, state: JobState) -> None:
        super().__init__(f"job {job_uid!r} has ended ({state.value})")
        self.job_uid, self.state = job_uid, state


@dataclass(frozen=True)
class StoredPlan:
    id: int
    job_uid: str
    created_at: datetime
    plan: Plan

    def to_json(self) -> dict:
        return {"id": self.id, "created_at": self.created_at.isoformat(), **self.plan.model_dump(mode="json")}


class NodeRecord(NodeInfo):
    """A registered node: the planner's NodeInfo (resource fields from the last heartbeat)
    plus what the tracker keeps about it."""

    address: str = ""
    video_sources: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, Any] = Field(default_factory=dict)
    last_heartbeat: datetime

    def info(self) -> NodeInfo:
        return NodeInfo.model_validate(self.model_dump(include=set(NodeInfo.model_fields)))

    def video_source(self, video_id: str | int) -> dict[str, Any] | None:
        for src in self.video_sources:
            if str(src.get("id")) == str(video_id):
                return src
        return None

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


def aware(dt: datetime) -> datetime:
    """SQLite hands datetimes back naive; everything we store is UTC."""
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def new_job_uid() -> str:
    return "job-" + secrets.token_hex(8)


def job_from_row(row: JobRow) -> Job:
    return Job(
        uid=row.uid,
        name=row.name,
        source=row.source,
        source_info=row.source_info,
        dag=dag_unchecked(row.dag),
        constraint=UserConstraint.model_validate(row.constraint),
        fixed_plan=Plan.model_validate(row.fixed_plan) if row.fixed_plan else None,
        state=JobState(row.state),
        state_reason=row.state_reason,
        node=row.node,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
        stats=dict(row.stats or {}),
        seed_node_addr=row.seed_node_addr,
        video_id=row.video_id,
    )


def plan_from_row(row: PlanRow) -> StoredPlan:
    plan = Plan.model_validate(
        {"video_conf": row.video_conf, "flow_mapping": row.flow_mapping, "planner": row.planner, "reason": row.reason}
    )
    return StoredPlan(id=row.id, job_uid=row.job_uid, created_at=aware(row.created_at), plan=plan)


_FRAME_COLUMNS = frozenset(FrameResultRow.__table__.columns.keys()) - {"id", "extra"}
_FRAME_FIELDS = frozenset(f.name for f in fields(FrameRecord))
_STAGE_FIELDS = frozenset(f.name for f in fields(StageRecord))


def frame_row(r: FrameRecord) -> dict[str, Any]:
    data = asdict(r)  # stages become dicts too
    if data["plan_id"] is not None and data["plan_id"] < 0:
        data["plan_id"] = None
    row = {k: data.pop(k) for k in list(data) if k in _FRAME_COLUMNS}
    return {**row, "extra": data or None}


def frame_from_row(row: FrameResultRow) -> FrameRecord:
    data = {k: getattr(row, k) for k in _FRAME_COLUMNS}
    data.update(row.extra or {})
    data["plan_id"] = data["plan_id"] if data["plan_id"] is not None else -1
    data["stages"] = [StageRecord(**{k: v for k, v in st.items() if k in _STAGE_FIELDS}) for st in data["stages"] or []]
    data["outputs"] = data["outputs"] or {}
    return FrameRecord(**{k: v for k, v in data.items() if k in _FRAME_FIELDS})


_NODE_RESOURCE_FIELDS = frozenset(NodeInfo.model_fields) - {"name", "role", "ip", "alive", "services"}


def node_from_row(row: NodeRow) -> NodeRecord:
    resources = dict(row.resources or {})
    known = {k: resources[k] for k in _NODE_RESOURCE_FIELDS if k in resources}
    try:
        NodeInfo.model_validate({"name": row.name, **known})
    except ValidationError:  # a bad heartbeat value must not hide the node from the planner
        log.warning("node %s: ignoring invalid resource values %s", row.name, known)
        known = {}
    return NodeRecord(
        name=row.name, role=row.role, ip=row.ip, address=row.address, alive=row.alive,
        services=list(row.services or []), video_sources=list(row.video_sources or []),
        resources=resources, last_heartbeat=aware(row.last_heartbeat), **known,
    )


_OBS_COLUMNS = frozenset(ObservationRow.__table__.columns.keys()) - {"id", "job_uid", "extra"}


def observation_row(uid: str, o: Observation) -> dict[str, Any]:
    data = o.model_dump(mode="json")
    row = {k: data.pop(k) for k in list(data) if k in _OBS_COLUMNS}
    return {"job_uid": uid, **row, "extra": data or None}


def observation_from_row(row: ObservationRow) -> Observation:
    data = {k: getattr(row, k) for k in _OBS_COLUMNS}
    data.update(row.extra or {})
    return Observation.model_validate({k: v for k, v in data.items() if k in Observation.model_fields})
