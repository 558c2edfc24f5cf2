"""A job's own accuracy fit: rows of one profiling segment share that moment of the video."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler import job_accuracy, knobs
from scheduler.interface import Observation
from services.video_conf import GRADES
from tests.support.planning import person_input

N = 64


def _pooled_draws() -> dict[str, np.ndarray]:
    """A pooled model that says 360p loses ~0.17 of F1 (log-height slope 0.4), no draw spread."""
    return {"th": np.full((N, len(GRADES)), np.log(0.95)), "kappa": np.full(N, 0.4), "lam": np.full(N, -0.3),
            "rho": np.full(N, 0.2), "tau": np.full(N, -0.1), "psi": np.full(N, -0.05), "sig_a": np.full(N, 0.08)}


def _segment(ts: float, f1_at: dict[int, float]) -> list[Observation]:
    return [Observation(stage="detect", node="n", width=h * 4 // 3, height=h, fps=fps, ntracking=k, quality=q,
                        service_s=0.0, ts=ts, accuracy=f1, source="segment")
            for h, f1 in f1_at.items() for fps in (0.0, 5.0) for k in (0, 2) for q in (60, 90)]


def _predicted(job, height: int) -> float:
    x = job_accuracy.covariate_rows([len(GRADES) - 1], [height], 576, [10.0], 10.0, [90], [0])
    eta = job_accuracy.pooled_logit(_pooled_draws(), x).T
    return float(job_accuracy.f1_draws(eta, x, job).mean())


def test_one_easy_segment_is_one_moment_not_many_samples():
    """Every config perfect on one segment: the 16 rows per resolution are one moment of the
    video, so the job's 360p estimate moves only part of the way from the pooled model; the
    same scores on four segments at different times are evidence it should believe."""
    easy = {360: 1.0, 480: 1.0, 576: 1.0}
    d = _pooled_draws()
    pooled = _predicted(None, 360)
    once = _predicted(job_accuracy.fit(_segment(1.0, easy), d, 576, 10.0), 360)
    four = _predicted(job_accuracy.fit([o for t in range(4) for o in _segment(1.0 + 3 * t, easy)], d, 576, 10.0), 360)
    assert pooled < once < four <= 1.0
    assert once - pooled < 0.6 * (1.0 - pooled)   # one segment: well short of what it measured
    assert four - pooled > 1.3 * (once - pooled)  # more moments, more belief


def test_a_hard_segment_teaches_the_resolution_slope():
    hard = {360: 0.55, 480: 0.75, 576: 1.0}
    job = job_accuracy.fit([o for t in range(3) for o in _segment(1.0 + 3 * t, hard)], _pooled_draws(), 576, 10.0)
    assert _predicted(job, 360) < _predicted(None, 360) - 0.1
    assert abs(_predicted(job, 576) - _predicted(None, 576)) < 0.1


def test_the_pooled_model_counts_a_segment_row_as_a_tenth_of_an_observation():
    """The same scores as segment rows move the pooled accuracy fit less than as profiled frames."""
    from scheduler import bayes
    from scheduler.bayes_priors import Layout, Slots

    layout = Layout(2, 2)

    def fitted(source: str):
        obs = [Observation(stage="detect", node="n", width=480, height=360, fps=0.0, quality=90, service_s=0.0,
                           ts=float(t), accuracy=0.5, source=source) for t in range(8)]
        data = bayes.build_data([(o, "person_detection", 576.0, 10.0) for o in obs], layout, Slots(2), Slots(2),
                                np.zeros(2), np.zeros(2))
        return data.arrays["a_n"].sum(), data.arrays["a_m"]

    n_seg, m_seg = fitted("segment")
    n_frame, m_frame = fitted("frame")
    assert n_seg == pytest.approx(8 * bayes.SEGMENT_ROW_WEIGHT) and n_frame == pytest.approx(8.0)
    prior = layout.acc_prior()[0]
    assert np.abs(m_seg - prior).sum() < np.abs(m_frame - prior).sum()


def test_keeping_or_detecting_fewer_frames_never_scores_above_more():
    """Per draw, a config's F1 is capped by the same config keeping more frames a second, then by
    the same config tracking fewer of its kept frames; the fastest detection-only rows stay. (A
    fast node, vtest.avi: a six-frame first segment scored every frame 0.83 and 5 a second 0.88.)"""
    c = knobs.build_candidates(person_input())
    rows = np.arange(len(c) // c.n_map) * c.n_map
    rng = np.random.default_rng(0)
    f1 = rng.uniform(0.5, 1.0, size=(len(rows), N))
    res, rate, grade, q, k = (a[rows] for a in (c.res_idx, c.fps, c.grade_idx, c.quality, c.ntrack))
    fastest = rate.max()
    slower = np.flatnonzero((rate < fastest) & (k == 0))[0]
    f1[slower] = 1.0                # an untried 5-fps sibling the segment rated above detecting every frame
    capped = job_accuracy.more_detection_never_worse(f1.copy(), c)
    for i in range(len(rows)):
        same = (res == res[i]) & (grade == grade[i]) & (q == q[i])
        assert np.all(capped[i] <= capped[same & (rate > rate[i]) & (k == k[i])] + 1e-12)
        assert np.all(capped[i] <= capped[same & (rate == rate[i]) & (k < k[i])] + 1e-12)
    top = (rate == fastest) & (k == 0)
    assert np.array_equal(capped[top], f1[top])
    assert np.all(capped[slower] < 1.0)
    untracked = knobs.build_candidates(person_input(), tracking=False)
    f1 = rng.uniform(0.5, 1.0, size=(len(untracked) // untracked.n_map, N))
    assert job_accuracy.more_detection_never_worse(f1, untracked).shape == f1.shape


def _shrunk(job, height: int, fps: float, ntracking: int) -> float:
    """The planner's E[F1] at one config: the job's fit, then its profiled cells."""
    from types import SimpleNamespace

    x = job_accuracy.covariate_rows([len(GRADES) - 1], [height], 576, [fps], 10.0, [90], [ntracking])
    f1 = job_accuracy.f1_draws(job_accuracy.pooled_logit(_pooled_draws(), x).T, x, job)
    c = SimpleNamespace(height=np.array([height]), fps=np.array([fps]), ntrack=np.array([ntracking]),
                        quality=np.array([90]), src_fps=10.0)
    return float(job_accuracy.shrink_to_cells(c, np.arange(1), f1, job).mean())


def test_segments_that_agree_on_a_cell_are_believed_and_segments_that_scatter_less_so():
    """vtest.avi: 10-frame segments score a config within ~0.06 of each other, Megamind.avi's
    within ~0.2; the noise a job's cells are read with is its own spread between segments."""
    def segments(f1s: list[float]) -> list[Observation]:
        return [o for t, f1 in enumerate(f1s) for o in _segment(1.0 + 3 * t, {360: 0.5, 480: f1, 576: 0.95})]

    d = _pooled_draws()
    steady = job_accuracy.fit(segments([0.86, 0.84, 0.85]), d, 576, 10.0)
    scattered = job_accuracy.fit(segments([1.0, 0.6, 0.95]), d, 576, 10.0)
    assert steady.obs_sd_f < job_accuracy.CELL_OBS_SD_F < scattered.obs_sd_f
    # 480p at 10 fps, no tracking: the model alone says ~0.88 (pooled) vs the measured 0.85
    pooled = _predicted(None, 480)
    assert abs(_shrunk(steady, 480, 10.0, 0) - 0.85) < abs(pooled - 0.85) / 2


def test_below_the_target_compute_breaks_only_near_exact_ties():
    """Halving compute is worth 0.005 F1 once the target is reached, 0.0005 below it: less than
    a job's segments tell apart there (a fast node: half of vtest's frames detected for 10 s)."""
    target = knobs.ACCURACY_TARGET
    below = knobs.utility(np.array([0.950, 0.949]), np.array([1.0, 0.5]), np.array([True, True]), target)
    assert below[0] > below[1], "0.001 F1 below the target outweighs half the compute"
    tie = knobs.utility(np.array([0.95, 0.95]), np.array([1.0, 0.5]), np.array([True, True]), target)
    assert tie[1] > tie[0], "an exact tie goes to the cheaper plan"
    above = knobs.utility(np.array([0.999, 0.996]), np.array([1.0, 0.5]), np.array([True, True]), target)
    assert above[1] > above[0], "past the target, compute counts"
    assert knobs.utility(np.array([0.99]), np.array([0.1]), np.array([False]), target)[0] == 0.0
