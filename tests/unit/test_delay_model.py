"""The planner's delay model read against what a job's frames measured: the queueing wait
(scheduler.delay.measured_wait_scale) and each stage's frame-to-frame spread
(ServiceTimes.frame_noise)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from scheduler import knobs
from scheduler.bayes import BayesModel
from scheduler.bayes_planner import BayesPlanner
from scheduler.delay import measured_wait_scale
from scheduler.interface import Observation, UserConstraint
from tests.support.planning import person_input

STAGES = {"detect", "count"}


def _frames(n: int, wait_s: float, height: int = 576, ntracking: int = 2, t0: float = 100.0) -> list[Observation]:
    """n detected frames 0.6 s apart, each measured at both stages, the wait split between them."""
    out = []
    for i in range(n):
        for stage, svc in (("detect", 0.37), ("count", 4e-5)):
            out.append(Observation(stage=stage, node="cpu", width=768, height=height, fps=5, ntracking=ntracking,
                                   service_s=svc, queue_s=wait_s / 2, ts=t0 + 0.6 * i))
    return out


def test_frames_that_wait_less_than_predicted_shrink_the_wait_and_more_frames_shrink_it_further():
    few = measured_wait_scale(_frames(2, 0.01), STAGES, 576, 2, predicted_wait_s=0.1)
    many = measured_wait_scale(_frames(12, 0.01), STAGES, 576, 2, predicted_wait_s=0.1)
    assert many < few < 1.0
    assert many == pytest.approx(np.exp(np.log(0.03 / 0.12) * 12 / 16))  # (wait + floor) / (predicted + floor)


def test_frames_that_queue_more_than_predicted_raise_the_wait_up_to_a_bound():
    assert 1.0 < measured_wait_scale(_frames(12, 0.2), STAGES, 576, 2, predicted_wait_s=0.05)
    assert measured_wait_scale(_frames(50, 5.0), STAGES, 576, 2, predicted_wait_s=0.01) == 4.0


def test_the_first_frames_of_a_plan_waiting_behind_the_last_plan_do_not_scale_every_wait_up():
    switch = _frames(2, 0.5) + _frames(8, 0.01, t0=101.2)
    assert measured_wait_scale(switch, STAGES, 576, 2, predicted_wait_s=0.05) < 1.0


def test_only_the_running_plans_recent_frames_count():
    other_plan = _frames(12, 0.0, height=360) + _frames(12, 0.0, ntracking=4)
    assert measured_wait_scale(other_plan, STAGES, 576, 2, predicted_wait_s=0.1) == 1.0
    old = _frames(12, 0.0, t0=0.0)  # long before the newest frame
    assert measured_wait_scale(old + _frames(1, 0.1, height=360, t0=200.0), STAGES, 576, 2, 0.1) == 1.0
    profiled = [o.model_copy(update={"source": "profile"}) for o in _frames(12, 0.0)]
    assert measured_wait_scale(profiled, STAGES, 576, 2, predicted_wait_s=0.1) == 1.0


def test_a_steady_detector_that_never_queues_may_run_at_three_quarters_of_the_bound():
    """vtest.avi on PyTorch, D = 0.5 s: the source resolution at 5 fps with 2 tracked frames
    after each detected one took 0.36-0.38 s per detected frame and waited ~0.02 s; the
    one-time profile ran it with no frame late. The planner keeps it once its frames say so."""
    p = BayesPlanner(BayesModel(), background=False, seed=3)
    inp = person_input().model_copy(update={"constraint": UserConstraint(delay=0.5)})
    c = knobs.build_candidates(inp)
    src = len(c.res) - 1
    running = int(np.flatnonzero((c.res_idx == src) & (c.fps == 5) & (c.ntrack == 2) & (c.quality == 90))[0])
    plan = knobs.to_plan(c, running, inp.nodes, p.name, "running")
    rng = np.random.default_rng(0)
    frames = []
    for i in range(40):
        ts = 10.0 + 0.6 * i
        frames += [Observation(stage="person_detection", node="cpu", width=768, height=576, fps=5, ntracking=2,
                               quality=90, service_s=float(0.37 * np.exp(rng.normal(0, 0.02))), queue_s=0.008,
                               ts=ts),
                   Observation(stage="object_count", node="cpu", width=768, height=576, fps=5, ntracking=2,
                               quality=90, service_s=float(4e-5 * np.exp(rng.normal(0, 0.3))), queue_s=0.008,
                               ts=ts),
                   Observation(stage="render", node="cpu", width=768, height=576, fps=5, ntracking=2,
                               quality=90, service_s=float(0.004 * np.exp(rng.normal(0, 0.2))), queue_s=0.002,
                               ts=ts)]
    measured = inp.model_copy(update={"observations": frames, "last_plan": plan})
    p.plan(measured)
    p.refresh_gaussian()
    for _ in range(3):
        chosen = p.plan(measured)
    p_delay = float(re.search(r"P\(delay<=0.5s\)=([\d.]+)", chosen.reason).group(1))
    # (with Kingman's PACED_CV2 at 0.3 and one noise scale for every stage: 720p@2fps track 1,
    # the running plan at P(delay <= D) 0.44)
    assert c.index_of_plan(chosen) == running and p_delay >= 0.95, chosen.reason
