"""The Bayesian model's coefficients: where each one sits in the flat parameter vectors
(`Layout`, with name -> slot maps `Slots`) and its prior, shared by the PyMC model
(scheduler/bayes.py), the numpy cold-start and Gaussian draws, and the planner's per-slot
prior means (scheduler/service_times.py)."""
from __future__ import annotations

import logging
import math
import threading

import numpy as np

from scheduler import knobs
from scheduler.interface import NodeInfo
from services.video_conf import GRADES

log = logging.getLogger(__name__)

N_GRADES = len(GRADES)

# Prior constants, shared by the PyMC model and the numpy cold-start draws.
PRIORS = {
    "a0": (math.log(knobs.CPU_TIMINGS_S["n"][2]), 0.3),  # YOLO-n at REF_PIXELS on the reference CPU
    "svc_sd": 0.5, "svc_sd_dnn": 0.25, "node_sd": 0.35, "sn_sd": 0.2, "beta_sd": 0.1,
    "beta0": (knobs.pixel_exponent(), 0.1),
    "gam": (np.log(knobs.grade_latency_ratio()[1:]), 0.08),   # per-grade sd (log)
    "gam_scale_sd": 0.15,     # shared relative error of the grade-ratio table
    "b_load": (1.0, 0.3),
    "b_load_gpu": (-0.5, 0.3),  # a GPU slows less with host load than a CPU does
    "gam_gpu": (-0.3, 0.15),  # the GPU's grade effect as a fraction of the CPU's: mean, sd (shared)
    "beta_gpu": (-0.2, 0.2),
    "sig": 0.3,
    # log F1 of each grade vs x: log of the COCO mAP ratio, x (1 + u) + v (u shared, v per grade).
    "th": (np.log([knobs.COCO_MAP[g] / knobs.COCO_MAP["x"] for g in GRADES]), 0.04),
    "th_scale_sd": 0.6,
    # log F1 per log height ratio. COCO mAP alone says ~0.3 (large objects); the people of a
    # surveillance view are small: vtest.avi measures ~1.0 (480p of 576 loses 0.15 F1). An
    # optimistic prior sends a cold job to low resolutions it cannot afford accuracy-wise
    # (measured: 360p-480p for the first ~20 s, F1 0.75-0.85), a pessimistic one costs compute.
    "kappa": (0.6, 0.35),
    # log F1 per second of staleness. People walking across a surveillance view (vtest.avi, 480p
    # segments): 2 fps keeps 0.70 of the 10 fps 0.91, 1 fps 0.54, i.e. about -0.6. At -0.2 the
    # prior ranked 480p at 2 fps (0.83) above 5 fps tracking 2 (0.80), the reverse of what they
    # measure (0.70 vs 0.87), and that was the plan a slow node started on at D = 0.5 s.
    "lam": (-0.5, 0.3),
    "tau": (-0.1, 0.2),     # log F1 per second of tracking (vtest.avi segments: about -0.06 to -0.13)
    # log F1 per share of kept frames shown with tracked boxes, however fresh: optical flow moves
    # the detector's boxes but neither refits them nor finds newcomers. vtest.avi
    # (bench/tracking_quality.py): tracked-frame F1 0.917 at ntracking 2, 0.895 at 4, i.e.
    # ~0.95 at age 0 and -0.022 per source frame of age; without this term tracking every other
    # frame looked as good as detecting every one (within 0.005; measured 0.02-0.03 below).
    "psi": (-0.05, 0.04),
    "rho": (0.05, 0.1),     # log F1 per log(q / 100)
    "sig_a": 0.2,
}
LIGHT_SERVICE_S = 0.005  # prior for a non-DNN stage at reference pixels



def service_prior(service: str) -> float:
    """Prior mean of the service offset, relative to YOLO-n on the reference CPU: 0 for a graded
    detector (its grade term adds the rest), the measured ratio for a fixed-model detector,
    a few ms for a light stage."""
    kind = knobs.stage_kind(service)
    if kind == knobs.GRADED:
        return 0.0
    if kind == knobs.FIXED:
        return math.log(knobs.fixed_latency_ratio())
    return math.log(LIGHT_SERVICE_S / knobs.CPU_TIMINGS_S["n"][2])


