"""A job's own accuracy on top of the pooled model, learned from its profiling segments.

Content differs between jobs: small objects make resolution matter more, fast motion makes
skipped frames cost more, fine texture makes JPEG coding cost more. Per job and per posterior
draw, two corrections of the pooled log-linear F1 model (scheduler/bayes.py):
1. a Bayesian ridge fit of the log residual of the job's profiled F1 on (1, log height ratio,
   staleness, tracking, log quality, tracked share), shrunk toward the pooled model by JOB_ACC_SD. The rows
   of one segment are one moment of the video scored ~40 ways, not 40 samples of the job:
   each segment has its own deviation (SEG_ACC_SD) on the same columns, so the fit is a GLS
   over segments. Measured on Megamind.avi, 360p q60 against the golden boxes: 0.58-0.70,
   1.00 and 0.70-1.00 on three 10-frame segments, 0.69-0.81 over the whole clip; read as
   independent rows, one easy segment made every config look perfect for the next 15 s;
2. a profile table (Chameleon's): each profiled (height, step, ntracking) moves toward what its
   segments measured there, by the precision of the measurements against the model's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scheduler import bayes, knobs
from scheduler.interface import Observation
from services.video_conf import GRADES

# Prior sd of a job's own deviation from the pooled accuracy model: log F1 offset, slope on
# log height ratio, slope per second of staleness, slope per second of tracking, slope on log
# JPEG quality (segments score every plan quality: content decides how much coding costs),
# slope on the tracked share (how well the tracker follows this content).
JOB_ACC_SD = np.array([0.1, 0.25, 0.25, 0.15, 0.4, 0.05])
# A profiled config's own measurements vs the model's prediction for it: the model's error at
# one config, and one segment's noise. The model's error: the log-linear height term cannot
# bend, and vtest.avi's people are small: F1 is flat from 576p to 480p and falls off a cliff at
# 360p (one segment: 0.93 / 0.90 / 0.56 at every frame), where the model said 0.97 / 0.83 / 0.57
# after it; 0.1 left the planner at E[F1] 0.65-0.76 for 480p plans that measured 0.82-0.96 a
# window, on a slow node that could afford nothing better (calibration 0.14, F1 0.79).
CELL_MODEL_SD = 0.2   # log F1
# One segment's noise is noise in F1 (the boxes one moment shows), so in log F1 it grows as F1
# falls: sd_F / F. Its size is the job's content: 10-frame segments of vtest.avi scored 480p
# track 4 at 0.75-1.00 around a whole-video 0.88 (sd 0.06), Megamind.avi's 360p q60 0.58 / 1.00
# / 0.83. A prior, then each job's own spread between its segments on the same cell.
CELL_OBS_SD_F = 0.12
CELL_OBS_PRIOR_DOF = 10.0
# One segment's own deviation from the job's accuracy, on the job's columns (offset, log
# height ratio, staleness, tracking, log quality, tracked share): content changes within a video.
SEG_ACC_SD = np.array([0.1, 0.35, 0.3, 0.2, 0.2, 0.05])

# (height, source-frame step, ntracking) -> quality -> (mean log F1, count)
Cells = dict[tuple[int, int, int], dict[int, tuple[float, int]]]


@dataclass(frozen=True)
class JobAccuracy:
    coef: np.ndarray                     # [6, n] per-draw correction of the job's log F1
    cells: Cells = field(default_factory=dict)
    obs_sd_f: float = CELL_OBS_SD_F      # one segment's noise on a cell, in F1


def covariate_rows(grade_idx, height, src_height: float, rate, src_fps: float, quality, ntracking) -> np.ndarray:
    """[m, 6] grade index, log height ratio, staleness (s), log quality, tracking (s), tracked
    share: the pooled model's accuracy columns, for candidates (the planner's acc_x) and observations alike.
    `rate` is the kept-frame rate."""
    rate = np.asarray(rate, float)
    return np.stack([
        np.asarray(grade_idx, float),
        np.log(np.minimum(np.asarray(height, float) / max(float(src_height), 1.0), 1.0)),
        bayes.stale_s(rate, src_fps),
        np.log(np.asarray(quality, float) / 100.0),
        bayes.track_s(rate, ntracking),
        bayes.track_share(ntracking),
    ], axis=1)


def covariates(acc: list[Observation], src_height: float, src_fps: float) -> np.ndarray:
    """covariate_rows of accuracy observations (fps 0 = the source's rate)."""
    return covariate_rows([GRADES.index(o.grade) if o.grade in GRADES else len(GRADES) - 1 for o in acc],
                          [o.height for o in acc], src_height, [bayes.obs_rate(o, src_fps) for o in acc], src_fps,
                          [o.quality for o in acc], [o.ntracking for o in acc])


def pooled_logit(d: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The pooled model's log F1 [n, m] at covariate rows x [m, 6], per draw."""
    return (d["th"][:, x[:, 0].astype(np.int64)] + d["kappa"][:, None] * x[:, 1] + d["lam"][:, None] * x[:, 2]
            + d["rho"][:, None] * x[:, 3] + d["tau"][:, None] * x[:, 4] + d["psi"][:, None] * x[:, 5])


def _design(x: np.ndarray) -> np.ndarray:
    """The job's own columns: offset, log height ratio, staleness, tracking, log quality, tracked share."""
    return np.column_stack([np.ones(len(x)), x[:, 1], x[:, 2], x[:, 4], x[:, 3], x[:, 5]])


def fit(acc: list[Observation], d: dict[str, np.ndarray], src_height: float, src_fps: float) -> JobAccuracy | None:
    if not acc:
        return None
    x = covariates(acc, src_height, src_fps)
    y = bayes.log_f1([o.accuracy for o in acc])
    R = (y[None, :] - pooled_logit(d, x)).T                              # [m, n]
    X = _design(x)
    s2 = float(np.mean(d["sig_a"] ** 2)) + 1e-4
    A = np.diag(1.0 / JOB_ACC_SD**2)
    b = np.zeros((X.shape[1], R.shape[1]))
    for rows in _segments(acc):
        Xs = X[rows]
        V = s2 * np.eye(len(rows)) + (Xs * SEG_ACC_SD**2) @ Xs.T        # the segment's rows share its deviation
        W = np.linalg.solve(V, Xs).T                                     # [6, m_s] = Xs' V^-1
        A += W @ Xs
        b += W @ R[rows]
    coef = np.linalg.solve(A, b)                                         # [6, n]
    cells: dict[tuple[int, int, int], dict[int, list[float]]] = {}
    for o, yi in zip(acc, y):
        step = max(1, int(round(src_fps / bayes.obs_rate(o, src_fps))))
        cell = cells.setdefault((int(o.height), step, int(o.ntracking)), {})
        cell.setdefault(int(o.quality), []).append(float(yi))
    pooled = {k: {q: (float(np.mean(v)), len(v)) for q, v in by_q.items()} for k, by_q in cells.items()}
    return JobAccuracy(coef, pooled, segment_noise(cells))


def segment_noise(cells: dict[tuple[int, int, int], dict[int, list[float]]]) -> float:
    """sd in F1 of one measurement of a cell around the cell's mean: the prior, updated by the
    spread of every cell measured more than once (pooled variance)."""
    ss, dof = CELL_OBS_PRIOR_DOF * CELL_OBS_SD_F**2, CELL_OBS_PRIOR_DOF
    for by_q in cells.values():
        for ys in by_q.values():
            if len(ys) > 1:
                f = np.exp(ys)
                ss += float(((f - f.mean()) ** 2).sum())
                dof += len(ys) - 1
    return float(np.sqrt(ss / dof))


def _segments(acc: list[Observation]) -> list[np.ndarray]:
    """Row indices per scored segment (its rows share source and time stamp); any other
    accuracy observation (a profiled frame) is a moment of its own."""
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(acc):
        groups.setdefault((o.source, o.stage, o.ts) if o.source == "segment" else (i,), []).append(i)
    return [np.array(g) for g in groups.values()]


def f1_draws(eta: np.ndarray, x: np.ndarray, job: JobAccuracy | None) -> np.ndarray:
    """F1 draws [rows, n] from the pooled log F1 eta [rows, n] at rows x, with the job's
    correction (log-linear, capped at 1)."""
    if job is not None:
        eta = eta + _design(x) @ job.coef[:, : eta.shape[1]]              # a new array: the caller's stays
        return np.exp(np.minimum(eta, 0.0, out=eta), out=eta)
    return np.exp(np.minimum(eta, 0.0))


def shrink_to_cells(c: knobs.Candidates, rows: np.ndarray, f1: np.ndarray, job: JobAccuracy | None) -> np.ndarray:
    """Rows whose config the job has profiled move toward what was measured there (a
    normal-normal update on log F1; one shift per row for every draw, so the model's spread
    stays). A cell is a (height, step, ntracking) over every quality: each measurement counts
    against the model at its own quality (the job's quality slope carries that effect), so the
    planner does not chase the luckiest of three noisy per-quality scores."""
    if job is None or not job.cells:
        return f1
    h = c.height[rows]
    step = np.maximum(1, np.round(c.src_fps / c.fps[rows])).astype(int)
    k = c.ntrack[rows]
    q = c.quality[rows]
    eta = np.log(np.maximum(f1, 1e-6))
    for (ch, cs, ck), by_q in job.cells.items():
        match = (h == ch) & (step == cs) & (k == ck)
        resid, n, var_m, ybar_all = 0.0, 0, 0.0, 0.0
        for cq, (ybar, nq) in by_q.items():
            ref = match & (q == cq)
            if ref.any():
                m = eta[ref].mean(axis=0)                               # [n] the model at the profiled config
                resid, n, var_m = resid + nq * (ybar - float(m.mean())), n + nq, max(var_m, float(np.var(m)))
                ybar_all += nq * ybar
        if not n:
            continue
        vp = var_m + CELL_MODEL_SD**2
        vo = (job.obs_sd_f / np.exp(min(ybar_all / n, 0.0))) ** 2 / n
        eta[match] += vp / (vp + vo) * resid / n
    return np.exp(np.minimum(eta, 0.0))


def more_detection_never_worse(f1_rows: np.ndarray, c: knobs.Candidates, fitted: np.ndarray | None = None) -> np.ndarray:
    """[rows, n] per draw: a config's F1 capped by the same config keeping more frames a second,
    and then by the same config tracking fewer of its kept frames: detected boxes are what held
    and tracked boxes approximate. Without the caps, a profiled cell measured low moves only
    itself, and its untried siblings look better than detecting every frame (vtest.avi: source
    track 1 at E[F1] 0.969 beside source 0.958 after one segment).
    With `fitted` (the job's model before its profiled cells, shrink_to_cells), what the cells
    add is capped the same way, so a cell's own scores never narrow the gap the model sees
    between keeping fewer frames and more: one six-frame segment on a fast node scored every
    frame 0.83 and 5 a second 0.88; capped at equal, the job detected half its frames for 10 s."""
    if fitted is not None:
        fitted = np.maximum(fitted, 1e-6)
        f1_rows = np.minimum(_capped(f1_rows / fitted, c) * fitted, 1.0)
    return _capped(f1_rows, c)


def _capped(rows: np.ndarray, c: knobs.Candidates) -> np.ndarray:
    """rows capped by the same config keeping more frames a second, then by the same config
    tracking fewer of its kept frames."""
    n = rows.shape[-1]
    rate = c.fps[:: c.n_map]                    # per grid row: res x fps x grade x quality x ntracking
    by_fps = rows.reshape(len(c.res), len(np.unique(rate)), -1, n)
    faster_first = np.argsort(-rate.reshape(by_fps.shape[:3])[0, :, 0], kind="stable")
    capped = np.empty_like(by_fps)
    capped[:, faster_first] = np.minimum.accumulate(by_fps[:, faster_first], axis=1)
    return np.minimum.accumulate(capped.reshape(-1, c.n_track, n), axis=1).reshape(rows.shape)


__all__ = ["CELL_MODEL_SD", "CELL_OBS_PRIOR_DOF", "CELL_OBS_SD_F", "JOB_ACC_SD", "SEG_ACC_SD", "JobAccuracy", "covariate_rows", "covariates", "f1_draws",
           "fit", "more_detection_never_worse", "pooled_logit", "shrink_to_cells"]
