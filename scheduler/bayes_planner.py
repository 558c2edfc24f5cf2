"""The Bayesian planner: decides from posterior draws, refreshes the posterior in the background.

Decision (per job, a few ms):
1. Score every candidate (knobs.Candidates) with posterior-mean service times: mean delay,
   E[F1], compute share. Keep the most useful ones that might meet the delay constraint.
2. For those, draw per-frame delays and F1 from the posterior (predictive, with noise):
   P(delay <= constraint) and expected utility.
3. Feasible = P(delay <= constraint) >= delay_prob (and E[F1] >= the user's accuracy when
   some candidate reaches it). Among feasible plans within `explore_margin` of the best
   expected utility, keep the last plan (stability), or, with probability `explore_prob`,
   pick by Thompson sampling (one posterior draw): exploration never costs more than the
   margin in expected utility. Nothing feasible: the plan most likely to meet the delay.

Threads: `plan` may be called from one thread (the scheduler loop) while the refresher
thread samples; they share only the immutable Snapshot (swapped under a lock) and the
observation buffer (under a lock). The compiled model is used by the refresher thread only
(or by the caller of `refresh_now` when there is no refresher).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import numpy as np

from scheduler import bayes, knobs
from scheduler.bayes import BayesModel, Slots, Snapshot
from scheduler.delay import node_arrays, plan_delay, transfer_s
from scheduler.interface import Observation, Plan, PlanningInput
from services.video_conf import GRADES

log = logging.getLogger(__name__)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class BayesPlanner:
    name = "bayes"

    def __init__(
        self,
        model: BayesModel | None = None,
        *,
        background: bool = True,
        refresh_interval_s: float = 5.0,
        delay_prob: float = 0.95,
        n_draws: int = 64,
        shortlist: int = 48,
        explore_margin: float = 0.01,
        explore_prob: float = 0.1,
        obs_per_job: int = 400,
        max_obs: int = 6000,
        job_ttl_s: float = 300.0,
        seed: int = 0,
    ) -> None:
        self.model = model or BayesModel()
        L = self.model.layout
        self.delay_prob, self.n_draws, self.shortlist = delay_prob, n_draws, shortlist
        self.explore_margin, self.explore_prob = explore_margin, explore_prob
        self.obs_per_job, self.max_obs, self.job_ttl_s = obs_per_job, max_obs, job_ttl_s
        self.refresh_interval_s = refresh_interval_s
        self.svc_slot, self.node_slot = Slots(L.S), Slots(L.N)
        self._svc_mu, self._node_mu, self._node_gpu = np.zeros(L.S), np.zeros(L.N), np.zeros(L.N)
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self._lock = threading.Lock()
        self._obs: dict[str, tuple[float, list[tuple[Observation, str, float, float]]]] = {}
        self._bytes_ratio = 1.0
        self._dirty = False
        self._snapshot = bayes.prior_snapshot(L, self._svc_mu, self._node_mu, seed=seed)
        self._cands: OrderedDict[tuple, knobs.Candidates] = OrderedDict()
        self.refresh_times: list[float] = []
        self.decision_times: list[float] = []
        self._background = background
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._background and self._thread is None:
            self._thread = threading.Thread(target=self._refresh_loop, name="vdag-posterior", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _refresh_loop(self) -> None:
        log.info("posterior refresher started (every %.1f s)", self.refresh_interval_s)
        try:
            self.model.compile()  # compiled in this thread, used only here
        except Exception:
            log.exception("model compile failed; planning stays on the prior")
            return
        while not self._stop.is_set():
            if self._dirty:
                try:
                    self.refresh_now()
                except Exception:
                    log.exception("posterior refresh failed; keeping the previous posterior")
            self._stop.wait(self.refresh_interval_s)
        log.info("posterior refresher stopped")

    # ---- data ---------------------------------------------------------------------------------
    def _ingest(self, inp: PlanningInput) -> None:
        services = {s.name: s.service for s in inp.dag.stages}
        rows = [(o, services.get(o.stage, o.stage), float(inp.source.height), float(inp.source.fps))
                for o in inp.observations[-self.obs_per_job:] if o.stage in services]
        for n in inp.nodes:
            self._node_mu[self.node_slot(n.name)] = bayes.node_prior(n)
            self._node_gpu[self.node_slot(n.name)] = float(n.gpu)
        for svc in set(services.values()):
            self._svc_mu[self.svc_slot(svc)] = bayes.service_prior(svc)
        with_bytes = [o for o in inp.observations[-50:] if o.frame_bytes > 0]
        with self._lock:
            if with_bytes:
                pred = knobs.frame_bytes(np.array([o.width for o in with_bytes]), np.array([o.height for o in with_bytes]),
                                         np.array([o.quality for o in with_bytes]))
                ratio = float(np.median(np.array([o.frame_bytes for o in with_bytes]) / pred))
                self._bytes_ratio = 0.7 * self._bytes_ratio + 0.3 * ratio
            if rows or inp.job_uid in self._obs:
                self._obs[inp.job_uid] = (time.time(), rows)
                self._dirty = True

    def forget(self, job_uid: str) -> None:
        with self._lock:
            self._obs.pop(job_uid, None)

    def refresh_now(self) -> Snapshot:
        """Sample the posterior from the current observations and publish it (blocking)."""
        now = time.time()
        with self._lock:
            for uid in [u for u, (ts, _) in self._obs.items() if now - ts > self.job_ttl_s]:
                del self._obs[uid]
            rows = [r for _, rs in self._obs.values() for r in rs][-self.max_obs:]
            self._dirty = False
            svc_mu, node_mu, node_gpu = self._svc_mu.copy(), self._node_mu.copy(), self._node_gpu.copy()
        data = bayes.build_data(rows, self.model.layout, self.svc_slot, self.node_slot, svc_mu, node_mu, node_gpu)
        snap = self.model.sample(data, seed=self._seed + len(self.refresh_times))
        with self._lock:
            self._snapshot = Snapshot(**{**snap.__dict__, "version": self._snapshot.version + 1})
        self.refresh_times.append(snap.refresh_s)
        log.debug("posterior refreshed: %d latency, %d accuracy obs in %.2f s", snap.n_lat, snap.n_acc, snap.refresh_s)
        return self._snapshot

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    # ---- decision -----------------------------------------------------------------------------
    def _candidates(self, inp: PlanningInput) -> knobs.Candidates:
        key = knobs.candidates_key(inp)
        c = self._cands.get(key)
        if c is None:
            c = knobs.build_candidates(inp)
            self._cands[key] = c
            if len(self._cands) > 256:
                self._cands.popitem(last=False)
        else:
            self._cands.move_to_end(key)
        return c

    def _service_draws(self, snap: Snapshot, c: knobs.Candidates, load_term: np.ndarray, n: int):
        """log service time [K, J, R, G, n] (posterior), and noise sd [n]."""
        d = snap.draws
        sel = slice(0, min(n, snap.n))
        s_idx = np.array([self.svc_slot(s) for s in c.services])
        j_idx = np.array([self.node_slot(name) for name in c.nodes])
        svc = d["svc"][sel][:, s_idx]                    # [n, K]
        node = d["node"][sel][:, j_idx]                  # [n, J]
        if snap.svc_mu is not None:  # a slot whose prior mean changed after the draws were made
            svc = svc + (self._svc_mu[s_idx] - snap.svc_mu[s_idx])
            node = node + (self._node_mu[j_idx] - snap.node_mu[j_idx])
        sn = d["sn"][sel][:, s_idx][:, :, j_idx]         # [n, K, J]
        beta = d["beta"][sel][:, s_idx]                  # [n, K]
        gam = d["gam"][sel]                              # [n, G]
        b_load = d["b_load"][sel]                        # [n]
        logpix = np.log(np.array([w * h for _, w, h in c.res], float) / knobs.REF_PIXELS)  # [R]
        tun = c.tunable.astype(float)
        gpu = self._node_gpu[j_idx]                      # [J]
        gam_j = gam[:, None, :] + gpu[None, :, None] * d["gam_gpu"][sel][:, None, :]      # [n, J, G]
        beta_j = beta[:, :, None] + gpu[None, None, :] * d["beta_gpu"][sel][:, None, None]  # [n, K, J]
        mu = (svc[:, :, None, None, None] + node[:, None, :, None, None] + sn[:, :, :, None, None]
              + beta_j[:, :, :, None, None] * logpix[None, None, None, :, None]
              + tun[None, :, None, None, None] * gam_j[:, None, :, None, :]
              + b_load[:, None, None, None, None] * load_term[None, None, :, None, None])
        return np.moveaxis(mu, 0, -1), d["sig"][sel]    # [K, J, R, G, n]

    def _f1_draws(self, snap: Snapshot, c: knobs.Candidates, n: int) -> np.ndarray:
        """F1 draws per grid row [rows, n]."""
        d = snap.draws
        sel = slice(0, min(n, snap.n))
        rows = np.arange(len(c.fps) // c.n_map) * c.n_map
        h = c.height[rows].astype(float)
        logh = np.log(np.minimum(h / c.src_height, 1.0))
        logf = np.log(np.minimum(c.fps[rows] / c.src_fps, 1.0))
        logq = np.log(c.quality[rows] / 100.0)
        g = c.grade_idx[rows]
        eta = (d["th"][sel][:, g] + d["kappa"][sel][:, None] * logh + d["lam"][sel][:, None] * logf
               + d["rho"][sel][:, None] * logq)
        return _sigmoid(eta).T

    def plan(self, inp: PlanningInput) -> Plan:
        t0 = time.perf_counter()
        self.start()
        self._ingest(inp)
        c = self._candidates(inp)
        snap = self._snapshot
        D = inp.constraint.delay
        target = inp.constraint.accuracy or knobs.ACCURACY_TARGET
        bg, cap, qdepth, bw = node_arrays(c, inp.nodes)
        last = c.index_of_plan(inp.last_plan)

        mu, sig = self._service_draws(snap, c, np.zeros(len(c.nodes)), self.n_draws)
        n = mu.shape[-1]
        mean_t = np.exp(mu + sig**2 / 2)                                  # [K, J, R, G, n]
        # Load slows service (b_load * -log(1 - load)); the load the node reports includes
        # this job's own work under its last plan, which is subtracted first.
        tbar0 = mean_t.mean(axis=-1)                                      # [K, J, R, G]
        if last is not None:
            li = np.array([last])
            own = self._own_work(c, li, tbar0)
            bg = np.clip(bg - c.fps[last] * own / cap, 0.0, 0.99)
        b_load = snap.draws["b_load"][:n]
        slow = np.exp(b_load[None, :] * bayes.load_term(bg)[:, None])     # [J, n]
        mean_t = mean_t * slow[None, :, None, None, :]
        tbar = mean_t.mean(axis=-1)
        f1_rows = self._f1_draws(snap, c, self.n_draws)                   # [rows, n]
        ef1_rows = f1_rows.mean(axis=1)
        golden = c.golden_compute()
        cost_all = c.compute() / golden
        nbytes_all = knobs.frame_bytes(c.width, c.height, c.quality) * self._bytes_ratio

        # Phase 1: every candidate with posterior-mean service times.
        allidx = np.arange(len(c))
        K = len(c.stages)
        st_mean = np.stack([tbar[k, c.mapping[:, k], c.res_idx, c.grade_idx] for k in range(K)], axis=1)[:, :, None]
        trans_all = transfer_s(c, allidx, nbytes_all, bw)
        d_mean, _ = plan_delay(c, allidx, st_mean, st_mean, bg, cap, qdepth, trans_all)
        d_mean = d_mean[:, 0]
        ef1 = ef1_rows[c.grid_idx]
        u_mean = knobs.utility(ef1, cost_all, d_mean <= D, target)
        short = self._shortlist(d_mean, u_mean, D, last)

        # Phase 2: posterior predictive draws for the shortlist.
        eps = self._rng.standard_normal((K, n))
        st = np.stack([mu[k, c.mapping[short, k], c.res_idx[short], c.grade_idx[short]] for k in range(K)], axis=1)
        st = np.exp(st + sig[None, None, :] * eps[None, :, :]) * slow[c.mapping[short], :]
        mt = np.stack([mean_t[k, c.mapping[short, k], c.res_idx[short], c.grade_idx[short]] for k in range(K)], axis=1)
        delay, peak = plan_delay(c, short, st, mt, bg, cap, qdepth, trans_all[short])
        p_ok = (delay <= D).mean(axis=1)
        f1 = f1_rows[c.grid_idx[short]]                                   # [M, n]
        cost = cost_all[short]
        eu = knobs.utility(f1, cost[:, None], np.ones_like(f1, bool), target).mean(axis=1) * p_ok
        feasible = p_ok >= self.delay_prob
        if inp.constraint.accuracy > 0 and (feasible & (f1.mean(axis=1) >= inp.constraint.accuracy)).any():
            feasible &= f1.mean(axis=1) >= inp.constraint.accuracy
        if feasible.any():
            best = int(np.argmax(np.where(feasible, eu, -np.inf)))
            near = feasible & (eu >= eu[best] - self.explore_margin)
            pos_last = int(np.flatnonzero(short == last)[0]) if last is not None and last in short else None
            if self._rng.random() < self.explore_prob:
                d_star = int(self._rng.integers(n))
                ts_u = knobs.utility(f1[:, d_star], cost, delay[:, d_star] <= D, target)
                pick, why = int(np.argmax(np.where(near, ts_u, -np.inf))), "explore"
            elif pos_last is not None and near[pos_last]:
                pick, why = pos_last, "keep"
            else:
                pick, why = best, "best"
        else:
            pick = int(np.lexsort((np.median(delay, axis=1), -p_ok))[0])
            why = "no plan meets the delay bound; most likely to"
        i = int(short[pick])
        reason = self._reason(c, short, pick, p_ok, f1, cost, D, why, snap, ef1, i)
        plan = knobs.to_plan(c, i, inp.nodes, self.name, reason)
        self.decision_times.append(time.perf_counter() - t0)
        return plan

    @staticmethod
    def _own_work(c: knobs.Candidates, idx: np.ndarray, tbar: np.ndarray) -> np.ndarray:
        work = np.zeros(len(c.nodes))
        i = int(idx[0])
        for k in range(len(c.stages)):
            work[c.mapping[i, k]] += tbar[k, c.mapping[i, k], c.res_idx[i], c.grade_idx[i]]
        return work

    def _shortlist(self, d_mean: np.ndarray, u_mean: np.ndarray, D: float, last: int | None) -> np.ndarray:
        ok = np.flatnonzero(d_mean <= 1.25 * D)
        top = ok[np.argsort(-u_mean[ok])[: self.shortlist]]
        fastest = np.argsort(d_mean)[:8]
        extra = [last] if last is not None else []
        return np.unique(np.concatenate([top, fastest, np.array(extra, dtype=np.int64)])).astype(np.int64)

    def _reason(self, c, short, pick, p_ok, f1, cost, D, why, snap, ef1_all, i) -> str:
        ef1 = f1.mean(axis=1)
        head = (f"{knobs.describe(c, i)}: P(delay<={D:g}s)={p_ok[pick]:.2f}, E[F1]={ef1[pick]:.2f}, "
                f"compute {cost[pick]:.0%} of golden ({why}; {snap.source} v{snap.version}, "
                f"{snap.n_lat} latency / {snap.n_acc} accuracy obs)")
        better = np.flatnonzero(ef1 > ef1[pick] + 0.01)
        if len(better):
            b = better[np.argmax(ef1[better])]
            head += (f"; {knobs.describe(c, int(short[b]))} would give E[F1]={ef1[b]:.2f} "
                     f"but P(delay<={D:g}s)={p_ok[b]:.2f}")
        # The next-cheaper resolution with everything else equal: what it would lose.
        r = int(c.res_idx[i])
        if r > 0:
            lower = c.find(c.res[r - 1][0], float(c.fps[i]), int(c.grade_idx[i]), int(c.quality[i]), tuple(c.mapping[i]))
            if lower is not None:
                head += f"; {c.res[r - 1][0]} would lose {ef1_all[i] - ef1_all[lower]:.2f} F1"
        return head


def grade_of(plan: Plan) -> str | None:
    return next((m.grade for m in plan.flow_mapping.values() if m.grade in GRADES), None)
