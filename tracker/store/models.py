"""SQLAlchemy models of the job store. Only tracker.store uses them; migrations freeze
their own copies of the tables (migrations/versions/)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UID_LEN = 64


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON(none_as_null=True), list[Any]: JSON, datetime: DateTime(timezone=True)}


def _job_fk() -> ForeignKey:
    return ForeignKey("jobs.uid", ondelete="CASCADE")


class JobRow(Base):
    __tablename__ = "jobs"

    uid: Mapped[str] = mapped_column(String(UID_LEN), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)
    source_info: Mapped[dict[str, Any] | None]
    dag: Mapped[dict[str, Any]]
    constraint: Mapped[dict[str, Any]]
    fixed_plan: Mapped[dict[str, Any] | None]
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str] = mapped_column(Text, default="")
    node: Mapped[str] = mapped_column(String(128))
    seed_node_addr: Mapped[str | None] = mapped_column(String(128))
    video_id: Mapped[str | None] = mapped_column(String(64))
    stats: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (Index("ix_jobs_state_created", "state", "created_at"), Index("ix_jobs_created", "created_at"))


class TransitionRow(Base):
    __tablename__ = "job_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_uid: Mapped[str] = mapped_column(String(UID_LEN), _job_fk())
    at: Mapped[datetime]
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_job_transitions_job", "job_uid", "id"),)


class PlanRow(Base):
    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_uid: Mapped[str] = mapped_column(String(UID_LEN), _job_fk())
    created_at: Mapped[datetime]
    planner: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    video_conf: Mapped[dict[str, Any]]
    flow_mapping: Mapped[dict[str, Any]]

    __table_args__ = (Index("ix_plans_job", "job_uid", "id"),)


class FrameResultRow(Base):
    __tablename__ = "frame_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_uid: Mapped[str] = mapped_column(String(UID_LEN), _job_fk())
    seq: Mapped[int] = mapped_column(Integer)
    plan_id: Mapped[int | None] = mapped_column(Integer)
    capture_ts: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    latency_s: Mapped[float] = mapped_column(Float)
    outputs: Mapped[dict[str, Any]]
    stages: Mapped[list[Any]]
    frame_bytes: Mapped[int] = mapped_column(Integer, default=0)
    lost: Mapped[bool] = mapped_column(Boolean, default=False)
    # FrameRecord fields added after this table was written, until a migration gives them columns.
    extra: Mapped[dict[str, Any] | None]

    # The unique key is also the index every result query uses (job, seq order).
    __table_args__ = (UniqueConstraint("job_uid", "seq", name="uq_frame_results_job_seq"),)


class ObservationRow(Base):
    __tablename__ = "observations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_uid: Mapped[str] = mapped_column(String(UID_LEN), _job_fk())
    ts: Mapped[float] = mapped_column(Float)
    stage: Mapped[str] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(128))
    grade: Mapped[str | None] = mapped_column(String(8))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    fps: Mapped[float] = mapped_column(Float)
    quality: Mapped[int] = mapped_column(Integer)
    frame_bytes: Mapped[int] = mapped_column(Integer)
    service_s: Mapped[float] = mapped_column(Float)
    queue_s: Mapped[float] = mapped_column(Float)
    transfer_s: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    node_load: Mapped[float | None] = mapped_column(Float)
    # Observation fields added after this table was written, until a migration gives them columns.
    extra: Mapped[dict[str, Any] | None]

    __table_args__ = (Index("ix_observations_job", "job_uid", "id"),)


class NodeRow(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    ip: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(128))  # "ip:port" of its API, the seed's node_addr
    video_sources: Mapped[list[Any]]  # [{id, url, type, ...}]
    services: Mapped[list[Any]]
    resources: Mapped[dict[str, Any]]
    last_heartbeat: Mapped[datetime]
    alive: Mapped[bool] = mapped_column(Boolean, default=True)

    __table_args__ = (Index("ix_nodes_address", "address"),)
