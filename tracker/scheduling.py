"""Wires the scheduler loop (scheduler/, which knows nothing of the DB) to the store."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from scheduler.interface import Plan, Planner, PlanningInput
from tracker.jobs import JobNotFound
from tracker.store import JobEnded

if TYPE_CHECKING:
    from tracker.runtime import Runtime

log = logging.getLogger(__name__)


class StoreJobSource:
    """The scheduler's view of this tracker's jobs: active jobs without a fixed plan."""

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime

    def running_jobs(self) -> list[PlanningInput]:
        jobs = [j for j in self.runtime.store.active_jobs() if j.fixed_plan is None and j.source_info]
        return [self.runtime.planning_input(j) for j in jobs]

    def save_plan(self, job_uid: str, plan: Plan) -> None:
        current = self.runtime.store.current_plan(job_uid)
        if current and current[1].video_conf == plan.video_conf and current[1].flow_mapping == plan.flow_mapping:
            return  # same decision: keep the plan id, so frames keep their plan
        try:
            self.runtime.save_plan(job_uid, plan)
        except (JobEnded, JobNotFound) as exc:
            log.info("plan for %s not saved: %s", job_uid, exc)


PLANNERS = ("bayes", "bayes-notrack", "golden", "pid", "greedy")


def planner_factory(name: str = "bayes") -> Callable[[], Planner]:
    """A factory, not a planner: the loop builds its planner on its own thread. The Bayesian
    planner samples in a niced process of its own (scheduler/sampler_process.py), so that
    compiling and sampling never hold this process's GIL while the data plane runs."""
    from scheduler import baselines
    from scheduler.bayes_planner import BayesPlanner
    from scheduler.sampler_process import ProcessBayesModel

    makers = {"bayes": lambda: BayesPlanner(ProcessBayesModel()),
              "bayes-notrack": lambda: BayesPlanner(ProcessBayesModel(), tracking=False),
              "golden": baselines.GoldenPlanner, "pid": baselines.PIDPlanner,
              "greedy": baselines.GreedyPlanner}
    if name not in makers:
        raise ValueError(f"unknown planner {name!r}; one of {', '.join(PLANNERS)}")
    return makers[name]


def default_planner_factory() -> Callable[[], Planner]:
    return planner_factory("bayes")


def make_scheduler_loop(runtime: "Runtime", planner_factory: Callable[[], Planner] | None, interval_s: float = 2.0):
    from scheduler.loop import SchedulerLoop

    return SchedulerLoop(planner_factory or default_planner_factory(), StoreJobSource(runtime), interval_s=interval_s)
