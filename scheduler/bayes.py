"""The PyMC model of stage latency and job accuracy, sampled with nutpie (scheduler/nutpie_model.py).

Latency (log-normal, per stage observation):
    log t = a0 + svc[s] + node[n] + sn[s, n] + (beta[s] + gpu * beta_gpu) * log(pixels / REF)
            + tunable * (gam[g] + gpu * gam_gpu[g]) + (b_load + gpu * b_load_gpu) * -log(1 - load)
            + eps,                                      eps ~ N(0, sig)
    svc, node, sn and beta are partially pooled (non-centred, learned scales) around prior
    means that come from the registry (tunable YOLO or light service) and the node
    (GPU, CPU cores); gam (grade) is centred on the measured n/s/m ratios (DESIGN.md s.5),
    with a prior correlated across grades (one uncertain scale of the whole ratio table plus a
    small per-grade deviation), so measuring one grade on a node informs the others.
Accuracy (relative F1 vs the golden config, on the log scale: the losses from a smaller
grade, fewer pixels, skipped frames and JPEG compression multiply):
    log F1 = th[g] + kappa * log(h / h_src) + lam * stale + tau * track + psi * share
             + rho * log(q / 100) + e
    F1 is frame-level (DESIGN.md s.6): over every source frame, the boxes shown for it.
    stale = 1 / fps - 1 / fps_src, the seconds a result goes stale between kept frames (the
    error of a skipped frame grows with how far the content moved since the last kept one);
    track = ntracking / fps, the seconds a detected frame's boxes are carried by the tracker
    (tracking drifts and misses newcomers, but far less than showing stale boxes);
    share = ntracking / (ntracking + 1), the share of kept frames shown with tracked boxes: a
    tracked box is not a detected one even one frame later (a loss that does not grow with age);
    th centred on log of the published COCO mAP ratio of each grade to x, correlated across
    grades (one uncertain scale of the whole table), th[x] ~ 0 (x is golden). A fixed-model
    detector (no grade knob; its golden is the same model at the source resolution) uses th[x].
    The planner adds a per-job correction (offset and slopes on resolution and staleness) from
    the job's own profiled F1 (knobs.py / bayes_planner.py), since content differs per job.

The model has a fixed capacity of service and node *slots* so it compiles once; names map
to slots on first sight, unused slots simply follow the prior. Data go in through pm.Data
containers and `compiled.with_data(...)`. A `BayesModel` must be used by one thread at a
time (the planner's refresher thread); decisions read an immutable `Snapshot` of draws.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from scheduler import knobs, nutpie_model
from scheduler.bayes_priors import N_GRADES, PRIORS, Layout, Slots
from scheduler.interface import Observation
from services.video_conf import GRADES

log = logging.getLogger(__name__)

MAX_SERVICES = 8
MAX_NODES = 16
LOAD_CAP = 0.95
F1_CLIP = (0.02, 1.0)
SIG_FLOOR = 0.02    # log-seconds
SIG_A_FLOOR = 0.01  # log F1
# A scored segment is one moment of the video rated ~40 ways (scheduler/job_accuracy.py): its
# rows count as this fraction of an observation each in the pooled model, ~4 per segment.
SEGMENT_ROW_WEIGHT = 0.1


_BLAS = None


def blas_single():
    """Context: numpy's own OpenBLAS on one thread. The planner's matrices are small (~170
    columns); on a contended 2-core host a multi-threaded BLAS call can take 100x longer (a
    256x171 matmul measured 0.4 s vs 5 ms). Only numpy/scipy's bundled OpenBLAS is limited,
    not torch's thread pools in the same process."""
    global _BLAS
    import contextlib

    try:
        if _BLAS is None:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController().select(prefix="libscipy_openblas")
        return _BLAS.limit(limits=1)
    except Exception:  # threadpoolctl missing or the library not found: run as is
        return contextlib.nullcontext()


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.asarray(p, float)
    return np.log(p / (1 - p))


def log_f1(f1) -> np.ndarray:
    return np.log(np.clip(np.asarray(f1, float), *F1_CLIP))


def track_s(fps: np.ndarray | float, ntracking: np.ndarray | float) -> np.ndarray:
    """Seconds a detected frame's boxes are carried by the tracker (0 without tracking)."""
    return np.asarray(ntracking, float) / np.maximum(np.asarray(fps, float), 0.1)


def track_share(ntracking: np.ndarray | float) -> np.ndarray:
    """Share of kept frames whose boxes come from the tracker."""
    k = np.asarray(ntracking, float)
    return k / (k + 1.0)


