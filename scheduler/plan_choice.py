"""Which plans a Bayesian decision reads closely, and which of them runs next, and why.

The planner (scheduler/bayes_planner.py) scores every candidate with posterior-mean service
times; `shortlist_plans` keeps the most useful of those that might meet the delay, the fastest,
the running plan and the proven ones. It then reads each shortlisted plan's window-mean delay
and F1 from the posterior draws, and `choose` picks one, in this order:
- a shift (constraint change, node lost or added, a surprising window): the best, no keep, no
  exploration;
- a probe of a plan the model rules out but which would be more accurate
  (scheduler/plan_probe.py): its own frames decide;
- every `explore_every` rounds, one Thompson-sampled plan among the near-best safe ones, and,
  while the best plan itself is that safe, only toward plans expected to be about as accurate
  (`explore_f1_slack`): a cheaper, less accurate plan can win no more than the compute
  tie-break, and every frame of its window pays its F1 gap (vtest.avi, D = 1 s: exploring
  track 1 beside the source config cost 0.01-0.03 F1 per window);
- the running plan, while it is within `keep_margin` of the best (an explored plan runs one
  window and then must win);
- the best;
- nothing feasible: among the plans nearly as likely to meet the delay as the likeliest, the
  most useful (not the slowest-rate plan that is only marginally safer).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler import knobs
from scheduler.plan_probe import CONTINUE, PROBE_F1_GAIN
from scheduler.planner_state import JobState


def shortlist_plans(d_mean: np.ndarray, u_mean: np.ndarray, D: float, last: int | None, size: int,
                    proven: np.ndarray | None = None) -> np.ndarray:
    """Candidate indices: the `size` most useful with mean delay within 1.25 D, the 8 fastest,
    the running plan and the plans its own frames proved."""
    ok = np.flatnonzero(d_mean <= 1.25 * D)
    top = ok[np.argpartition(-u_mean[ok], size)[:size]] if len(ok) > size else ok
    fastest = np.argpartition(d_mean, 8)[:8] if len(d_mean) > 8 else np.arange(len(d_mean))
    extra = [last] if last is not None else []
    proven = np.zeros(0, np.int64) if proven is None else proven
    return np.unique(np.concatenate([top, fastest, np.array(extra, dtype=np.int64), proven])).astype(np.int64)


@dataclass(frozen=True)
class ChoicePolicy:
    explore_every: int = 6
    explore_delay_prob: float = 0.99
    explore_margin: float = 0.01
    explore_f1_slack: float = 0.005
    keep_margin: float = 0.005


@dataclass(frozen=True)
class Shortlisted:
    """The shortlisted plans as the posterior reads them: [M] per plan, [M, n] per draw."""
    feasible: np.ndarray   # bool: meets the delay (and the user's accuracy) likely enough
    p_ok: np.ndarray       # P(window-mean delay <= D), as judged (memory, hysteresis)
    eu: np.ndarray         # expected utility
    ef1: np.ndarray        # E[F1]
    f1: np.ndarray         # F1 draws
    cost: np.ndarray       # compute share
    delay: np.ndarray      # window-mean delay draws


def choose(s: Shortlisted, policy: ChoicePolicy, st: JobState, rng: np.random.Generator, *, D: float, aim: float,
           cost_weight: float, pos_last: int | None, pos_probe: int | None, probing, probe_key,
           in_shift: bool, shift: str) -> tuple[int, str]:
    """(position in the shortlist, why). Updates the job's exploration and probe state."""
    if not s.feasible.any():
        near = s.p_ok >= s.p_ok.max() - 0.05
        pick = int(np.argmax(np.where(near, s.eu, -np.inf))) if s.p_ok.max() > 0 else \
            int(np.argmin(np.median(s.delay, axis=1)))
        return pick, "no plan meets the delay bound; most likely to"
    best = int(np.argmax(np.where(s.feasible, s.eu, -np.inf)))
    safe = s.feasible & (s.p_ok >= policy.explore_delay_prob) & (s.eu >= s.eu[best] - policy.explore_margin)
    if s.p_ok[best] >= policy.explore_delay_prob:
        safe &= s.ef1 >= s.ef1[best] - policy.explore_f1_slack
    if pos_probe is not None and not (probing == CONTINUE or (
            not s.feasible[pos_probe] and s.ef1[pos_probe] >= s.ef1[best] + PROBE_F1_GAIN)):
        pos_probe = None
    if in_shift:
        return best, f"shift: {st.shift_why}" if shift or st.shift_why else "best"
    if pos_probe is not None:
        # Before exploring: a probe's gain is bigger, and both would run the next window.
        if probing != CONTINUE:
            st.probe.start(probe_key, st.rounds)
        return pos_probe, f"probe, round {st.probe.rounds}: ruled out by the model, its own frames will say"
    if st.rounds - st.last_explore >= policy.explore_every and safe.sum() > 1 and st.rounds > 0:
        # One posterior draw (Thompson): which near-best, safe plan would be best if it were true.
        d_star = int(rng.integers(s.f1.shape[1]))
        ts_u = knobs.utility(s.f1[:, d_star], cost_weight * s.cost, s.delay[:, d_star] <= D, aim)
        st.last_explore = st.rounds
        return int(np.argmax(np.where(safe, ts_u, -np.inf))), "explore"
    if (pos_last is not None and s.feasible[pos_last] and st.last_explore != st.rounds - 1
            and s.eu[pos_last] >= s.eu[best] - policy.keep_margin):
        return pos_last, "keep"
    return best, "best"
