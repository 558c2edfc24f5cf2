"""The posterior every job's decisions read: an observation buffer fed by each job, and a
background thread that turns it into immutable Snapshots.

The model compiles on its own thread (about 4 s, 15-20 s on a first start); until then the refresher publishes the Gaussian
posterior at plug-in noise scales (bayes.gaussian_snapshot, milliseconds), so a tracker's first
jobs do not plan on the prior for the whole compile. The compiled model is used by the
refresher thread only (or by the caller of `refresh_now` when there is no refresher). The
planner and the refresher share only the Snapshot (swapped under the lock) and the buffer
(under the lock).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict

import numpy as np

from scheduler import bayes, knobs
from scheduler.bayes import BayesModel, Snapshot
from scheduler.interface import Observation, PlanningInput
from scheduler.service_times import ServiceTimes

log = logging.getLogger(__name__)

Row = tuple[Observation, str, float, float]  # observation, its service, source height, source fps


def _acc_key(o: Observation) -> tuple:
    """One profiling segment scores many configs at one time stamp: each is its own entry."""
    return (o.ts, o.stage, o.height, o.fps, o.ntracking, o.quality)


class PosteriorRefresher:
    def __init__(self, model: BayesModel, times: ServiceTimes, *, background: bool = True,
                 refresh_interval_s: float = 5.0, obs_per_job: int = 400, acc_memory: int = 400,
                 max_obs: int = 6000, job_ttl_s: float = 300.0, seed: int = 0) -> None:
        self.model, self.times = model, times
        self.refresh_interval_s = refresh_interval_s
        self.obs_per_job, self.max_obs, self.job_ttl_s = obs_per_job, max_obs, job_ttl_s
        # Profiled accuracy outlives the job's sliding window (content drifts slowly, and each
        # profile is one frame a round): the last `acc_memory` per job, keyed by (ts, stage).
        self.acc_memory = acc_memory
        self.seed = seed
        self.bytes_ratio = 1.0  # measured JPEG bytes / knobs.frame_bytes' model, smoothed
        self.refresh_times: list[float] = []
        self._lock = threading.Lock()
        self._obs: dict[str, tuple[float, list[Row]]] = {}
        self._acc: dict[str, OrderedDict[tuple, Row]] = {}
        self._prior_key: tuple = ()
        self._dirty = False
        self._wake = threading.Event()
        # One BLAS thread: this runs on the scheduler thread while models load and export on
        # the others; a multi-threaded OpenBLAS Cholesky here once spun for over 10 minutes
        # (`vdag up` on a fresh clone, the job never left UNSCHED).
        with bayes.blas_single():
            self._snapshot = bayes.prior_snapshot(model.layout, times.svc_mu, times.node_mu, seed=seed)
        self._background = background
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def urgent(self) -> bool:
        """A shift was detected since the last refresh: refresh now rather than on schedule."""
        return self._wake.is_set()

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._background and self._thread is None:
            self._thread = threading.Thread(target=self._refresh_loop, name="vdag-posterior", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        close_model = getattr(self.model, "close", None)  # a sampler process (ProcessBayesModel)
        if callable(close_model):
            close_model()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _refresh_loop(self) -> None:
        log.info("posterior refresher started (every %.1f s, or at once after a shift)", self.refresh_interval_s)
        # Until the compile is done, refreshes use the Gaussian approximation; the compiled
        # model is used by this thread only, after the join.
        compiler = threading.Thread(target=self._compile, name="vdag-compile", daemon=True)
        compiler.start()
        while not self._stop.is_set():
            self._wake.clear()
            if self._dirty:
                try:
                    if self.model.compiled:
                        compiler.join()
                        self.refresh_now()
                    else:
                        self.refresh_gaussian()
                except Exception:
                    log.exception("posterior refresh failed; keeping the previous posterior")
            self._wake.wait(1.0 if compiler.is_alive() else self.refresh_interval_s)
        log.info("posterior refresher stopped")

    def _compile(self) -> None:
        try:
            self.model.compile()
        except Exception:
            log.exception("model compile failed; planning stays on the Gaussian approximation")

    # ---- the buffer ---------------------------------------------------------------------------
    def ingest(self, inp: PlanningInput, stale: dict[str, float]) -> None:
        """Take a job's current observations (those on a `stale` node before its ts left out)."""
        services = {s.name: s.service for s in inp.dag.stages}
        h, f = float(inp.source.height), float(inp.source.fps)
        rows = [(o, services[o.stage], h, f) for o in inp.observations[-self.obs_per_job:]
                if o.stage in services and (not stale or o.ts >= stale.get(o.node, -math.inf))]
        if self._snapshot.source == "prior":  # cold start: draw the prior of the services seen
            key = self.times.prior_key()
            if key != self._prior_key:
                self._prior_key = key
                t = self.times
                snap = bayes.prior_snapshot(self.model.layout, t.svc_mu, t.node_mu, seed=self.seed, svc_sd=t.svc_sd)
                with self._lock:
                    if self._snapshot.source == "prior":
                        self._snapshot = Snapshot(**{**snap.__dict__, "version": self._snapshot.version + 1})
        with_bytes = [(o.width, o.height, o.quality, o.frame_bytes) for o in inp.observations[-20:] if o.frame_bytes > 0]
        with self._lock:
            if with_bytes:
                w, h, q, b = np.array(with_bytes, float).T
                ratio = float(b.sum() / knobs.frame_bytes(w, h, q).sum())
                self.bytes_ratio = 0.7 * self.bytes_ratio + 0.3 * ratio
            mem = self._acc.setdefault(inp.job_uid, OrderedDict())
            for r in rows:
                if r[0].accuracy is not None:
                    mem[_acc_key(r[0])] = r
            while len(mem) > self.acc_memory:
                mem.popitem(last=False)
            in_window = {_acc_key(r[0]) for r in rows if r[0].accuracy is not None}
            rows = rows + [r for k, r in mem.items() if k not in in_window]
            if rows or inp.job_uid in self._obs:
                self._obs[inp.job_uid] = (time.time(), rows)
                self._dirty = True
            on_prior = bool(rows) and self._snapshot.source == "prior"
        if on_prior:
            # First data (often this node's `vdag profile` rows, before any frame): the Gaussian
            # posterior takes milliseconds, so even a job's first plan is made from this node's
            # measured speed, not from the prior (measured on vtest.avi at D = 0.5 s: 480p@2fps
            # first, from a prior that put the source resolution at P(delay) 0.75).
            self.refresh_gaussian()

    def accuracy_observations(self, job_uid: str) -> list[Observation]:
        """The job's profiled accuracy, its window and its memory."""
        with self._lock:
            return [r[0] for r in self._acc.get(job_uid, {}).values()]

    def drop_stale(self, job_uid: str, stale: dict[str, float]) -> None:
        """After a shift: the job's observations on a node before its stale ts describe a world
        that is gone; refresh at once without them."""
        with self._lock:
            if job_uid in self._obs:
                ts, rows = self._obs[job_uid]
                self._obs[job_uid] = (ts, [r for r in rows if r[0].ts >= stale.get(r[0].node, -math.inf)])
            self._dirty = True
        self._wake.set()

    def forget(self, job_uid: str) -> None:
        with self._lock:
            self._obs.pop(job_uid, None)
            self._acc.pop(job_uid, None)

    # ---- sampling -----------------------------------------------------------------------------
    def refresh_now(self) -> Snapshot:
        """Sample the posterior from the current observations and publish it (blocking)."""
        with bayes.blas_single():
            return self._refresh(lambda data: self.model.sample(data, seed=self.seed + len(self.refresh_times)))

    def refresh_gaussian(self) -> Snapshot:
        """Publish the Gaussian approximation of the posterior (no compiled model needed)."""
        def gaussian(data: bayes.ModelData) -> Snapshot:
            t0 = time.perf_counter()
            snap = bayes.gaussian_snapshot(data, self.model.layout, seed=self.seed + len(self.refresh_times))
            return Snapshot(**{**snap.__dict__, "refresh_s": time.perf_counter() - t0})
        with bayes.blas_single():
            return self._refresh(gaussian)

    def _refresh(self, sample) -> Snapshot:
        now = time.time()
        self._wake.clear()
        with self._lock:
            for uid in [u for u, (ts, _) in self._obs.items() if now - ts > self.job_ttl_s]:
                del self._obs[uid]
                self._acc.pop(uid, None)
            rows = [r for _, rs in self._obs.values() for r in rs][-self.max_obs:]
            self._dirty = False
            t = self.times
            svc_mu, node_mu, node_gpu, svc_sd = t.svc_mu.copy(), t.node_mu.copy(), t.node_gpu.copy(), t.svc_sd.copy()
        data = bayes.build_data(rows, self.model.layout, t.svc_slot, t.node_slot, svc_mu, node_mu, node_gpu,
                                svc_sd=svc_sd)
        snap = sample(data)
        with self._lock:
            self._snapshot = Snapshot(**{**snap.__dict__, "version": self._snapshot.version + 1})
        if snap.source == "posterior":
            self.refresh_times.append(snap.refresh_s)
        log.debug("posterior refreshed: %d latency, %d accuracy obs in %.2f s", snap.n_lat, snap.n_acc, snap.refresh_s)
        return self._snapshot