def obs_rate(o: Observation, src_fps: float) -> float:
    """The kept-frame rate an accuracy observation describes (fps 0 = the source's rate)."""
    return float(o.fps) if o.fps else float(src_fps)


def stale_s(fps: np.ndarray | float, src_fps: np.ndarray | float) -> np.ndarray:
    """Seconds between kept frames beyond the source's own (0 at the source rate)."""
    fps = np.maximum(np.asarray(fps, float), 0.1)
    src = np.maximum(np.asarray(src_fps, float), 1.0)
    return np.maximum(1.0 / fps - 1.0 / src, 0.0)


def load_term(load: np.ndarray | float) -> np.ndarray:
    return -np.log1p(-np.clip(np.asarray(load, float), 0.0, LOAD_CAP))


@dataclass(frozen=True)
class Snapshot:
    """Posterior (or prior) draws, leading axis = draw. Immutable once published."""

    draws: dict[str, np.ndarray]
    source: str  # "prior" | "gaussian" (approximate, before the compile) | "posterior"
    version: int = 0
    n_lat: int = 0
    n_acc: int = 0
    refresh_s: float = 0.0
    created: float = field(default_factory=time.time)
    # Prior means the draws were made with; a slot whose prior changed since is shifted.
    svc_mu: np.ndarray | None = None
    node_mu: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.draws["sig"])


def prior_snapshot(layout: Layout, svc_mu: np.ndarray, node_mu: np.ndarray, n: int = 256, seed: int = 0,
                   svc_sd: np.ndarray | None = None) -> Snapshot:
    """Draws from the priors in numpy (cold start, before any compile or data)."""
    rng = np.random.default_rng(seed)
    m, c = layout.lat_prior(svc_mu, node_mu, svc_sd)
    ma, ca = layout.acc_prior()
    theta = rng.multivariate_normal(m, c, n, method="cholesky")
    theta_a = rng.multivariate_normal(ma, ca, n, method="cholesky")
    sig = SIG_FLOOR + np.abs(rng.normal(0, PRIORS["sig"], n))
    sig_a = SIG_A_FLOOR + np.abs(rng.normal(0, PRIORS["sig_a"], n))
    return Snapshot(draws=layout.unpack(theta, sig, theta_a, sig_a), source="prior",
                    svc_mu=svc_mu.copy(), node_mu=node_mu.copy())


