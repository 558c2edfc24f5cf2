"""Trying, briefly and on purpose, a more accurate plan that the latency model rules out.

The model reads a plan's service times from the frames of the plans the job ran. On a shared
2-core host those are not the same under every plan: vtest.avi, OpenVINO, D = 1 s, on an Intel
Xeon the detector took 0.063-0.073 s a frame while every source frame was detected (golden ran
60 s with no frame late, F1 0.977) and 0.09-0.14 s while every other one was; from the slower
frames, detecting every frame reads as past the utilisation ceiling, and a plan the job never
ran has no frames of its own to prove otherwise (scheduler/plan_memory.py). Bayes held tracked
plans at F1 0.950-0.953. A probe runs such a plan for a round or two, and its own frames decide:
proven (plan memory) -> it stays; a frame past PROBE_DELAY_SHARE x D, or not proven within
PROBE_ROUNDS -> back, and that plan is not probed again for a while (doubling).

A probe is bounded by what it would cost if the model were right (probe_delay_s): its frames'
service and transfer, the frames it finds ahead (one to three as utilisation nears 1), and the
backlog a node over its capacity builds until the probe's frames can say so (one planning
window plus D). Only when that stays within
PROBE_DELAY_SHARE x D, and only from a running plan whose own frames met the bound, so there is
a known plan to go back to. (An earlier, unbounded probe at D = 0.5 s queued frames for 1 s
before they could say so: 23 late frames in a 60-s run.)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scheduler.delay import node_work
from scheduler.plan_memory import LATE, PROVEN, PlanKey, PlanMemory, matching

PROBE_F1_GAIN = 0.01      # only a plan at least this much more accurate (E[F1]) than the running one
PROBE_DELAY_SHARE = 0.8   # the worst delay a probe may cause, as a share of D: predicted, and then measured
PROBE_ROUNDS = 2          # rounds a probe has to prove itself
PROBE_EVERY = 5           # rounds between probes (10 s at the scheduler's 2-s interval)
BACKOFF_S = (30.0, 240.0)  # a failed probe's plan rests this long (observation seconds), doubling to the max
CONTINUE, PROVED, FAILED = "continue", "proved", "failed"


@dataclass
class ProbeState:
    """One job's probing (kept in its JobState)."""

    key: PlanKey | None = None            # the plan being probed
    rounds: int = 0                       # rounds it has run
    last_round: int = -(10**9)            # the round the last probe started
    resting: dict[PlanKey, tuple[float, float]] = field(default_factory=dict)  # key -> (until ts, backoff s)

    def start(self, key: PlanKey, round_: int) -> None:
        self.key, self.rounds, self.last_round = key, 1, round_

    def judge(self, memory: PlanMemory, running: PlanKey | None, delay_bound: float, now_ts: float) -> str | None:
        """What the running probe's frames say: PROVED (plan memory's verdict), FAILED (a frame
        past PROBE_DELAY_SHARE x D, or no proof in PROBE_ROUNDS, or the job left it), CONTINUE;
        None when no probe runs. A failed plan rests (BACKOFF_S)."""
        if self.key is None:
            return None
        key, self.key = self.key, None
        verdict = memory.verdict(key, delay_bound, now_ts)
        if running == key and verdict == PROVEN:
            self.resting.pop(key, None)
            return PROVED
        rec = memory.records.get(key)
        slow = rec is not None and max(rec.delays.values(), default=0.0) > PROBE_DELAY_SHARE * delay_bound
        if running != key or verdict == LATE or slow or self.rounds >= PROBE_ROUNDS:
            backoff = self.resting.get(key, (0.0, BACKOFF_S[0] / 2))[1] * 2
            backoff = min(backoff, BACKOFF_S[1])
            self.resting[key] = (now_ts + backoff, backoff)
            return FAILED
        self.key, self.rounds = key, self.rounds + 1
        return CONTINUE

    def rests(self, key: PlanKey, now_ts: float) -> bool:
        hit = self.resting.get(key)
        return hit is not None and now_ts < hit[0]

    def forget(self) -> None:
        """A shift: the world the failures were measured in is gone."""
        self.key, self.resting = None, {}


def probe_delay_s(svc_s: np.ndarray, transfer_s: np.ndarray, peak_rho: np.ndarray, node_svc_s: np.ndarray,
                  feedback_s: float) -> np.ndarray:
    """The worst frame delay of a probe if the model's service times are right: service and
    transfer, the frames found ahead on the busiest node (one from the plan before, up to three
    as utilisation nears 1: AMD EPYC, vtest.avi, D = 0.5 s, tracking every other frame at a
    predicted ~0.95 queued its frames to 0.58 s where one frame ahead predicted 0.38 s), and the
    backlog that builds at peak_rho > 1 until the probe's frames reach the planner (feedback_s)."""
    ahead = 1.0 + 2.0 * np.clip((peak_rho - 0.8) / 0.2, 0.0, 1.0)
    return svc_s + transfer_s + node_svc_s * ahead + np.maximum(peak_rho - 1.0, 0.0) * feedback_s


def probe_target(ef1: np.ndarray, cost: np.ndarray, worst_delay_s: np.ndarray, ef1_running: float,
                 delay_bound: float) -> int | None:
    """The candidate to probe: the most accurate (cheapest among equals) at least PROBE_F1_GAIN
    more accurate than the running plan whose worst delay stays within PROBE_DELAY_SHARE x D;
    None if there is none."""
    ok = (ef1 >= ef1_running + PROBE_F1_GAIN) & (worst_delay_s <= PROBE_DELAY_SHARE * delay_bound)
    if not ok.any():
        return None
    idx = np.flatnonzero(ok)
    top = idx[ef1[idx] >= ef1[idx].max() - 1e-3]
    return int(top[np.argmin(cost[top])])


def probe_candidate(c, probe: ProbeState, remembered: dict[str, np.ndarray], ef1: np.ndarray, cost: np.ndarray,
                    st_mean: np.ndarray, transfer_s: np.ndarray, peak_rho: np.ndarray, running: int, delay_bound: float,
                    now_ts: float, feedback_s: float) -> int | None:
    """The candidate of c (knobs.Candidates) to probe from the running one, if any: more
    accurate, neither judged by its own frames already (plan memory: late or proven) nor
    resting from a failed probe, and within the bound of probe_delay_s. ef1, cost, transfer_s,
    peak_rho: per candidate; st_mean: [C, K, 1] mean service time per stage."""
    gain = ef1 >= ef1[running] + PROBE_F1_GAIN
    for verdict in (LATE, PROVEN):
        gain[remembered.get(verdict, [])] = False
    for key in probe.resting:
        if probe.rests(key, now_ts):
            gain[matching(c, key)] = False
    idx = np.flatnonzero(gain)
    if not len(idx):
        return None
    busiest_s = node_work(c, idx, c.per_message(idx, st_mean[idx]))[:, :, 0].max(axis=1)
    worst = probe_delay_s(st_mean[idx, :, 0].sum(axis=1), transfer_s[idx], peak_rho[idx], busiest_s, feedback_s)
    pick = probe_target(ef1[idx], cost[idx], worst, float(ef1[running]), delay_bound)
    return None if pick is None else int(idx[pick])


__all__ = ["CONTINUE", "FAILED", "PROBE_DELAY_SHARE", "PROBE_EVERY", "PROBE_F1_GAIN", "PROBE_ROUNDS", "PROVED",
           "ProbeState", "probe_candidate", "probe_delay_s", "probe_target"]
