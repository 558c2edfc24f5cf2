"""The one module that moves jobs between states, with the side effects each move has.

    submit      -> UNSCHED (a fixed plan: -> EXEC at once; a source that cannot open: -> FAILED)
    apply_plan  UNSCHED -> EXEC, or a new plan for a running job
    plan_lost   EXEC -> UNSCHED: a node of its plan went down; the generator pauses until re-planned
    finish      EXEC -> DONE | FAILED (end of video, source failure; from this node or an edge)
    cancel      -> CANCELLED
    delete      -> CANCELLED, then the job and everything it stored are gone

Request handlers, the scheduler, node upkeep and edge routes call these; nothing else
writes job state. What running work does on each move is a JobEffects: the Runtime on a
tracker that runs jobs, RecordedEffects on an API-only one (tools, tests).
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

from scheduler.interface import Plan, UserConstraint
from tracker.store import JobEnded, Store
from tracker.store.jobs import IllegalTransition, Job, JobNotFound, JobState

log = logging.getLogger(__name__)


class JobEffects(Protocol):
    def job_submitted(self, job: Job) -> str | None: ...  # read the source's size; why it cannot open, or None

    def plan_applied(self, job_uid: str, plan_id: int, plan: Plan, started: bool) -> None: ...  # started: -> EXEC

    def job_settling(self, job_uid: str) -> None: ...  # store what has arrived before the job ends

    def generator_paused(self, job_uid: str) -> None: ...  # its plan is lost: stop reading the source

    def job_stopped(self, job_uid: str) -> None: ...  # ended: stop its generator, free its per-job state

    def job_deleted(self, job_uid: str) -> None: ...  # gone: drop cached results and viewers

    def replan(self, job_uid: str) -> None: ...  # plan it now (constraint changed, node down, asked to)

    # Its generator restarted on an edge at first_seq; the numbers from sent_before on may be unused.
    def generator_restarted(self, job_uid: str, sent_before: int, first_seq: int) -> None: ...


class RecordedEffects:
    """For an API-only tracker: runs nothing, records (effect, job_uid) for whoever asks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def job_submitted(self, job: Job) -> str | None:
        self.calls.append(("submitted", job.uid))
        return None

    def plan_applied(self, job_uid: str, plan_id: int, plan: Plan, started: bool) -> None:
        self.calls.append(("plan", job_uid))

    def job_settling(self, job_uid: str) -> None:
        self.calls.append(("settling", job_uid))

    def generator_paused(self, job_uid: str) -> None:
        self.calls.append(("paused", job_uid))

    def job_stopped(self, job_uid: str) -> None:
        self.calls.append(("stopped", job_uid))

    def job_deleted(self, job_uid: str) -> None:
        self.calls.append(("deleted", job_uid))

    def replan(self, job_uid: str) -> None:
        self.calls.append(("replan", job_uid))

    def generator_restarted(self, job_uid: str, sent_before: int, first_seq: int) -> None:
        self.calls.append(("generator restarted", job_uid))


class JobControl:
    def __init__(self, store: Store, effects: JobEffects | None = None) -> None:
        self.store = store
        self.effects: JobEffects = effects if effects is not None else RecordedEffects()

    def submit(self, **fields: Any) -> Job:
        """Store a validated job (tracker.web.submit checks it first) and start what it needs."""
        job = self.store.create_job(**fields)
        failure = self.effects.job_submitted(job)
        if failure:
            self.finish(job.uid, JobState.FAILED, failure)
        elif job.fixed_plan is not None:
            self.apply_plan(job.uid, job.fixed_plan)
        else:
            self.effects.replan(job.uid)
        return self.store.get_job(job.uid)

    def apply_plan(self, job_uid: str, plan: Plan) -> int:
        """Store a plan and put it in force; raises JobEnded, JobNotFound."""
        plan_id = self.store.add_plan(job_uid, plan)
        started = self.store.get_job(job_uid).state is JobState.UNSCHED
        if started:
            self.store.transition(job_uid, JobState.EXEC, f"planned by {plan.planner}")
        self.effects.plan_applied(job_uid, plan_id, plan, started)
        return plan_id

    def plan_lost(self, job_uid: str, reason: str) -> bool:
        """A node of the job's plan is down: back to UNSCHED until the planner finds another plan."""
        try:
            job = self.store.get_job(job_uid)
            if job.state is not JobState.EXEC or job.fixed_plan is not None:
                return False  # a fixed plan is the user's: it keeps running
            self.store.transition(job_uid, JobState.UNSCHED, reason)
        except (JobNotFound, IllegalTransition) as exc:  # ended or deleted meanwhile
            log.info("job %s keeps its state: %s", job_uid, exc)
            return False
        self.effects.generator_paused(job_uid)
        self.effects.replan(job_uid)
        return True

    def change_constraint(self, job_uid: str, constraint: UserConstraint) -> Job:
        job = self.store.update_constraint(job_uid, constraint)  # JobEnded -> 409
        self.effects.replan(job_uid)
        return job

    def request_plan(self, job_uid: str) -> None:
        self.effects.replan(job_uid)

    def reserve_seqs(self, job_uid: str, until: int, restarted: tuple[int, int] | None = None) -> None:
        """Record that the job's generator may use sequence numbers below `until`
        (tracker.runtime.resume); `restarted` = (sent_before, first_seq) when it just (re)started.
        Raises JobNotFound, JobEnded."""
        state = self.store.get_job(job_uid).state
        if state.ended:
            raise JobEnded(job_uid, state)
        self.store.update_stats(job_uid, {"seq_reserved": until})
        if restarted is not None:
            self.effects.generator_restarted(job_uid, *restarted)

    def finish(self, job_uid: str, state: JobState, reason: str) -> None:
        """The generator ended (end of video, source failure): store what arrived, then move."""
        self.effects.job_settling(job_uid)
        try:
            self.store.transition(job_uid, state, reason)
            log.info("job %s %s: %s", job_uid, state.value, reason)
        except (JobNotFound, IllegalTransition) as exc:  # cancelled meanwhile, or deleted
            log.info("job %s not moved to %s: %s", job_uid, state.value, exc)
        self.effects.job_stopped(job_uid)

    def cancel(self, job_uid: str, reason: str = "cancelled by the user") -> Job:
        job = self.store.get_job(job_uid)
        if job.ended:
            raise JobEnded(job_uid, job.state)
        job = self.store.transition(job_uid, JobState.CANCELLED, reason)
        self.effects.job_stopped(job_uid)
        return job

    def delete(self, job_uid: str) -> None:
        job = self.store.get_job(job_uid)
        if not job.ended:
            self.store.transition(job_uid, JobState.CANCELLED, "deleted by the user")
        self.effects.job_stopped(job_uid)
        self.store.delete_job(job_uid)
        self.effects.job_deleted(job_uid)
