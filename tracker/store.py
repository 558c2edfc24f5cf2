"""The job store: every database read and write of the tracker goes through `Store`.

Thread-safe: each call opens its own short session (request threads, the scheduler thread
and the aggregator thread share one Store). Job state changes only in `transition()`.
Calls return plain dataclasses and pydantic models, never ORM objects.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

from pydantic import Field, ValidationError
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from scheduler.interface import NodeInfo, Observation, Plan, UserConstraint
from services.dag import DagSpec
from services.records import FrameRecord, StageRecord
from tracker import migrate
from tracker.db import SessionFactory, is_sqlite, is_sqlite_memory, make_engine
from tracker.jobs import (
    IllegalTransition,
    Job,
    JobNotFound,
    JobState,
    Transition,
    check_transition,
    dag_unchecked,
)
from tracker.models import (
    FrameResultRow,
    JobRow,
    NodeRow,
    ObservationRow,
    PlanRow,
    TransitionRow,
    utcnow,
)

log = logging.getLogger(__name__)

__all__ = [
    "Store", "StoredPlan", "NodeRecord", "JobExists", "JobEnded", "JobNotFound", "IllegalTransition",
]

_INSERT_CHUNK = 500  # rows per multi-row INSERT (SQLite caps bound parameters)
NODE_ROLES = ("host", "edge", "cloud")


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


def _aware(dt: datetime) -> datetime:
    """SQLite hands datetimes back naive; everything we store is UTC."""
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def new_job_uid() -> str:
    return "job-" + secrets.token_hex(8)


def _job(row: JobRow) -> Job:
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
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
        stats=dict(row.stats or {}),
        seed_node_addr=row.seed_node_addr,
        video_id=row.video_id,
    )


def _plan(row: PlanRow) -> StoredPlan:
    plan = Plan.model_validate(
        {"video_conf": row.video_conf, "flow_mapping": row.flow_mapping, "planner": row.planner, "reason": row.reason}
    )
    return StoredPlan(id=row.id, job_uid=row.job_uid, created_at=_aware(row.created_at), plan=plan)


_FRAME_COLUMNS = frozenset(FrameResultRow.__table__.columns.keys()) - {"id", "extra"}
_FRAME_FIELDS = frozenset(f.name for f in fields(FrameRecord))
_STAGE_FIELDS = frozenset(f.name for f in fields(StageRecord))


def _frame_row(r: FrameRecord) -> dict[str, Any]:
    data = asdict(r)  # stages become dicts too
    if data["plan_id"] is not None and data["plan_id"] < 0:
        data["plan_id"] = None
    row = {k: data.pop(k) for k in list(data) if k in _FRAME_COLUMNS}
    return {**row, "extra": data or None}


def _frame(row: FrameResultRow) -> FrameRecord:
    data = {k: getattr(row, k) for k in _FRAME_COLUMNS}
    data.update(row.extra or {})
    data["plan_id"] = data["plan_id"] if data["plan_id"] is not None else -1
    data["stages"] = [StageRecord(**{k: v for k, v in st.items() if k in _STAGE_FIELDS}) for st in data["stages"] or []]
    data["outputs"] = data["outputs"] or {}
    return FrameRecord(**{k: v for k, v in data.items() if k in _FRAME_FIELDS})


_NODE_RESOURCE_FIELDS = frozenset(NodeInfo.model_fields) - {"name", "role", "ip", "alive", "services"}


def _node(row: NodeRow) -> NodeRecord:
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
        resources=resources, last_heartbeat=_aware(row.last_heartbeat), **known,
    )


_OBS_COLUMNS = frozenset(ObservationRow.__table__.columns.keys()) - {"id", "job_uid", "extra"}


def _observation_row(uid: str, o: Observation) -> dict[str, Any]:
    data = o.model_dump(mode="json")
    row = {k: data.pop(k) for k in list(data) if k in _OBS_COLUMNS}
    return {"job_uid": uid, **row, "extra": data or None}


def _observation(row: ObservationRow) -> Observation:
    data = {k: getattr(row, k) for k in _OBS_COLUMNS}
    data.update(row.extra or {})
    return Observation.model_validate({k: v for k, v in data.items() if k in Observation.model_fields})


class Store:
    def __init__(self, database_url: str, *, migrate_schema: bool = True) -> None:
        self.database_url = database_url
        self.engine = make_engine(database_url)
        self._sessions = SessionFactory(self.engine)
        self._dialect = self.engine.dialect.name
        if migrate_schema:
            self.migrate()

    def migrate(self) -> None:
        if is_sqlite(self.database_url) and is_sqlite_memory(self.database_url):
            from alembic import command

            with self.engine.begin() as conn:  # the one shared in-memory connection
                cfg = migrate.alembic_config(self.database_url)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        else:
            migrate.upgrade(self.database_url)

    def close(self) -> None:
        self.engine.dispose()

    # -- helpers ---------------------------------------------------------------------------

    def _insert(self, table):
        return (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)

    @staticmethod
    def _job_row(s: Session, uid: str, *, lock: bool = False) -> JobRow:
        stmt = select(JobRow).where(JobRow.uid == uid)
        if lock:
            stmt = stmt.with_for_update()  # PostgreSQL row lock; SQLite already holds the write lock
        row = s.scalars(stmt).one_or_none()
        if row is None:
            raise JobNotFound(uid)
        return row

    def _require_job(self, s: Session, uid: str) -> None:
        if s.scalar(select(func.count()).select_from(JobRow).where(JobRow.uid == uid)) == 0:
            raise JobNotFound(uid)

    # -- jobs ------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        dag: DagSpec,
        source: str,
        constraint: UserConstraint | None = None,
        name: str | None = None,
        node: str = "cloud",
        source_info: dict[str, Any] | None = None,
        fixed_plan: Plan | None = None,
        seed_node_addr: str | None = None,
        video_id: str | int | None = None,
        uid: str | None = None,
        reason: str = "submitted",
    ) -> Job:
        """Store a validated job in UNSCHED, with its first transition (from nothing)."""
        uid = uid or new_job_uid()
        now = utcnow()
        try:
            return self._create_job(uid, now, dag, source, constraint, name, node, source_info, fixed_plan,
                                    seed_node_addr, video_id, reason)
        except IntegrityError:  # the same uid created by another request meanwhile
            raise JobExists(uid) from None

    def _create_job(self, uid, now, dag, source, constraint, name, node, source_info, fixed_plan,
                    seed_node_addr, video_id, reason) -> Job:
        with self._sessions.writer() as s, s.begin():
            if s.get(JobRow, uid) is not None:
                raise JobExists(uid)
            row = JobRow(
                uid=uid,
                name=name or uid,
                source=str(source),
                source_info=source_info,
                dag=dag.model_dump(mode="json"),
                constraint=(constraint or UserConstraint()).model_dump(mode="json"),
                fixed_plan=fixed_plan.model_dump(mode="json") if fixed_plan else None,
                state=JobState.UNSCHED.value,
                state_reason=reason,
                node=node,
                seed_node_addr=seed_node_addr,
                video_id=None if video_id is None else str(video_id),
                stats={},
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.add(TransitionRow(job_uid=uid, at=now, from_state=None, to_state=JobState.UNSCHED.value, reason=reason))
            s.flush()
            return _job(row)

    def get_job(self, uid: str) -> Job:
        with self._sessions.reader() as s:
            return _job(self._job_row(s, uid))

    def find_job(self, uid: str) -> Job | None:
        try:
            return self.get_job(uid)
        except JobNotFound:
            return None

    def list_jobs(
        self,
        state: JobState | str | Iterable[JobState | str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """Newest first; `state` is one state or several. Returns (page, total matching)."""
        where = []
        if state is not None:
            states = [state] if isinstance(state, (str, JobState)) else list(state)
            where.append(JobRow.state.in_([JobState(x).value for x in states]))
        with self._sessions.reader() as s:
            total = s.scalar(select(func.count()).select_from(JobRow).where(*where))
            rows = s.scalars(
                select(JobRow).where(*where).order_by(JobRow.created_at.desc(), JobRow.uid).limit(limit).offset(offset)
            ).all()
            return [_job(r) for r in rows], int(total or 0)

    def active_jobs(self) -> list[Job]:
        """UNSCHED and EXEC jobs, oldest first: what the scheduler loop plans."""
        with self._sessions.reader() as s:
            rows = s.scalars(
                select(JobRow)
                .where(JobRow.state.in_([JobState.UNSCHED.value, JobState.EXEC.value]))
                .order_by(JobRow.created_at, JobRow.uid)
            ).all()
            return [_job(r) for r in rows]

    def delete_job(self, uid: str) -> None:
        """Remove a job with its transitions, plans, results and observations."""
        with self._sessions.writer() as s, s.begin():
            self._job_row(s, uid, lock=True)
            for model in (ObservationRow, FrameResultRow, PlanRow, TransitionRow):
                s.execute(delete(model).where(model.job_uid == uid))
            s.execute(delete(JobRow).where(JobRow.uid == uid))

    def transition(self, uid: str, new_state: JobState | str, reason: str) -> Job:
        """The one writer of job state. Raises JobNotFound, IllegalTransition."""
        new_state = JobState(new_state)
        now = utcnow()
        with self._sessions.writer() as s, s.begin():
            row = self._job_row(s, uid, lock=True)
            old = JobState(row.state)
            check_transition(uid, old, new_state)
            row.state, row.state_reason, row.updated_at = new_state.value, reason, now
            s.add(TransitionRow(job_uid=uid, at=now, from_state=old.value, to_state=new_state.value, reason=reason))
            s.flush()
            log.info("job %s: %s -> %s (%s)", uid, old.value, new_state.value, reason)
            return _job(row)

    def transitions(self, uid: str) -> list[Transition]:
        with self._sessions.reader() as s:
            self._require_job(s, uid)
            rows = s.scalars(select(TransitionRow).where(TransitionRow.job_uid == uid).order_by(TransitionRow.id)).all()
            return [
                Transition(
                    at=_aware(r.at),
                    from_state=JobState(r.from_state) if r.from_state else None,
                    to_state=JobState(r.to_state),
                    reason=r.reason,
                )
                for r in rows
            ]

    def update_constraint(self, uid: str, constraint: UserConstraint) -> Job:
        """Raises JobNotFound, JobEnded."""
        with self._sessions.writer() as s, s.begin():
            row = self._job_row(s, uid, lock=True)
            if JobState(row.state).ended:
                raise JobEnded(uid, JobState(row.state))
            row.constraint = constraint.model_dump(mode="json")
            row.updated_at = utcnow()
            s.flush()
            return _job(row)

    def set_source_info(self, uid: str, source_info: dict[str, Any]) -> None:
        """Width/height/fps of the source once a generator has opened it."""
        with self._sessions.writer() as s, s.begin():
            row = self._job_row(s, uid, lock=True)
            row.source_info = dict(source_info)
            row.updated_at = utcnow()

    def update_stats(self, uid: str, stats: dict[str, Any]) -> dict[str, Any]:
        """Shallow-merge `stats` into the job's stats; returns the merged dict."""
        with self._sessions.writer() as s, s.begin():
            row = self._job_row(s, uid, lock=True)
            merged = {**(row.stats or {}), **stats}
            row.stats = merged  # a new dict, so the JSON column is seen as changed
            row.updated_at = utcnow()
            return merged

    # -- plans -----------------------------------------------------------------------------

    def add_plan(self, uid: str, plan: Plan) -> int:
        """Store a plan as the job's current one. Raises JobNotFound, JobEnded."""
        with self._sessions.writer() as s, s.begin():
            row = self._job_row(s, uid, lock=True)
            if JobState(row.state).ended:
                raise JobEnded(uid, JobState(row.state))
            dumped = plan.model_dump(mode="json")
            prow = PlanRow(
                job_uid=uid, created_at=utcnow(), planner=plan.planner, reason=plan.reason,
                video_conf=dumped["video_conf"], flow_mapping=dumped["flow_mapping"],
            )
            s.add(prow)
            s.flush()
            return prow.id

    def current_plan(self, uid: str) -> tuple[int, Plan] | None:
        with self._sessions.reader() as s:
            row = s.scalars(select(PlanRow).where(PlanRow.job_uid == uid).order_by(PlanRow.id.desc()).limit(1)).first()
            if row is None:
                return None
            stored = _plan(row)
            return stored.id, stored.plan

    def get_plan(self, plan_id: int) -> StoredPlan | None:
        with self._sessions.reader() as s:
            row = s.get(PlanRow, plan_id)
            return _plan(row) if row else None

    def list_plans(self, uid: str, limit: int = 50) -> list[StoredPlan]:
        """Newest first."""
        with self._sessions.reader() as s:
            self._require_job(s, uid)
            rows = s.scalars(select(PlanRow).where(PlanRow.job_uid == uid).order_by(PlanRow.id.desc()).limit(limit))
            return [_plan(r) for r in rows]

    # -- frame results ---------------------------------------------------------------------

    def save_frames(self, uid: str, records: Sequence[FrameRecord]) -> int:
        """Store per-frame results; a (job, seq) already stored is skipped, so a redelivered
        frame is stored once. Returns how many rows were new. Raises JobNotFound."""
        for r in records:
            if r.job_uid != uid:
                raise ValueError(f"frame {r.seq} belongs to job {r.job_uid!r}, not {uid!r}")
        rows = [_frame_row(r) for r in records]
        if not rows:
            return 0
        new = 0
        with self._sessions.writer() as s, s.begin():
            self._require_job(s, uid)
            for i in range(0, len(rows), _INSERT_CHUNK):
                stmt = (
                    self._insert(FrameResultRow)
                    .values(rows[i : i + _INSERT_CHUNK])
                    .on_conflict_do_nothing(index_elements=["job_uid", "seq"])
                    .returning(FrameResultRow.seq)
                )
                new += len(s.execute(stmt).all())
        return new

    def _frames(self, stmt: Select) -> list[FrameRecord]:
        with self._sessions.reader() as s:
            return [_frame(r) for r in s.scalars(stmt)]

    def results(self, uid: str, after_seq: int = -1, limit: int = 100) -> list[FrameRecord]:
        """Frames with seq > after_seq, in seq order."""
        return self._frames(
            select(FrameResultRow)
            .where(FrameResultRow.job_uid == uid, FrameResultRow.seq > after_seq)
            .order_by(FrameResultRow.seq)
            .limit(limit)
        )

    def recent_results(self, uid: str, n: int = 10) -> list[FrameRecord]:
        """The last n frames, in seq order."""
        frames = self._frames(
            select(FrameResultRow).where(FrameResultRow.job_uid == uid).order_by(FrameResultRow.seq.desc()).limit(n)
        )
        return frames[::-1]

    def last_result_position(self, uid: str) -> tuple[int, float] | None:
        """(highest stored seq, latest capture_ts of a stored frame): where a resumed generator
        continues. Lost frames have no capture time, so the two maxima are taken separately."""
        with self._sessions.reader() as s:
            row = s.execute(
                select(func.max(FrameResultRow.seq), func.max(FrameResultRow.capture_ts))
                .where(FrameResultRow.job_uid == uid)
            ).first()
            return (int(row[0]), float(row[1])) if row and row[0] is not None else None

    def result_count(self, uid: str) -> int:
        with self._sessions.reader() as s:
            return int(s.scalar(select(func.count()).select_from(FrameResultRow).where(FrameResultRow.job_uid == uid)))

    # -- observations ----------------------------------------------------------------------

    def add_observations(self, uid: str, observations: Iterable[Observation]) -> int:
        rows = [_observation_row(uid, o) for o in observations]
        if not rows:
            return 0
        with self._sessions.writer() as s, s.begin():
            self._require_job(s, uid)
            for i in range(0, len(rows), _INSERT_CHUNK):
                s.execute(self._insert(ObservationRow).values(rows[i : i + _INSERT_CHUNK]))
        return len(rows)

    def recent_observations(self, uid: str, limit: int = 500) -> list[Observation]:
        """The newest `limit` observations, oldest first."""
        with self._sessions.reader() as s:
            rows = s.scalars(
                select(ObservationRow).where(ObservationRow.job_uid == uid).order_by(ObservationRow.id.desc()).limit(limit)
            ).all()
            return [_observation(r) for r in reversed(rows)]

    def prune_observations(self, uid: str, keep: int = 5000) -> int:
        """Delete all but the newest `keep` observations of a job; returns how many went."""
        with self._sessions.writer() as s, s.begin():
            cutoff = s.scalar(
                select(ObservationRow.id).where(ObservationRow.job_uid == uid)
                .order_by(ObservationRow.id.desc()).offset(keep).limit(1)
            )
            if cutoff is None:
                return 0
            res = s.execute(delete(ObservationRow).where(ObservationRow.job_uid == uid, ObservationRow.id <= cutoff))
            return int(res.rowcount or 0)

    # -- nodes -----------------------------------------------------------------------------

    def upsert_node(
        self,
        name: str,
        role: str,
        ip: str,
        address: str,
        video_sources: Iterable[dict[str, Any]] = (),
        services: Iterable[str] = (),
        resources: dict[str, Any] | None = None,
    ) -> NodeRecord:
        """Register (or re-register) a node; it is alive from now."""
        if role not in NODE_ROLES:
            raise ValueError(f"role must be one of {', '.join(NODE_ROLES)}, got {role!r}")
        values = {
            "name": name, "role": role, "ip": ip, "address": address,
            "video_sources": [dict(v) for v in video_sources], "services": list(services),
            "resources": dict(resources or {}), "last_heartbeat": utcnow(), "alive": True,
        }
        stmt = self._insert(NodeRow).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={k: v for k, v in values.items() if k != "name"})
        with self._sessions.writer() as s, s.begin():
            s.execute(stmt)
            return _node(s.get(NodeRow, name, populate_existing=True))

    def heartbeat(self, name: str, resources: dict[str, Any] | None = None) -> bool:
        """Mark a node alive now (merging `resources`); False if the node never registered."""
        with self._sessions.writer() as s, s.begin():
            row = s.get(NodeRow, name, with_for_update=True)
            if row is None:
                return False
            if resources:
                row.resources = {**(row.resources or {}), **resources}
            row.last_heartbeat, row.alive = utcnow(), True
            return True

    def get_node(self, name: str) -> NodeRecord | None:
        with self._sessions.reader() as s:
            row = s.get(NodeRow, name)
            return _node(row) if row else None

    def node_by_address(self, address: str) -> NodeRecord | None:
        """The node whose API answers at "ip:port" (the seed's node_addr)."""
        with self._sessions.reader() as s:
            row = s.scalars(select(NodeRow).where(NodeRow.address == address).order_by(NodeRow.name).limit(1)).first()
            return _node(row) if row else None

    def list_nodes(self, alive_only: bool = False) -> list[NodeRecord]:
        """All registered nodes by name; `.info()` gives the planner's NodeInfo."""
        stmt = select(NodeRow).order_by(NodeRow.name)
        if alive_only:
            stmt = stmt.where(NodeRow.alive.is_(True))
        with self._sessions.reader() as s:
            return [_node(r) for r in s.scalars(stmt)]

    def mark_stale_nodes(self, max_age_s: float) -> list[str]:
        """Mark alive nodes without a heartbeat for max_age_s as down; returns their names."""
        cutoff = utcnow() - timedelta(seconds=max_age_s)
        with self._sessions.writer() as s, s.begin():
            names = list(s.scalars(
                select(NodeRow.name).where(NodeRow.alive.is_(True), NodeRow.last_heartbeat < cutoff).with_for_update()
            ))
            if names:
                s.execute(update(NodeRow).where(NodeRow.name.in_(names)).values(alive=False))
                log.warning("nodes down (no heartbeat for %.0f s): %s", max_age_s, ", ".join(names))
            return names

    def delete_node(self, name: str) -> bool:
        with self._sessions.writer() as s, s.begin():
            return bool(s.execute(delete(NodeRow).where(NodeRow.name == name)).rowcount)
