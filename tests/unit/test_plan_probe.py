"""A more accurate plan the latency model rules out is tried briefly, and its own frames decide
(scheduler/plan_probe.py)."""
from __future__ import annotations

import numpy as np

from scheduler import knobs
from scheduler.bayes import BayesModel
from scheduler.bayes_planner import BayesPlanner
from scheduler.interface import UserConstraint
from scheduler.plan_memory import PlanMemory
from scheduler.plan_probe import (BACKOFF_S, CONTINUE, FAILED, PROBE_EVERY, PROBE_ROUNDS, PROVED, ProbeState,
                                  probe_delay_s)
from tests.support.planning import person_input, source_segment
from tests.unit.test_plan_memory import KEY, _delays, _frames, _source_plan

OTHER = (576, 10.0, 1, 4, (0, 0, 0))


def test_a_probe_that_proves_itself_stays_and_one_that_queues_rests_longer_each_time():
    memory, probe = PlanMemory(), ProbeState()
    assert probe.judge(memory, KEY, 1.0, 10.0) is None, "no probe running"
    probe.start(KEY, round_=3)
    memory.record(KEY, _delays(*[0.1] * 6), newest_ts=12.0)
    assert probe.judge(memory, KEY, 1.0, 12.0) == CONTINUE, "six frames are no proof yet"
    memory.record(KEY, _delays(*[0.1] * 6, first=6), newest_ts=14.0)
    assert probe.judge(memory, KEY, 1.0, 14.0) == PROVED and not probe.rests(KEY, 14.0)

    memory.forget()
    for n, now in enumerate((20.0, 100.0)):
        probe.start(KEY, round_=10 + n)
        memory.record(KEY, _delays(0.2, 0.5, 0.85, first=100 * n), newest_ts=now)
        assert probe.judge(memory, KEY, 1.0, now) == FAILED, "a frame past 0.8 D ends it at once"
        assert probe.rests(KEY, now + BACKOFF_S[0] * 2 ** n - 1) and not probe.rests(KEY, now + BACKOFF_S[0] * 2 ** n + 1)
        memory.forget()

    probe.start(OTHER, round_=20)
    memory.record(OTHER, _delays(0.3, 0.3), newest_ts=200.0)
    for _ in range(PROBE_ROUNDS - 1):
        assert probe.judge(memory, OTHER, 1.0, 200.0) == CONTINUE
    assert probe.judge(memory, OTHER, 1.0, 200.0) == FAILED, "no proof within its rounds"
    probe.start(OTHER, round_=30)
    assert probe.judge(memory, KEY, 1.0, 300.0) == FAILED, "the job left the probed plan"


def test_the_bound_on_what_a_probe_may_cost_if_the_model_is_right():
    svc, node = np.full(3, 0.1), np.full(3, 0.1)
    worst = probe_delay_s(svc, np.zeros(3), np.array([0.5, 0.9, 1.2]), node, feedback_s=3.0)
    np.testing.assert_allclose(worst, [0.2, 0.3, 1.0])  # frames ahead: 1, 2 near full, 3 + a backlog over it


def _plan(p: BayesPlanner, inp, c, observations, running: int):
    measured = inp.model_copy(update={"observations": observations,
                                      "last_plan": knobs.to_plan(c, running, inp.nodes, p.name, "running")})
    return p.plan(measured)


def _probing_planner():
    """vtest.avi on an Intel Xeon, D = 1 s: tracking every other frame, the detector took 0.1 s
    a frame, no frame late; from those frames detecting every frame reads as past the ceiling."""
    inp = person_input().model_copy(update={"constraint": UserConstraint(delay=1.0)})
    c = knobs.build_candidates(inp)
    every, tracked = _source_plan(c, 0), _source_plan(c, 1)
    p = BayesPlanner(BayesModel(), background=False, seed=3)
    seen = source_segment(1.0) + _frames(0, 40, 10.0, 0.10, 0.01, 1)
    return p, inp, c, every, tracked, seen


def test_a_ruled_out_plan_is_probed_and_its_own_frames_keep_it():
    p, inp, c, every, tracked, seen = _probing_planner()
    first = _plan(p, inp, c, seen, tracked)
    assert c.index_of_plan(first) == every and "probe" in first.reason, first.reason
    seen += _frames(40, 15, 18.0, 0.068, 0.01, 0)
    then = _plan(p, inp, c, seen, every)
    assert c.index_of_plan(then) == every, then.reason
    assert p._jobs[inp.job_uid].probe.key is None, "proved: no longer a probe"


def test_a_probe_whose_frames_queue_goes_back_and_is_not_tried_again_soon():
    p, inp, c, every, tracked, seen = _probing_planner()
    assert c.index_of_plan(_plan(p, inp, c, seen, tracked)) == every
    seen += _frames(40, 8, 18.0, 0.16, 0.7, 0)   # queued 0.7 s: the model was right
    back = c.index_of_plan(_plan(p, inp, c, seen, every))
    assert back != every
    t = 19.0
    for _ in range(PROBE_EVERY + 2):            # a few rounds on, the plan rests from its failure
        seen += _frames(1000 + int(t * 10), 5, t, 0.10, 0.01, 1)
        t += 1.0
        assert c.index_of_plan(_plan(p, inp, c, seen, back)) != every
