"""The job store: every database read and write of the tracker goes through `Store`.

Thread-safe: each call opens its own short session (request threads, the scheduler thread
and the aggregator thread share one Store). Job state changes only in `transition()`.
Calls return plain dataclasses and pydantic models, never ORM objects.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from scheduler.interface import Plan, UserConstraint
from services.dag import DagSpec
from tracker.store import migrate
from tracker.store.db import SessionFactory, is_sqlite, is_sqlite_memory, make_engine
from tracker.store.frames import FrameTable
from tracker.store.jobs import (
    IllegalTransition,
    Job,
    JobNotFound,
    JobState,
    Transition,
    check_transition,
)
from tracker.store.models import (
    FrameResultRow,
    JobRow,
    ObservationRow,
    PlanRow,
    TransitionRow,
    utcnow,
)
from tracker.store.nodes import NodeTable
from tracker.store.records import (
    JobEnded,
    JobExists,
    NodeRecord,
    StoredPlan,
    aware,
    job_from_row,
    new_job_uid,
    plan_from_row,
)

log = logging.getLogger(__name__)

__all__ = [
    "Store", "StoredPlan", "NodeRecord", "JobExists", "JobEnded", "JobNotFound", "IllegalTransition",
]

class Store(FrameTable, NodeTable):
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
            return job_from_row(row)

    def get_job(self, uid: str) -> Job:
        with self._sessions.reader() as s:
            return job_from_row(self._job_row(s, uid))

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
            return [job_from_row(r) for r in rows], int(total or 0)

    def active_jobs(self) -> list[Job]:
        """UNSCHED and EXEC jobs, oldest first: what the scheduler loop plans."""
        with self._sessions.reader() as s:
            rows = s.scalars(
                select(JobRow)
                .where(JobRow.state.in_([JobState.UNSCHED.value, JobState.EXEC.value]))
                .order_by(JobRow.created_at, JobRow.uid)
            ).all()
            return [job_from_row(r) for r in rows]

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
            return job_from_row(row)

    def transitions(self, uid: str) -> list[Transition]:
        with self._sessions.reader() as s:
            self._require_job(s, uid)
            rows = s.scalars(select(TransitionRow).where(TransitionRow.job_uid == uid).order_by(TransitionRow.id)).all()
            return [
                Transition(
                    at=aware(r.at),
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
            return job_from_row(row)

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
            stored = plan_from_row(row)
            return stored.id, stored.plan

    def get_plan(self, plan_id: int) -> StoredPlan | None:
        with self._sessions.reader() as s:
            row = s.get(PlanRow, plan_id)
            return plan_from_row(row) if row else None

    def list_plans(self, uid: str, limit: int = 50) -> list[StoredPlan]:
        """Newest first."""
        with self._sessions.reader() as s:
            self._require_job(s, uid)
            rows = s.scalars(select(PlanRow).where(PlanRow.job_uid == uid).order_by(PlanRow.id.desc()).limit(limit))
            return [plan_from_row(r) for r in rows]
