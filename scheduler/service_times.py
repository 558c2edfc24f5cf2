"""Service times as the planner sees them: per-draw log service time of every (stage, node,
resolution, grade) from the posterior, shifted by each slot's prior and corrected by a job's
recent measured frames.

Why a correction between posterior refreshes: a refresh takes seconds and pools every job, so
a node that just slowed down (another job, thermal throttling, a cold cache) would otherwise
keep its old prediction for a whole refresh interval. Per (service, node) the log residual of
the job's last LAT_FRAMES frames in its recent window (observations.recent_window), shrunk
toward zero, is added per draw; the latest window alone decides whether the node surprised
the model (a shift).

And per (service, node, frame height), the shape of the node's `vdag profile` across
resolutions: log service time is linear in log pixels in the model, and a node's is not (the
person detector at 360p / 480p / 576p: 0.19 / 0.32 / 0.50 s on a slow node, 0.07 / 0.11 / 0.16 s
on a fast one); with the profile's one row per resolution beside hundreds of a job's 480p
frames, the pooled slope put 576p at ~0.43 s on the slow node where the profile said 0.50, and
the 576p plans it then chose had detected frames late at D = 0.5 s. (With the shape, 576p
frames under a job's own load still ran 0.44-0.52 s against a profile of 0.44-0.45 there; what
a plan's own frames did is scheduler/plan_memory.py's.)
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from scheduler import bayes, bayes_priors, knobs
from scheduler.bayes import Snapshot
from scheduler.bayes_priors import Layout, Slots
from scheduler.interface import NodeInfo, Observation
from scheduler.observations import recent_window
from services.video_conf import GRADES

SURPRISE_LOG = math.log(1.5)  # a window's service time this far (x or /) from the predictive is a shift...
# ...when the next window confirms it, or at once when this far off. One slow window alone is
# mostly a neighbour's burst (vtest.avi, D = 1 s: a 1.5x window twice a minute while a segment
# was scored on the same cores; each shift dropped the history and ran 4-6 s on worse plans).
SURPRISE_AT_ONCE_LOG = math.log(3.0)
LAT_FRAMES = 10  # the recent frames (observations.recent_window) a job's service-time correction pools
NOISE_PRIOR_FRAMES = 2.0  # frames that the posterior's noise scale counts as in frame_noise
HEAVY_SHARE = 0.05  # a stage lighter than this share of the delay bound wobbles; that is no shift


class ServiceTimes:
    """The slots of services and nodes, their prior means, and the recent-window corrections."""

    def __init__(self, layout: Layout) -> None:
        self.svc_slot, self.node_slot = Slots(layout.S), Slots(layout.N)
        self.svc_mu, self.node_mu, self.node_gpu = np.zeros(layout.S), np.zeros(layout.N), np.zeros(layout.N)
        self.svc_sd = np.full(layout.S, bayes_priors.PRIORS["svc_sd"])
        # (service slot, node slot) -> (per-draw log correction, window ts, snapshot version)
        self.window_delta: dict[tuple[int, int], tuple[np.ndarray, float, int]] = {}
        # (service slot, node slot) -> (window ts, sign) of a surprising window awaiting confirmation
        self.unconfirmed: dict[tuple[int, int], tuple[float, float]] = {}
        # (service slot, node slot) -> (log sd of the job's recent frames about the model, frames)
        self.window_sd: dict[tuple[int, int], tuple[float, int]] = {}
        # (service slot, node slot) -> frame height -> per-draw log deviation of the node's profile
        # at that height from the model, less its mean over heights (the shape, not the level)
        self.profile_shape: dict[tuple[int, int], dict[int, np.ndarray]] = {}

    def set_priors(self, nodes: Iterable[NodeInfo], services: Iterable[str]) -> None:
        """Prior means from what each node is (GPU, cores) and which services run."""
        for n in nodes:
            self.node_mu[self.node_slot(n.name)] = bayes_priors.node_prior(n)
            self.node_gpu[self.node_slot(n.name)] = float(n.gpu)
        for svc in services:
            self.svc_mu[self.svc_slot(svc)] = bayes_priors.service_prior(svc)
            self.svc_sd[self.svc_slot(svc)] = bayes_priors.service_prior_sd(svc)

    def prior_key(self) -> tuple:
        return self.svc_mu.tobytes(), self.svc_sd.tobytes(), self.node_mu.tobytes()

    def prior_shift(self, snap: Snapshot, s_idx: np.ndarray, j_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A slot whose prior mean changed after the draws were made is shifted by the change."""
        if snap.svc_mu is None:
            return np.zeros(len(s_idx)), np.zeros(len(j_idx))
        return self.svc_mu[s_idx] - snap.svc_mu[s_idx], self.node_mu[j_idx] - snap.node_mu[j_idx]

    def candidate_draws(self, d: dict[str, np.ndarray], snap: Snapshot, c: knobs.Candidates) -> np.ndarray:
        """log service time without load [K, J, R, G, n]."""
        s_idx = np.array([self.svc_slot(s) for s in c.services])
        j_idx = np.array([self.node_slot(name) for name in c.nodes])
        ds, dn = self.prior_shift(snap, s_idx, j_idx)
        svc = d["svc"][:, s_idx] + ds                    # [n, K]
        node = d["node"][:, j_idx] + dn                  # [n, J]
        sn = d["sn"][:, s_idx][:, :, j_idx]              # [n, K, J]
        beta = d["beta"][:, s_idx]                       # [n, K]
        logpix = np.log(np.array([w * h for _, w, h in c.res], float) / knobs.REF_PIXELS)  # [R]
        tun = c.tunable.astype(float)
        gpu = self.node_gpu[j_idx]                       # [J]
        gam_j = d["gam"][:, None, :] + gpu[None, :, None] * d["gam_gpu"][:, None, :]       # [n, J, G]
        beta_j = beta[:, :, None] + gpu[None, None, :] * d["beta_gpu"][:, None, None]      # [n, K, J]
        mu = (svc[:, :, None, None, None] + node[:, None, :, None, None] + sn[:, :, :, None, None]
              + beta_j[:, :, :, None, None] * logpix[None, None, None, :, None]
              + tun[None, :, None, None, None] * gam_j[:, None, :, None, :])
        return np.moveaxis(mu, 0, -1)                    # [K, J, R, G, n]

    def with_window_corrections(self, mu: np.ndarray, c: knobs.Candidates, n: int) -> np.ndarray:
        """`mu` [K, J, R, G, n] (modified in place) plus each (stage, node)'s recent-window correction."""
        for k, svc in enumerate(c.services):
            for j, node in enumerate(c.nodes):
                key = (self.svc_slot(svc), self.node_slot(node))
                hit = self.window_delta.get(key)
                if hit is not None:
                    mu[k, j] += hit[0][:n]
                shape = self.profile_shape.get(key)
                if shape:
                    for r, (_, _, height) in enumerate(c.res):
                        if height in shape:
                            mu[k, j, r] += shape[height][:n]
        return mu

    def _profile_shapes(self, observations: list[Observation], services: dict[str, str], snap: Snapshot,
                        d: dict[str, np.ndarray]) -> None:
        """profile_shape from the node profile's rows (source "profile") of each (service, node)."""
        self.profile_shape.clear()
        by_key: dict[tuple[str, str], list[Observation]] = {}
        for o in observations:
            if o.source == "profile" and o.service_s > 0 and o.stage in services:
                by_key.setdefault((services[o.stage], o.node), []).append(o)
        for (svc, node), rows in by_key.items():
            heights = sorted({o.height for o in rows})
            if len(heights) < 2:
                continue
            resid = {h: np.mean([np.log(o.service_s) - self.at_observation(d, snap, svc, o)
                                 for o in rows if o.height == h], axis=0) for h in heights}
            level = np.mean(list(resid.values()), axis=0)
            self.profile_shape[(self.svc_slot(svc), self.node_slot(node))] = {h: r - level for h, r in resid.items()}

    def shape_at(self, svc: str, o: Observation) -> np.ndarray | float:
        """The profile's shape at an observation's height (0 where the node has none)."""
        shape = self.profile_shape.get((self.svc_slot(svc), self.node_slot(o.node)))
        return shape.get(o.height, 0.0) if shape else 0.0

    def load_slope(self, d: dict[str, np.ndarray], gpu: np.ndarray) -> np.ndarray:
        """[J, n] coefficient of -log(1 - load) per node."""
        return d["b_load"][None, :] + gpu[:, None] * d["b_load_gpu"][None, :]

    def at_observation(self, d: dict[str, np.ndarray], snap: Snapshot, svc: str, o: Observation) -> np.ndarray:
        """Per-draw predicted log service time [n] at one observation's covariates."""
        s, j = self.svc_slot(svc), self.node_slot(o.node)
        ds, dn = self.prior_shift(snap, np.array([s]), np.array([j]))
        gpu = self.node_gpu[j]
        logpix = math.log(max(o.width * o.height, 1) / knobs.REF_PIXELS)
        mu = (d["svc"][:, s] + ds[0] + d["node"][:, j] + dn[0] + d["sn"][:, s, j]
              + (d["beta"][:, s] + gpu * d["beta_gpu"]) * logpix)
        if knobs.is_tunable(svc) and o.grade in GRADES:
            g = GRADES.index(o.grade)
            mu = mu + d["gam"][:, g] + gpu * d["gam_gpu"][:, g]
        lt = float(bayes.load_term(o.node_load or 0.0))
        return mu + (d["b_load"] + gpu * d["b_load_gpu"]) * lt

    def recalibrate(self, observations: list[Observation], services: dict[str, str], stale: dict[str, float],
                    snap: Snapshot, d: dict[str, np.ndarray], delay_bound: float) -> list[str]:
        """Per-draw corrections from a job's recent frames; returns the nodes whose latest window
        was a surprise. `services` maps stage -> service, `stale` node -> ignore frames before ts."""
        surprised: list[str] = []
        if self.window_delta and next(iter(self.window_delta.values()))[2] != snap.version:
            self.window_delta.clear()
            self.window_sd.clear()
        self._profile_shapes(observations, services, snap, d)
        # The job's recent measured stages per (service, node), newest first: observations come
        # oldest first, so read from the end. A tracked plan's 2-s window holds one or two
        # detected frames: one slow frame must not swing every plan's P(delay).
        recent: dict[tuple[str, str], list[Observation]] = {}
        newest = None
        for o in recent_window(observations, lambda o: o.service_s > 0 and o.stage in services
                               and o.ts >= stale.get(o.node, -math.inf)):
            newest = o.ts if newest is None else newest
            group = recent.setdefault((services[o.stage], o.node), [])
            if len(group) < LAT_FRAMES:
                group.append(o)
        for (svc, node), group in recent.items():
            key = (self.svc_slot(svc), self.node_slot(node))
            y = np.log([o.service_s for o in group])
            mu = np.stack([self.at_observation(d, snap, svc, o) + self.shape_at(svc, o) for o in group])  # [m, n]
            resid = (y[:, None] - mu).mean(axis=0)                                  # [n]
            m = len(group)
            latest = np.array([o.ts >= newest - 1e-9 for o in group])
            if latest.any():
                y_l, mu_l = float(y[latest].mean()), mu[latest].mean(axis=0)
                sd = math.sqrt(float(np.var(mu_l)) + float(np.mean(d["sig"] ** 2)) / int(latest.sum()))
                heavy = math.exp(y_l) > HEAVY_SHARE * delay_bound
                dev = float(np.median(y_l - mu_l))
                if self._confirmed(key, newest, dev if heavy and abs(dev) > max(SURPRISE_LOG, 3 * sd) else 0.0):
                    surprised.append(node)
            self.window_delta[key] = (resid * m / (m + 2.0), newest, snap.version)
            if m >= 3:
                self.window_sd[key] = (float(np.std((y[:, None] - mu).mean(axis=1), ddof=1)), m)
        return surprised

    def frame_noise(self, c: knobs.Candidates, idx: np.ndarray, sig: np.ndarray) -> np.ndarray:
        """Per-frame log sd of each stage of candidates idx [M, K, n]: the posterior's `sig` (one
        for every service), pooled with the spread this job's recent frames of that (stage,
        node) showed. One sig fits the detector and a 40-us counter alike, and the counter's
        relative jitter set it: 0.15-0.18 where the person detector's own frames varied by
        0.03, which put a plan at 0.37 of D = 0.5 s at P(delay <= D) 0.55-0.9, though its
        frames were never late."""
        out = np.broadcast_to(sig[None, None, :], (len(idx), len(c.stages), len(sig))).copy()
        for k, svc in enumerate(c.services):
            for j, node in enumerate(c.nodes):
                hit = self.window_sd.get((self.svc_slot(svc), self.node_slot(node)))
                rows = c.mapping[idx, k] == j
                if hit is not None and rows.any():
                    sd, m = hit
                    out[rows, k] = np.sqrt((m * sd**2 + NOISE_PRIOR_FRAMES * sig**2) / (m + NOISE_PRIOR_FRAMES))
        return out

    def _confirmed(self, key: tuple[int, int], window_ts: float, dev: float) -> bool:
        """A surprising window (dev != 0, log deviation) is a shift when the window before it
        deviated the same way, or at once past SURPRISE_AT_ONCE_LOG; a calm window clears it."""
        seen = self.unconfirmed.get(key)
        if seen is not None and seen[0] >= window_ts:
            return False                                   # the same window, read again
        if dev == 0.0:
            self.unconfirmed.pop(key, None)
            return False
        sign = math.copysign(1.0, dev)
        if abs(dev) > SURPRISE_AT_ONCE_LOG or (seen is not None and seen[1] == sign):
            self.unconfirmed.pop(key, None)
            return True
        self.unconfirmed[key] = (window_ts, sign)
        return False
