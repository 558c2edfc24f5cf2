"""The planners a tracker can run, by name (`vdag tracker --planner NAME`)."""
from __future__ import annotations

from typing import Callable

from scheduler.interface import Planner

PLANNERS = ("bayes", "bayes-notrack", "golden", "pid", "greedy")


def planner_factory(name: str = "bayes") -> Callable[[], Planner]:
    """A factory, not a planner: the loop builds its planner on its own thread. The Bayesian
    planner samples in a niced process of its own (scheduler/sampler_process.py), so that
    compiling and sampling never hold the tracker's GIL while the data plane runs."""
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
