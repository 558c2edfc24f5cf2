"""The node profile's shape across resolutions (ServiceTimes.profile_shape): the model's log
service time is linear in log pixels, a node's is not, and a job's frames at one resolution
must not decide what another costs."""
from __future__ import annotations

import numpy as np

from scheduler import knobs
from scheduler.bayes import BayesModel
from scheduler.bayes_planner import BayesPlanner
from scheduler.interface import Observation, UserConstraint
from tests.support.planning import SLOW_NODE_PROFILE, person_input, slow_node_profile_rows

PROFILE = SLOW_NODE_PROFILE


def _frames_at_480p(n: int = 40) -> list[Observation]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        ts = 10.0 + 0.6 * i
        out += [Observation(stage="person_detection", node="cpu", width=640, height=480, fps=5, ntracking=2, quality=90,
                            service_s=float(0.32 * np.exp(rng.normal(0, 0.03))), queue_s=0.005, ts=ts, seq=i),
                Observation(stage="object_count", node="cpu", width=640, height=480, fps=5, ntracking=2, quality=90,
                            service_s=4e-5, queue_s=0.001, ts=ts, seq=i)]
    return out


def _predicted_service_s(observations: list[Observation]) -> dict[int, float]:
    """The planner's mean detector time per frame height after it has seen `observations`."""
    p = BayesPlanner(BayesModel(), background=False, seed=3)
    inp = person_input().model_copy(update={"constraint": UserConstraint(delay=0.5), "observations": observations})
    p.plan(inp)
    p.refresh_gaussian()
    p.plan(inp)
    c = knobs.build_candidates(inp)
    snap = p.posterior.snapshot
    d = p._draws(snap, p.n_draws)
    mu = p.times.with_window_corrections(p.times.candidate_draws(d, snap, c), c, len(d["sig"]))
    k = c.stages.index("person_detection")
    return {h: float(np.exp(mu[k, 0, r, 0]).mean()) for r, (_, _, h) in enumerate(c.res) if h in PROFILE}


def test_a_resolution_the_job_has_not_run_costs_what_the_node_profile_says_relative_to_the_one_it_runs():
    shaped = _predicted_service_s(slow_node_profile_rows() + _frames_at_480p())
    assert abs(shaped[480] - 0.32) < 0.03, shaped
    # 0.50 s measured by the profile, 0.32 x 0.50 / 0.32 from the job's own 480p level
    assert 0.46 <= shaped[576] <= 0.55, shaped
    assert 0.17 <= shaped[360] <= 0.21, shaped


def test_without_a_profile_the_pixel_slope_alone_decides():
    plain = _predicted_service_s(_frames_at_480p())
    shaped = _predicted_service_s(slow_node_profile_rows() + _frames_at_480p())
    assert plain[576] < shaped[576] - 0.03, (plain, shaped)
