"""What the scheduler loop (scheduler/, which knows nothing of the store) sees of this
tracker's jobs: each active job's planning input, and where a new plan goes."""
from __future__ import annotations

import logging
import time
from typing import Callable

from scheduler.interface import Observation, Plan, Planner, PlanningInput, SourceInfo
from scheduler.loop import SchedulerLoop
from scheduler.observations import profile_observations
from scheduler.registry import planner_factory
from services import node_profile
from services.settings import Settings
from tracker.runtime.job_control import JobControl
from tracker.runtime.node_load import NodeLoad
from tracker.store import JobEnded, Store
from tracker.store.jobs import Job, JobNotFound, JobState

log = logging.getLogger(__name__)

PROFILES_EVERY_S = 10.0  # how often `vdag profile` results are re-read from data_dir/profiles


class PlanningInputs:
    """A job's PlanningInput from the store, the node table and this node's measured profiles."""

    def __init__(self, settings: Settings, store: Store, node_load: NodeLoad, paced: bool = True) -> None:
        self.settings = settings
        self.paced = paced  # the generators play sources in real time (pace > 0)
        self.store = store
        self.node_load = node_load
        self._profiles: tuple[float, dict[str, dict]] = (float("-inf"), {})

    def _profile_observations(self, job: Job, nodes: set[str]) -> list[Observation]:
        """`vdag profile` measurements of the nodes this job may use, as the oldest latency
        observations (ts 0): the planner starts from this node's hardware, and the job's own
        measurements, newer, take over as they come."""
        now = time.monotonic()
        if now - self._profiles[0] > PROFILES_EVERY_S:
            self._profiles = (now, node_profile.load_all(self.settings.data_dir / "profiles"))
        return profile_observations(self._profiles[1], job.dag, nodes)

    def __call__(self, job: Job) -> PlanningInput:
        now = time.time()
        nodes = [n.info() for n in self.store.list_nodes()]
        for n in nodes:  # see tracker.runtime.node_load
            shares = self.node_load.shares(job.uid, n.name, now)
            n.cpu_ratio, n.own_load = shares if shares is not None else (0.0, None)
        current = self.store.current_plan(job.uid)
        src = job.source_info or {}
        return PlanningInput(
            job_uid=job.uid,
            dag=job.dag,
            nodes=nodes,
            source=SourceInfo(**{k: src[k] for k in ("width", "height", "fps") if k in src}, paced=self.paced),
            constraint=job.constraint,
            observations=self._profile_observations(job, {n.name for n in nodes})
            + self.store.recent_observations(job.uid, limit=500),
            last_plan=current[1] if current else None,
            now=now,
        )


class StoreJobSource:
    """The scheduler's view of this tracker's jobs: active jobs without a fixed plan."""

    def __init__(self, store: Store, inputs: Callable[[Job], PlanningInput], control: JobControl) -> None:
        self.store = store
        self.inputs = inputs
        self.control = control

    def running_jobs(self) -> list[PlanningInput]:
        return [self.inputs(j) for j in self.store.active_jobs() if j.fixed_plan is None and j.source_info]

    def save_plan(self, job_uid: str, plan: Plan) -> None:
        try:
            job = self.store.get_job(job_uid)
            current = self.store.current_plan(job_uid)
            same = current and current[1].video_conf == plan.video_conf and current[1].flow_mapping == plan.flow_mapping
            if same and job.state is JobState.EXEC:
                return  # same decision: keep the plan id, so frames keep their plan
            self.control.apply_plan(job_uid, plan)
        except (JobEnded, JobNotFound) as exc:
            log.info("plan for %s not saved: %s", job_uid, exc)


def make_scheduler_loop(source: StoreJobSource, factory: Callable[[], Planner] | None,
                        interval_s: float = 2.0) -> SchedulerLoop:
    return SchedulerLoop(factory or planner_factory("bayes"), source, interval_s=interval_s)
