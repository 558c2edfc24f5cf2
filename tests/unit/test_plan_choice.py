"""Which shortlisted plan runs next (scheduler/plan_choice.py), on hand-made readings."""
from __future__ import annotations

import numpy as np

from scheduler.plan_choice import ChoicePolicy, Shortlisted, choose, shortlist_plans
from scheduler.planner_state import JobState

D, AIM = 1.0, 0.99
N = 32  # posterior draws


def readings(ef1, p_ok, need=0.95, cost=None) -> Shortlisted:
    ef1, p_ok = np.asarray(ef1, float), np.asarray(p_ok, float)
    f1 = np.repeat(ef1[:, None], N, axis=1)
    delay = np.where(p_ok[:, None] >= need, 0.5 * D, 2 * D) * np.ones((len(ef1), N))
    return Shortlisted(feasible=p_ok >= need, p_ok=p_ok, eu=ef1 * p_ok, ef1=ef1, f1=f1,
                       cost=np.zeros(len(ef1)) if cost is None else np.asarray(cost, float), delay=delay)


def pick(s: Shortlisted, st: JobState, *, pos_last=None, in_shift=False, policy=ChoicePolicy()) -> tuple[int, str]:
    return choose(s, policy, st, np.random.default_rng(0), D=D, aim=AIM, cost_weight=1.0, pos_last=pos_last,
                  pos_probe=None, probing=None, probe_key=None, in_shift=in_shift, shift="")


def settled() -> JobState:
    return JobState(rounds=3, last_explore=1)  # explored two rounds ago: no exploring now


def test_the_running_plan_stays_while_it_is_nearly_best_and_goes_when_it_is_not():
    assert pick(readings([0.90, 0.903], [1.0, 1.0]), settled(), pos_last=0) == (0, "keep")
    explored = JobState(rounds=3, last_explore=2)  # explored last round: that plan must win now
    assert pick(readings([0.90, 0.903], [1.0, 1.0]), explored, pos_last=0) == (1, "best")
    assert pick(readings([0.80, 0.90], [1.0, 1.0]), settled(), pos_last=0) == (1, "best")
    assert pick(readings([0.90, 0.903], [0.9, 1.0]), settled(), pos_last=0) == (1, "best")  # not feasible


def test_with_nothing_likely_enough_the_most_useful_of_the_nearly_likeliest_runs():
    # 0.90 is the likeliest; 0.87 is nearly as likely and far more accurate; 0.5 is not close.
    assert pick(readings([0.5, 0.6, 0.9], [0.5, 0.90, 0.87]), settled()) == (2, "no plan meets the delay bound; most likely to")


def test_exploration_is_bounded_to_safe_near_best_plans_and_spaced():
    policy = ChoicePolicy(explore_every=4, explore_margin=0.05, explore_f1_slack=0.05)
    s = readings([0.90, 0.89, 0.60], [1.0, 1.0, 1.0])
    st = JobState(rounds=10)
    i, why = pick(s, st, policy=policy)
    assert why == "explore" and i in (0, 1) and st.last_explore == 10
    st.rounds = 11
    assert pick(s, st, policy=policy)[1] != "explore"  # not again before explore_every rounds
    assert pick(readings([0.90, 0.60], [1.0, 1.0]), JobState(rounds=10), policy=policy) == (0, "best")  # none near


def test_a_shift_goes_straight_to_the_best():
    st = JobState(rounds=10, shift_why="node lost")
    assert pick(readings([0.80, 0.90], [1.0, 1.0]), st, pos_last=0, in_shift=True) == (1, "shift: node lost")


def test_the_shortlist_holds_the_most_useful_the_fastest_the_running_and_the_proven_plans():
    d_mean = np.linspace(0.1, 3.0, 30)          # plan i's mean delay
    u_mean = np.linspace(0.0, 1.0, 30)          # slower plans more useful
    short = shortlist_plans(d_mean, u_mean, D, last=29, size=3, proven=np.array([20]))
    within = np.flatnonzero(d_mean <= 1.25 * D)
    assert set(within[-3:]) <= set(short)       # the most useful that might meet D
    assert set(range(8)) <= set(short)          # the fastest
    assert {29, 20} <= set(short) and len(short) == len(set(within[-3:]) | set(range(8)) | {29, 20})