def service_prior_sd(service: str) -> float:
    """Sd of the service offset: a detector's cost relative to YOLO-n is measured (DESIGN.md
    s.5), a light stage's is a guess."""
    return PRIORS["svc_sd_dnn"] if knobs.is_dnn(service) else PRIORS["svc_sd"]


def node_prior(node: NodeInfo) -> float:
    """Prior mean of the node offset: the reference is a 2-core CPU; a GPU ~14x faster."""
    if node.gpu:
        return math.log(0.07)
    return -0.6 * math.log(max(node.cpu_count, 1) / 2.0)



class Slots:
    """Stable name -> slot index with a fixed capacity; overflow shares the last slot."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._index: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> int:
        with self._lock:
            if name not in self._index:
                if len(self._index) >= self.capacity - 1:
                    log.warning("slot capacity %d reached; %r shares the last slot", self.capacity, name)
                    self._index[name] = self.capacity - 1
                    return self.capacity - 1
                self._index[name] = len(self._index)
            return self._index[name]


class Layout:
    """Where each latency / accuracy coefficient sits in the flat parameter vectors.

    Latency theta: svc[S], node[N], sn[S*N], beta[S], gam[G-1] (grades s..x vs n), b_load,
    gam_gpu[G-1], beta_gpu, b_load_gpu (the GPU interactions).
    Accuracy theta: th[G], kappa, lam, rho, tau, psi.
    """

    def __init__(self, S: int, N: int) -> None:
        self.S, self.N = S, N
        sizes = {"svc": S, "node": N, "sn": S * N, "beta": S, "gam": N_GRADES - 1, "b_load": 1,
                 "gam_gpu": N_GRADES - 1, "beta_gpu": 1, "b_load_gpu": 1}
        self.lat: dict[str, slice] = {}
        i = 0
        for k, n in sizes.items():
            self.lat[k] = slice(i, i + n)
            i += n
        self.P = i
        self.acc = {"th": slice(0, N_GRADES), "kappa": slice(N_GRADES, N_GRADES + 1),
                    "lam": slice(N_GRADES + 1, N_GRADES + 2), "rho": slice(N_GRADES + 2, N_GRADES + 3),
                    "tau": slice(N_GRADES + 3, N_GRADES + 4), "psi": slice(N_GRADES + 4, N_GRADES + 5)}
        self.PA = N_GRADES + 5

    def lat_prior(self, svc_mu: np.ndarray, node_mu: np.ndarray,
                  svc_sd: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the latency coefficients (beta0 integrated out).
        svc_sd: per-slot sd of the service offset (default PRIORS["svc_sd"])."""
        P, L = PRIORS, self.lat
        svc_sd = np.full(self.S, P["svc_sd"]) if svc_sd is None else np.asarray(svc_sd, float)
        mean, cov = np.zeros(self.P), np.zeros((self.P, self.P))

        def block(sl: slice, m, c) -> None:
            mean[sl] = m
            cov[sl, sl] = c

        block(L["svc"], svc_mu + P["a0"][0], np.diag(P["a0"][1] ** 2 + svc_sd**2))
        block(L["node"], node_mu, np.diag(np.full(self.N, P["node_sd"] ** 2)))
        block(L["sn"], 0.0, np.diag(np.full(self.S * self.N, P["sn_sd"] ** 2)))
        # beta[s] = beta0 + N(0, beta_sd): partial pooling of the pixel slope across services.
        block(L["beta"], P["beta0"][0], np.eye(self.S) * P["beta_sd"] ** 2 + P["beta0"][1] ** 2)
        # gam = log r * (1 + u) + v: u shared by every grade, v per grade.
        lr = P["gam"][0]
        eye = np.eye(N_GRADES - 1)
        block(L["gam"], lr, P["gam_scale_sd"] ** 2 * np.outer(lr, lr) + P["gam"][1] ** 2 * eye)
        block(L["b_load"], P["b_load"][0], np.array([[P["b_load"][1] ** 2]]))
        # On a GPU, pixels and grade cost relatively less (an under-occupied device):
        # gam_gpu = w * log r + v', w shared by every grade.
        block(L["gam_gpu"], P["gam_gpu"][0] * lr, P["gam_gpu"][1] ** 2 * np.outer(lr, lr) + 0.05**2 * eye)
        block(L["beta_gpu"], P["beta_gpu"][0], np.array([[P["beta_gpu"][1] ** 2]]))
        block(L["b_load_gpu"], P["b_load_gpu"][0], np.array([[P["b_load_gpu"][1] ** 2]]))
        return mean, cov

    def acc_prior(self) -> tuple[np.ndarray, np.ndarray]:
        P = PRIORS
        lr = P["th"][0]
        slopes = [P[k] for k in ("kappa", "lam", "rho", "tau", "psi")]
        mean = np.concatenate([lr, [m for m, _ in slopes]])
        cov = np.zeros((self.PA, self.PA))
        cov[:N_GRADES, :N_GRADES] = P["th_scale_sd"] ** 2 * np.outer(lr, lr) + P["th"][1] ** 2 * np.eye(N_GRADES)
        cov[N_GRADES:, N_GRADES:] = np.diag([sd**2 for _, sd in slopes])
        return mean, cov

    def lat_rows(self, svc, node, grade, tun, logpix, load, gpu) -> np.ndarray:
        X = np.zeros((len(svc), self.P))
        r = np.arange(len(svc))
        L = self.lat
        X[r, L["svc"].start + svc] = 1
        X[r, L["node"].start + node] = 1
        X[r, L["sn"].start + svc * self.N + node] = 1
        X[r, L["beta"].start + svc] = logpix
        g = np.asarray(grade)
        has = g > 0
        X[r[has], L["gam"].start + g[has] - 1] = np.asarray(tun)[has]
        X[r, L["b_load"].start] = load
        gpu = np.asarray(gpu, float)
        X[r[has], L["gam_gpu"].start + g[has] - 1] = (np.asarray(tun) * gpu)[has]
        X[r, L["beta_gpu"].start] = logpix * gpu
        X[r, L["b_load_gpu"].start] = load * gpu
        return X

    def acc_rows(self, grade, logh, stale, logq, track=0.0, share=0.0) -> np.ndarray:
        X = np.zeros((len(grade), self.PA))
        r = np.arange(len(grade))
        X[r, np.asarray(grade)] = 1
        X[:, N_GRADES], X[:, N_GRADES + 1], X[:, N_GRADES + 2], X[:, N_GRADES + 3], X[:, N_GRADES + 4] = (
            logh, stale, logq, track, share)
        return X

    def unpack(self, theta: np.ndarray, sig: np.ndarray, theta_a: np.ndarray, sig_a: np.ndarray) -> dict[str, np.ndarray]:
        n = len(theta)
        L, A = self.lat, self.acc
        return {
            "svc": theta[:, L["svc"]], "node": theta[:, L["node"]],
            "sn": theta[:, L["sn"]].reshape(n, self.S, self.N), "beta": theta[:, L["beta"]],
            "gam": np.concatenate([np.zeros((n, 1)), theta[:, L["gam"]]], axis=1),
            "b_load": theta[:, L["b_load"]][:, 0], "sig": np.asarray(sig),
            "gam_gpu": np.concatenate([np.zeros((n, 1)), theta[:, L["gam_gpu"]]], axis=1),
            "beta_gpu": theta[:, L["beta_gpu"]][:, 0], "b_load_gpu": theta[:, L["b_load_gpu"]][:, 0],
            "th": theta_a[:, A["th"]], "kappa": theta_a[:, A["kappa"]][:, 0],
            "lam": theta_a[:, A["lam"]][:, 0], "rho": theta_a[:, A["rho"]][:, 0], "sig_a": np.asarray(sig_a),
            "tau": theta_a[:, A["tau"]][:, 0], "psi": theta_a[:, A["psi"]][:, 0],
        }
