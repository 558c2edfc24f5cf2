"""The job store: every database read and write of the tracker goes through `Store`.

Thread-safe: each call opens its own short session (request threads, the scheduler thread
and the aggregator thread share one Store). Job state changes only in `transition()`.
Calls return plain dataclasses and pydantic models, never ORM objects.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

from sqlalchemy import Select, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from scheduler.interface import Observation, Plan, UserConstraint
from services.dag import DagSpec
from services.records import FrameRecord
from tracker.store import migrate
from tracker.store.db import SessionFactory, is_sqlite, is_sqlite_memory, make_engine
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
    frame_from_row,
    frame_row,
    job_from_row,
    new_job_uid,
    observation_from_row,
    observation_row,
    plan_from_row,
)

log = logging.getLogger(__name__)

__all__ = [
    "Store", "StoredPlan", "NodeRecord", "JobExists", "JobEnded", "JobNotFound", "IllegalTransition",
]

_INSERT_CHUNK = 500  # rows per multi-row INSERT (SQLite caps bound parameters)


class Store(NodeTable):
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

    # -- frame results ---------------------------------------------------------------------

    def save_frames(self, uid: str, records: Sequence[FrameRecord]) -> int:
        """Store per-frame results; a (job, seq) already stored is skipped, so a redelivered
        frame is stored once. Returns how many rows were new. Raises JobNotFound."""
        for r in records:
            if r.job_uid != uid:
                raise ValueError(f"frame {r.seq} belongs to job {r.job_uid!r}, not {uid!r}")
        rows = [frame_row(r) for r in records]
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

    def replace_lost_frames(self, uid: str, records: Sequence[FrameRecord]) -> int:
        """Store frames that arrived after they were declared lost: each replaces its lost row
        (or is inserted if that row is not stored yet); a row that holds a result stays.
        Returns how many rows were written."""
        rows = [frame_row(r) for r in records if r.job_uid == uid]
        if not rows:
            return 0
        written = 0
        with self._sessions.writer() as s, s.begin():
            self._require_job(s, uid)
            for row in rows:
                stmt = self._insert(FrameResultRow).values(row)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["job_uid", "seq"],
                    set_={k: stmt.excluded[k] for k in row if k not in ("job_uid", "seq")},
                    where=FrameResultRow.lost.is_(True),
                ).returning(FrameResultRow.seq)
                written += len(s.execute(stmt).all())
        return written

    def _frames(self, stmt: Select) -> list[FrameRecord]:
        with self._sessions.reader() as s:
            return [frame_from_row(r) for r in s.scalars(stmt)]

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

    def result_counts(self, uid: str) -> tuple[int, int]:
        """(frames stored with a result, frames recorded lost) of a job."""
        with self._sessions.reader() as s:
            rows = dict(s.execute(select(FrameResultRow.lost, func.count()).where(FrameResultRow.job_uid == uid)
                                  .group_by(FrameResultRow.lost)).all())
        return int(rows.get(False, 0)), int(rows.get(True, 0))

    def result_count(self, uid: str) -> int:
        with self._sessions.reader() as s:
            return int(s.scalar(select(func.count()).select_from(FrameResultRow).where(FrameResultRow.job_uid == uid)))

    # -- observations ----------------------------------------------------------------------

    def add_observations(self, uid: str, observations: Iterable[Observation]) -> int:
        rows = [observation_row(uid, o) for o in observations]
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
            return [observation_from_row(r) for r in reversed(rows)]

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
