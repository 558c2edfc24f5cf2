"""The job state machine. Only `Store.transition()` changes a job's state, through `check_transition`."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from scheduler.interface import Plan, UserConstraint
from services.dag import DagSpec, StageSpec


class JobState(str, Enum):
    UNSCHED = "UNSCHED"  # stored, no plan yet (or lost its plan, e.g. its node went down)
    EXEC = "EXEC"  # has a plan; its generator runs
    DONE = "DONE"  # the source ended and every frame was accounted for
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def ended(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.UNSCHED: frozenset({JobState.EXEC, JobState.FAILED, JobState.CANCELLED}),
    JobState.EXEC: frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.UNSCHED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class JobNotFound(LookupError):
    def __init__(self, job_uid: str) -> None:
        super().__init__(f"no job {job_uid!r}")
        self.job_uid = job_uid


class IllegalTransition(RuntimeError):
    def __init__(self, job_uid: str, old: JobState, new: JobState) -> None:
        super().__init__(f"job {job_uid!r} cannot go from {old.value} to {new.value}")
        self.job_uid, self.old, self.new = job_uid, old, new


def check_transition(job_uid: str, old: JobState, new: JobState) -> None:
    if new not in ALLOWED[old]:
        raise IllegalTransition(job_uid, old, new)


def dag_unchecked(data: dict[str, Any]) -> DagSpec:
    """Rebuild a stored (validated at submission) DAG without re-validating it against the
    registry, so a job stays readable after a service is renamed or removed."""
    stages = [StageSpec.model_construct(**s) for s in data["stages"]]
    return DagSpec.model_construct(generator=data.get("generator", "SingleFrameGenerator"), stages=stages)


@dataclass(frozen=True)
class Transition:
    at: datetime
    from_state: JobState | None
    to_state: JobState
    reason: str

    def to_json(self) -> dict:
        return {
            "at": self.at.isoformat(),
            "from": self.from_state.value if self.from_state else None,
            "to": self.to_state.value,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Job:
    uid: str
    name: str
    source: str
    source_info: dict[str, Any] | None  # {width, height, fps} once known
    dag: DagSpec
    constraint: UserConstraint
    fixed_plan: Plan | None
    state: JobState
    state_reason: str
    node: str  # the node whose generator reads the source
    created_at: datetime
    updated_at: datetime
    stats: dict[str, Any] = field(default_factory=dict)
    seed_node_addr: str | None = None
    video_id: str | None = None

    @property
    def ended(self) -> bool:
        return self.state.ended

    # Mapping-style reads (job["uid"], job.get("fixed_plan")) for code that treats a job as a
    # record; "reason" is state_reason. Values are the typed attributes, not their JSON.
    def __getitem__(self, key: str) -> Any:
        if key == "reason":
            return self.state_reason
        if key.startswith("_") or key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def to_json(self) -> dict:
        return {
            "uid": self.uid,
            "name": self.name,
            "source": self.source,
            "source_info": self.source_info,
            "node": self.node,
            "dag": self.dag.model_dump(mode="json"),
            "constraint": self.constraint.model_dump(mode="json"),
            "fixed_plan": self.fixed_plan.model_dump(mode="json") if self.fixed_plan else None,
            "state": self.state.value,
            "reason": self.state_reason,
            "stats": self.stats,
            "seed_node_addr": self.seed_node_addr,
            "video_id": self.video_id,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }
