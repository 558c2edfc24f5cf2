"""The Bayesian planner in the simulator (compiles and samples the PyMC model: ~40 s), against the baselines."""
from __future__ import annotations

import time

import numpy as np
import pytest

from scheduler import job_accuracy, sim_scenarios
from scheduler import simulator as sm
from scheduler.baselines import GoldenPlanner
from scheduler.bayes import BayesModel
from scheduler.bayes_planner import BayesPlanner
from scheduler.interface import NodeInfo, Observation
from tests.support.planning import person_input


@pytest.fixture(scope="module")
def model() -> BayesModel:
    m = BayesModel()
    m.compile()
    return m


def _run(scn: sim_scenarios.Scenario, planner_factory, refresh_every: int = 2, seed: int = 0) -> sm.Simulator:
    shared = {}

    def pf(uid):
        p = planner_factory()
        if isinstance(p, BayesPlanner):  # one Bayesian planner pools every job's observations
            return shared.setdefault("bayes", p)
        return p

    def on_round(sim):
        p = shared.get("bayes")
        if p is not None and (sim.round % refresh_every == 0 or p.urgent):
            p.refresh_now()

    return sim_scenarios.run(scn, pf, seed=seed, on_round=on_round)


def _window(sim: sm.Simulator, lo: int, hi: int, job: str | None = None) -> list[sm.RoundStat]:
    return [s for s in sim.stats if lo <= s.round < hi and (job is None or s.job == job)]


def test_prior_planner_meets_tight_delay_where_golden_misses(model):
    scn = sim_scenarios.Scenario("tight", rounds=12, delay=0.3, n_jobs=1)
    golden = _run(scn, GoldenPlanner)
    bayes = _run(scn, lambda: BayesPlanner(model, background=False, seed=1))
    assert np.mean([s.violated for s in golden.stats]) == 1.0
    late = _window(bayes, 4, 12)
    assert np.mean([s.violated for s in late]) <= 0.15
    assert np.mean([s.f1 for s in late]) > 0.7
    assert all(s.cost_share < 0.5 for s in late)


def test_moves_stages_off_a_lost_node_within_two_rounds(model):
    scn = sim_scenarios.Scenario("loss", rounds=14, delay=0.5, n_jobs=1, events={8: [sim_scenarios.kill("cloud-gpu")]})
    shared = {}

    def pf():
        return shared.setdefault("p", BayesPlanner(model, background=False, seed=2))

    sim = _run(scn, pf)
    before = _window(sim, 4, 8)
    assert any("cloud-gpu" in s.config for s in before), "the scenario should start on the GPU node"
    after = _window(sim, 8, 14)
    assert all("cloud-gpu" not in s.config and s.config != "invalid plan" for s in after)
    # Re-converged (delay met) within 2 rounds of the loss.
    assert not any(s.violated for s in _window(sim, 10, 14))


def test_tightened_constraint_gives_cheaper_config(model):
    p = BayesPlanner(model, background=False, seed=3)
    # Tightened below what the loose plans deliver (0.11-0.17 s here): at 0.15 s the loose plan
    # already met the new bound and "cheaper" was a coin toss between equally good plans.
    scn = sim_scenarios.Scenario("tighten", rounds=16, delay=1.0, n_jobs=1, events={10: [sim_scenarios.set_delay(0.1)]})
    sim = _run(scn, lambda: p)
    loose = _window(sim, 6, 10)
    tight = _window(sim, 11, 16)
    assert np.mean([s.delay_expected_s for s in tight]) < np.mean([s.delay_expected_s for s in loose])
    assert np.mean([s.delay_expected_s for s in tight]) <= 0.1 * 1.1
    assert max(p.refresh_times) < 2.0


def test_reason_is_human_readable(model):
    p = BayesPlanner(model, background=False)
    sim = sim_scenarios.Scenario("r", rounds=1, delay=0.5, n_jobs=1).build()
    inp = sim.planning_input(sim.jobs[0], {})
    plan = p.plan(inp)
    assert plan.planner == "bayes"
    assert "P(delay<=0.5s)=" in plan.reason and "E[F1]=" in plan.reason and "fps" in plan.reason


def test_background_refresher_publishes_posterior(model):
    p = BayesPlanner(model, background=True, refresh_interval_s=0.05)
    sim = sim_scenarios.Scenario("bg", rounds=3, delay=0.5, n_jobs=1).build()
    planners = {sim.jobs[0].uid: p}
    try:
        for _ in range(3):
            sim.step(planners)
        deadline = time.time() + 30
        while p.snapshot.source != "posterior" and time.time() < deadline:
            time.sleep(0.05)
        assert p.snapshot.source == "posterior" and p.snapshot.n_lat > 0
        assert p.posterior._thread is not None and p.posterior._thread.name == "vdag-posterior"
    finally:
        p.close()
    assert p.posterior._thread is None


@pytest.mark.slow
def test_bayes_beats_baselines_on_all_scenarios(model):
    for scn in sim_scenarios.scenarios(36):
        bayes = _run(scn, lambda: BayesPlanner(model, background=False, seed=5))
        viol = np.mean([s.violated for s in bayes.stats])
        share = sum(s.utility for s in bayes.stats) / sum(s.oracle_utility for s in bayes.stats)
        assert viol <= 0.15, scn.name
        assert share >= 0.75, scn.name


def test_person_job_learns_its_resolution_trade_off(model):
    """Profiled F1 (vs the same model at source resolution) steers a fixed-model detector's
    resolution: with F1 falling steeply at low resolution the planner stays at >= 480p."""
    scn = sim_scenarios.Scenario("person", rounds=12, delay=1.0, n_jobs=1, person=True)
    sim = _run(scn, lambda: BayesPlanner(model, background=False, seed=4))
    late = _window(sim, 4, 12)
    assert not any(s.violated for s in late)
    assert all(not s.config.startswith("360p") for s in late), [s.config for s in late]
    assert np.mean([s.f1 for s in late]) > 0.85
    assert all("grade" not in s.config for s in sim.stats)


def test_accuracy_model_is_log_linear_with_per_job_slopes(model):
    from scheduler import bayes

    assert bayes.stale_s(30, 30) == 0 and bayes.stale_s(5, 10) == pytest.approx(0.1)
    p = BayesPlanner(model, background=False, seed=6)
    inp = person_input(nodes=[NodeInfo(name="cpu", cpu_count=4, n_process=2)])
    # The job's profiled F1 falls steeply with resolution: 0.6 at 360p, 0.85 at 480p, 1 at 576p.
    obs = []
    for t, (w, h, f1) in enumerate([(480, 360, 0.6), (640, 480, 0.85), (768, 576, 1.0)] * 4):
        obs.append(Observation(stage="person_detection", node="cpu", width=w, height=h, fps=5, quality=90,
                               service_s=0.1, ts=float(t), accuracy=f1))
    p.plan(inp.model_copy(update={"observations": obs}))
    p.refresh_now()
    p.plan(inp.model_copy(update={"observations": obs}))
    c, S = p._candidates(inp)
    st = p._jobs[inp.job_uid]
    f1 = p._f1_draws(p._draws(p.snapshot, 64), S, p.snapshot.version, st.accuracy).mean(axis=1)
    at = {c.res[int(c.res_idx[r])][0]: f1[i] for i, r in enumerate(S.rows)
          if c.fps[r] == 5 and c.quality[r] == 90 and c.ntrack[r] == 0}
    assert at["360p"] == pytest.approx(0.6, abs=0.08) and at["480p"] == pytest.approx(0.85, abs=0.08)
    assert at["720p"] > 0.93


def test_profiled_configs_move_toward_what_the_segments_measured(model):
    """Segment scores of one config (480p, every 2nd frame kept, 4 tracked) far below the model:
    that config's prediction follows them, one it has no measurement of moves only a little."""
    p = BayesPlanner(model, background=False, seed=3)
    inp = person_input()
    obs = [Observation(stage="person_detection", node="cpu", width=640, height=480, fps=5.0, ntracking=4,
                       quality=90, service_s=0.0, ts=float(t), accuracy=0.45, source="segment") for t in range(4)]
    timed = [Observation(stage="person_detection", node="cpu", width=640, height=480, service_s=0.12, ts=float(t))
             for t in range(4)]
    p.plan(inp.model_copy(update={"observations": timed}))  # the posterior learns speed, not this accuracy
    p.plan(inp.model_copy(update={"observations": obs + timed}))
    c, S = p._candidates(inp)
    st = p._jobs[inp.job_uid]
    assert st.accuracy.cells[(480, 2, 4)][90][1] == 4
    d = p._draws(p.snapshot, 64)
    pooled = p._f1_draws(d, S, p.snapshot.version, None)    # what the pooled model alone says
    raw = p._f1_draws(d, S, p.snapshot.version, st.accuracy)
    shrunk = job_accuracy.shrink_to_cells(c, S.rows, raw, st.accuracy)
    rows = S.rows

    def row(h, fps, k):
        return int(np.flatnonzero((c.height[rows] == h) & np.isclose(c.fps[rows], fps) & (c.ntrack[rows] == k)
                                  & (c.quality[rows] == 90))[0])

    hit, other = row(480, 5, 4), row(576, 10, 0)
    assert abs(shrunk[hit].mean() - 0.45) < abs(pooled[hit].mean() - 0.45) - 0.05
    assert shrunk[hit].mean() < 0.6
    assert np.allclose(shrunk[other], raw[other])  # never profiled: the model's own prediction


def test_segments_scored_at_each_quality_teach_the_job_what_coding_costs(model):
    """Segments at q90 score 0.92 and at q60 0.78 for every profiled config: the job's quality
    slope carries that to configs it never profiled, and q60 is no longer nearly free."""
    p = BayesPlanner(model, background=False, seed=5)
    inp = person_input()
    obs = []
    for t in range(3):
        for h, w in [(480, 640), (576, 768)]:
            for q, f1 in [(90, 0.92), (75, 0.85), (60, 0.78)]:
                obs.append(Observation(stage="person_detection", node="cpu", width=w, height=h, fps=5.0,
                                       ntracking=2, quality=q, service_s=0.0, ts=float(t), accuracy=f1,
                                       source="segment"))
    obs += [Observation(stage="person_detection", node="cpu", width=640, height=480, service_s=0.12, ts=float(t))
            for t in range(3)]
    p.plan(inp.model_copy(update={"observations": obs}))
    c, S = p._candidates(inp)
    st = p._jobs[inp.job_uid]
    raw = p._f1_draws(p._draws(p.snapshot, 64), S, p.snapshot.version, st.accuracy)
    f1 = job_accuracy.shrink_to_cells(c, S.rows, raw, st.accuracy).mean(axis=1)
    rows = S.rows

    def at(h, fps, k, q):
        return float(f1[np.flatnonzero((c.height[rows] == h) & np.isclose(c.fps[rows], fps) & (c.ntrack[rows] == k)
                                       & (c.quality[rows] == q))[0]])

    assert at(480, 5, 2, 60) < at(480, 5, 2, 90) - 0.08          # profiled: both qualities measured
    assert at(480, 10, 0, 60) < at(480, 10, 0, 90) - 0.05        # never profiled: the job's slope