# ---- data -----------------------------------------------------------------------------------
def _cells(keys: list[tuple], y: np.ndarray, weights: np.ndarray | None = None,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sufficient statistics per cell: (weighted) count, mean and sum of squared deviations."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    w = np.ones(len(y)) if weights is None else weights
    for k, v, wi in zip(keys, y, w):
        groups.setdefault(k, []).append((float(v), float(wi)))
    cells = list(groups)
    n = np.array([sum(wi for _, wi in groups[c]) for c in cells], float)
    mean = np.array([sum(v * wi for v, wi in groups[c]) for c in cells]) / np.maximum(n, 1e-12)
    ss = np.array([sum(wi * (v - m) ** 2 for v, wi in groups[c]) for c, m in zip(cells, mean)])
    return np.array(cells, float), n, mean, ss


def _whiten(X: np.ndarray, n: np.ndarray, ybar: np.ndarray, ss: np.ndarray,
            mu0: np.ndarray, cov0: np.ndarray, sig0: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Gaussian posterior of the coefficients at a plug-in noise scale: (mean, chol(cov), sig).

    Used only to precondition the sampler (theta = m + L z); the model itself still samples
    the noise scale and the exact posterior.
    """
    lam0 = np.linalg.inv(cov0)
    sig = sig0
    for _ in range(3):
        prec = lam0 + (X.T * n) @ X / sig**2
        cov = np.linalg.inv(prec)
        cov = (cov + cov.T) / 2
        mean = cov @ (lam0 @ mu0 + X.T @ (n * ybar) / sig**2)
        if n.sum() < 5:
            break
        resid = ss.sum() + (n * (ybar - X @ mean) ** 2).sum()
        sig = float(np.clip(math.sqrt(resid / n.sum()), sig0 / 4, 2.0))
    return mean, np.linalg.cholesky(cov + 1e-12 * np.eye(len(cov))), sig


@dataclass
class ModelData:
    """Arrays for the pm.Data containers (names match the model).

    Observations are reduced to sufficient statistics per cell (identical covariates):
    count, mean and sum of squared deviations of the response; the Normal likelihood of
    the raw data equals the cell form up to a constant, so the sampler's cost does not grow
    with the number of frames.
    """

    arrays: dict[str, np.ndarray]
    n_lat: int = 0
    n_acc: int = 0
    svc_mu: np.ndarray | None = None
    node_mu: np.ndarray | None = None
    sig_hat: float = 0.2     # plug-in noise scales of the Gaussian approximation
    sig_a_hat: float = 0.05


def gaussian_snapshot(data: ModelData, layout: Layout, n: int = 256, seed: int = 0) -> Snapshot:
    """Draws from the Gaussian posterior of the coefficients at the plug-in noise scales (exact
    for the linear-Gaussian part, the noise scales fixed): milliseconds, no compiled model.
    Used until the nutpie model is compiled (4-20 s after start), so the first measurements
    reach decisions at once instead of after the compile."""
    rng = np.random.default_rng(seed)
    a = data.arrays
    theta = a["l_m"][None, :] + rng.standard_normal((n, len(a["l_m"]))) @ a["l_L"].T
    theta_a = a["a_m"][None, :] + rng.standard_normal((n, len(a["a_m"]))) @ a["a_L"].T
    return Snapshot(draws=layout.unpack(theta, np.full(n, data.sig_hat), theta_a, np.full(n, data.sig_a_hat)),
                    source="gaussian", n_lat=data.n_lat, n_acc=data.n_acc, svc_mu=data.svc_mu, node_mu=data.node_mu)


def build_data(
    obs: list[tuple[Observation, str, float, float]], layout: Layout,
    svc_slot: Slots, node_slot: Slots, svc_mu: np.ndarray, node_mu: np.ndarray,
    node_gpu: np.ndarray | None = None, svc_sd: np.ndarray | None = None,
) -> ModelData:
    """obs: (observation, service name, source height, source fps) per observation."""
    lat = [(o, s) for o, s, _, _ in obs if o.service_s > 0]
    acc = [(o, s, h, f) for o, s, h, f in obs if o.accuracy is not None]
    lkeys = [(
        svc_slot(s), node_slot(o.node), GRADES.index(o.grade) if o.grade in GRADES else 0,
        1.0 if knobs.is_tunable(s) else 0.0,
        round(math.log(max(o.width * o.height, 1) / knobs.REF_PIXELS), 3),
        round(float(load_term(o.node_load or 0.0)), 2),
    ) for o, s in lat]
    lc, ln, lmean, lss = _cells(lkeys, np.log([o.service_s for o, _ in lat]) if lat else np.zeros(0))
    lc = lc.reshape(-1, 6)
    akeys = [(
        GRADES.index(o.grade) if o.grade in GRADES else N_GRADES - 1,
        round(math.log(min(o.height / max(h, 1), 1.0)), 3),
        round(float(stale_s(o.fps, f)) if o.fps else 0.0, 3),
        round(math.log(o.quality / 100.0), 3),
        round(float(track_s(obs_rate(o, f), o.ntracking)), 3),
        round(float(track_share(o.ntracking)), 3),
    ) for o, _, h, f in acc]
    ac, an, amean, ass = _cells(akeys, log_f1([o.accuracy for o, *_ in acc]) if acc else np.zeros(0),
                                np.array([SEGMENT_ROW_WEIGHT if o.source == "segment" else 1.0 for o, *_ in acc]))
    ac = ac.reshape(-1, 6)
    node_gpu = np.zeros(layout.N) if node_gpu is None else node_gpu
    X = layout.lat_rows(lc[:, 0].astype(int), lc[:, 1].astype(int), lc[:, 2].astype(int), lc[:, 3], lc[:, 4], lc[:, 5],
                        node_gpu[lc[:, 1].astype(int)])
    XA = layout.acc_rows(ac[:, 0].astype(int), ac[:, 1], ac[:, 2], ac[:, 3], ac[:, 4], ac[:, 5])
    mu0, cov0 = layout.lat_prior(svc_mu, node_mu, svc_sd)
    mua0, cova0 = layout.acc_prior()
    m, L, sig_hat = _whiten(X, ln, lmean, lss, mu0, cov0, 0.2)
    ma, La, sig_a_hat = _whiten(XA, an, amean, ass, mua0, cova0, 0.05)
    return ModelData({
        "l_X": X, "l_n": ln, "l_mean": lmean, "l_ss": lss,
        "l_mu0": mu0, "l_prec0": np.linalg.inv(cov0), "l_m": m, "l_L": L,
        "a_X": XA, "a_n": an, "a_mean": amean, "a_ss": ass,
        "a_mu0": mua0, "a_prec0": np.linalg.inv(cova0), "a_m": ma, "a_L": La,
    }, n_lat=len(lat), n_acc=len(acc), svc_mu=svc_mu.copy(), node_mu=node_mu.copy(),
       sig_hat=max(sig_hat, SIG_FLOOR), sig_a_hat=max(sig_a_hat, SIG_A_FLOOR))


def empty_data(layout: Layout, svc_mu: np.ndarray, node_mu: np.ndarray) -> ModelData:
    return build_data([], layout, Slots(1), Slots(1), svc_mu, node_mu)


# ---- model ----------------------------------------------------------------------------------
def build_pymc_model(data: ModelData):
    """theta = m + L z (whitened, exact): Gaussian priors and cell likelihoods as potentials."""
    import pymc as pm
    import pytensor.tensor as pt

    a = data.arrays

    def cells_logp(n, mean, ss, mu, sigma):
        return (-n * pt.log(sigma) - (ss + n * (mean - mu) ** 2) / (2 * sigma**2)).sum()

    with pm.Model() as model:
        D = {k: pm.Data(k, v) for k, v in a.items()}
        z = pm.Flat("z", shape=a["l_m"].shape)
        theta = pm.Deterministic("theta", D["l_m"] + D["l_L"] @ z)
        d = theta - D["l_mu0"]
        pm.Potential("lat_prior", -0.5 * d @ (D["l_prec0"] @ d))
        # Noise floors keep a cell of identical measurements from collapsing the scale.
        sig = pm.Deterministic("sig", SIG_FLOOR + pm.HalfNormal("sig_raw", PRIORS["sig"]))
        pm.Potential("lat", cells_logp(D["l_n"], D["l_mean"], D["l_ss"], D["l_X"] @ theta, sig))

        za = pm.Flat("za", shape=a["a_m"].shape)
        theta_a = pm.Deterministic("theta_a", D["a_m"] + D["a_L"] @ za)
        da = theta_a - D["a_mu0"]
        pm.Potential("acc_prior", -0.5 * da @ (D["a_prec0"] @ da))
        sig_a = pm.Deterministic("sig_a", SIG_A_FLOOR + pm.HalfNormal("sig_a_raw", PRIORS["sig_a"]))
        pm.Potential("acc", cells_logp(D["a_n"], D["a_mean"], D["a_ss"], D["a_X"] @ theta_a, sig_a))
    return model


STORED = ("theta", "sig", "theta_a", "sig_a")


class BayesModel:
    """One compiled nutpie model. Not thread-safe: use from one thread at a time."""

    def __init__(self, max_services: int = MAX_SERVICES, max_nodes: int = MAX_NODES, backend: str = "pyfunc") -> None:
        self.layout = Layout(max_services, max_nodes)
        self.backend = backend  # scheduler/nutpie_model.py: how nutpie calls the model
        self._compiled = None
        self.compile_s: float | None = None
        self._lock = threading.Lock()

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def compile(self) -> None:
        with self._lock:
            if self._compiled is not None:
                return
            t0 = time.perf_counter()
            data = empty_data(self.layout, np.zeros(self.layout.S), np.zeros(self.layout.N))
            self._compiled = nutpie_model.compile_model(build_pymc_model(data), STORED, self.backend)
            self.compile_s = time.perf_counter() - t0
            log.info("nutpie model compiled in %.1f s (%s)", self.compile_s, self.backend)

    def sample(self, data: ModelData, draws: int = 100, tune: int = 150, chains: int = 2,
               seed: int = 0, keep: int = 256) -> Snapshot:
        self.compile()
        with self._lock:
            t0 = time.perf_counter()
            trace = nutpie_model.sample(self._compiled, data.arrays, draws=draws, tune=tune, chains=chains,
                                        cores=chains, seed=seed, progress_bar=False)
            post = trace.posterior
            raw = {}
            for k in STORED:
                v = np.asarray(post[k].values)
                raw[k] = v.reshape((-1,) + v.shape[2:])
            total = len(raw["sig"])
            pick = np.linspace(0, total - 1, min(keep, total)).astype(int)
            raw = {k: v[pick] for k, v in raw.items()}
            draws_ = self.layout.unpack(raw["theta"], raw["sig"], raw["theta_a"], raw["sig_a"])
            return Snapshot(draws=draws_, source="posterior", n_lat=data.n_lat, n_acc=data.n_acc,
                            refresh_s=time.perf_counter() - t0, svc_mu=data.svc_mu, node_mu=data.node_mu)
