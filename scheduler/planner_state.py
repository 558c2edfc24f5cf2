"""What the Bayesian planner keeps between decisions: per job, and per candidate set."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scheduler import knobs
from scheduler.interface import Plan
from scheduler.job_accuracy import JobAccuracy
from scheduler.plan_memory import PlanMemory
from scheduler.plan_probe import ProbeState


@dataclass
class JobState:
    """One job's decision state (scheduler/bayes_planner.py)."""

    constraint: tuple[float, float] | None = None
    nodes: frozenset[str] = frozenset()
    rounds: int = 0
    last_explore: int = -(10**9)
    shift_round: int = -(10**9)
    shift_why: str = ""
    stale: dict[str, float] = field(default_factory=dict)  # node -> drop this job's obs there before ts
    accuracy: JobAccuracy | None = None    # this job's correction of the pooled F1 model
    priors_seen: tuple = ()
    last_plan: Plan | None = None          # the last plan passed in, its candidate set and index there
    last_cands: knobs.Candidates | None = None
    last_index: int | None = None
    memory: PlanMemory = field(default_factory=PlanMemory)  # what the plans it ran did to its frames' delay
    probe: ProbeState = field(default_factory=ProbeState)   # a ruled-out plan it tries on purpose


@dataclass(frozen=True)
class CandidateArrays:
    """Per candidate-set arrays that do not change between decisions."""

    cost: np.ndarray          # [C] compute share of golden
    nbytes: np.ndarray        # [C] modelled JPEG bytes
    grid: np.ndarray          # [C] grid row of each candidate
    rows: np.ndarray          # [R] first candidate of each grid row
    acc_x: np.ndarray         # [R, 6] grade, log h ratio, staleness (s), log q, tracking (s), tracked share per grid row
    frames: np.ndarray        # [C] frames in a planning window
    memo: dict = field(default_factory=dict)  # name -> (key, value): results reused while the key holds

    def cached(self, name: str, key, compute):
        """compute() once per `key` for this candidate set (e.g. per posterior version)."""
        hit = self.memo.get(name)
        if hit is None or hit[0] != key:
            hit = self.memo[name] = (key, compute())
        return hit[1]
