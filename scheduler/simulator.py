"""A discrete-round simulator of jobs on nodes (no Celery, no Flask, no DB).

The simulated truth is deliberately *not* the planner's model: a steeper pixel exponent,
node speeds that differ from what the node advertises, load slowing CPU nodes, an accuracy
surface that is a product of grade, resolution, frame-rate and JPEG factors whose shapes
differ from the planner's log-linear terms (a power of the lost height, an exponential in
skipped frames, a quadratic in JPEG quality), noisy per-frame latencies and noisy F1 on
profiled frames. An overloaded node cannot serve every frame: the generator caps frames in
flight, so the delay stays near OVERLOAD_FRAMES frames of work, and the node serves every
job's frames at the same reduced rate (the rest are dropped): F1 is that of the frames served,
compute is what the plan asks for.

Each round (a planning window of `round_s` seconds): every job gets a plan from its planner
(given the last rounds' observations), the simulator computes the true expected delay and
F1 of that plan under the current node loads (background + every job's work), samples frame
latencies and one profiled F1, and scores the window. The oracle is the best fixed plan in
hindsight for the window (same candidate space, true expectations, other jobs' load fixed).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from scheduler import knobs
from scheduler.delay import DEFAULT_BW, PACED_CV2, RHO_MAX, node_arrays, node_work, plan_delay, transfer_s
from scheduler.interface import NodeInfo, Observation, Plan, Planner, PlanningInput, SourceInfo, UserConstraint
from services.dag import DagSpec
from services.video_conf import GRADES

log = logging.getLogger(__name__)

TRUE_PIX_EXP = 0.9
TRUE_GRADE_RATIO = knobs.grade_latency_ratio() * np.array([1.0, 1.05, 1.0, 1.1, 1.15])
TRUE_LOAD_EXP = 0.8
TRUE_NOISE = 0.15
LIGHT_S = 0.003
OVERLOAD_FRAMES = 8  # the generator caps frames in flight; beyond, delay ~ this many frames' work
# Truth accuracy: F1 of a config vs golden = grade x resolution x frame-rate x JPEG factors.
TRUE_GRADE_F1 = np.array([0.80, 0.90, 0.96, 0.985, 1.0])
# A fixed-model detector (person_detection): ~1.5x YOLO11 s per pixel (the planner assumes 1.4).
TRUE_FIXED_RATIO = float(knobs.grade_latency_ratio()[1] * 1.5)
TRUE_RES_SENS = 0.28  # F1 lost at a vanishing resolution, for typical content
TRUE_TRACK_DECAY = 0.003  # log F1 per tracked source frame per unit motion (carry-forward: 0.012 per skipped one)
# log F1 per share of kept frames shown with tracked boxes, however fresh (vtest.avi,
# bench/tracking_quality.py: a tracked frame scores ~0.95 of a detected one at age 0).
TRUE_TRACK_FRESH_LOSS = 0.05


@dataclass
class SimNode:
    name: str
    role: str = "edge"
    gpu: bool = False
    cpu_count: int = 2
    n_process: int = 1
    speed: float = 1.0          # true service-time multiplier vs the reference 2-core CPU
    bg_load: float = 0.1
    alive: bool = True
    services: list[str] = field(default_factory=list)


@dataclass
class SimJob:
    uid: str
    dag: DagSpec
    source: SourceInfo
    constraint: UserConstraint
    motion: float = 1.0         # how fast content changes: frame skipping hurts more
    res_sens: float = TRUE_RES_SENS  # small objects: resolution matters more
    plan: Plan | None = None
    obs: list[list[Observation]] = field(default_factory=list)  # per round


@dataclass
class RoundStat:
    round: int
    job: str
    config: str
    delay_s: float
    delay_expected_s: float
    constraint_s: float
    violated: bool
    f1: float
    cost_share: float
    utility: float
    oracle_utility: float
    decision_ms: float
    oracle_config: str = ""
    oracle_f1: float = 0.0


def true_f1(height: np.ndarray, src_h: float, fps: np.ndarray, src_fps: float, grade_idx: np.ndarray,
            quality: np.ndarray, motion: float, tunable: bool = True, res_sens: float = TRUE_RES_SENS,
            ntracking: np.ndarray | float = 0) -> np.ndarray:
    """Frame-level F1 (DESIGN.md s.6): every source frame scored with the boxes it is shown.
    A skipped frame shows the last kept frame's boxes (error grows with the gap and motion); a
    tracked frame shows tracked boxes, a few percent off the detector's even when fresh, which
    drift about a quarter as fast per source frame."""
    g = TRUE_GRADE_F1[grade_idx] if tunable else 1.0
    r = 1 - res_sens * (1 - np.minimum(np.asarray(height, float) / src_h, 1.0)) ** 1.3
    step = src_fps / np.asarray(fps, float)
    skip = np.maximum(step - 1, 0)
    f = np.exp(-0.012 * motion * skip)
    k = np.asarray(ntracking, float)
    tr = np.exp(-TRUE_TRACK_FRESH_LOSS * k / (k + 1) - TRUE_TRACK_DECAY * motion * k * np.maximum(step, 1.0))
    q = 1 - 0.12 * ((100 - np.asarray(quality, float)) / 90) ** 2
    return np.clip(g * r * f * tr * q, 0, 1)


@dataclass(frozen=True)
class Truth:
    """What candidates really do under the simulated truth (arrays over candidates)."""

    delay: np.ndarray     # expected per-frame delay (s)
    f1: np.ndarray        # F1 vs golden of the frames served
    cost: np.ndarray      # compute share of golden the plan asks for
    served: np.ndarray    # share of the plan's frames the bottleneck node can serve
    transfer: np.ndarray  # seconds on the wire per frame
    service: np.ndarray   # mean service time per stage [M, K]


class Simulator:
    def __init__(self, nodes: list[SimNode], jobs: list[SimJob], *, round_s: float = 2.0, seed: int = 0,
                 bandwidth: dict[tuple[str, str], float] | None = None, history_rounds: int = 5) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.jobs = jobs
        self.round_s = round_s
        self.rng = np.random.default_rng(seed)
        self.bandwidth = bandwidth or {}
        self.history_rounds = history_rounds
        self.round = 0
        self.stats: list[RoundStat] = []
        self._cands: dict[tuple, knobs.Candidates] = {}

    # ---- views ------------------------------------------------------------------------------
    def bw(self, a: str, b: str) -> float:
        return self.bandwidth.get((a, b), self.bandwidth.get((b, a), DEFAULT_BW))

    def node_infos(self, load: dict[str, float]) -> list[NodeInfo]:
        out = []
        for n in self.nodes.values():
            out.append(NodeInfo(
                name=n.name, role=n.role, alive=n.alive, services=list(n.services), cpu_count=n.cpu_count,
                cpu_ratio=float(min(load.get(n.name, n.bg_load), 1.0)), gpu=n.gpu, n_process=n.n_process,
                bandwidth_bps={m: self.bw(n.name, m) for m in self.nodes if m != n.name},
            ))
        return out

    def planning_input(self, job: SimJob, load: dict[str, float]) -> PlanningInput:
        obs = [o for rnd in job.obs[-self.history_rounds:] for o in rnd]
        return PlanningInput(job_uid=job.uid, dag=job.dag, nodes=self.node_infos(load), source=job.source,
                             constraint=job.constraint, observations=obs, last_plan=job.plan,
                             now=self.round * self.round_s)

    # ---- truth --------------------------------------------------------------------------------
    def _true_mean_times(self, c: knobs.Candidates, idx: np.ndarray, load: np.ndarray) -> np.ndarray:
        """True mean service time per stage [M, K] under node loads (in c.nodes order)."""
        speed = np.array([self.nodes[n].speed for n in c.nodes])
        gpu = np.array([self.nodes[n].gpu for n in c.nodes])
        pix = (c.width[idx] * c.height[idx]).astype(float) / knobs.REF_PIXELS
        out = np.zeros((len(idx), len(c.stages)))
        for k in range(len(c.stages)):
            j = c.mapping[idx, k]
            slow = np.where(gpu[j], 1.0 / (1 - 0.5 * load[j]), (1.0 / (1 - np.minimum(load[j], 0.95))) ** TRUE_LOAD_EXP)
            if c.tunable[k] or c.fixed_k[k]:
                # A GPU scales less than linearly with pixels and grade (it is under-occupied).
                exp = np.where(gpu[j], 0.6, TRUE_PIX_EXP)
                ratio = TRUE_GRADE_RATIO[c.grade_idx[idx]] if c.tunable[k] else TRUE_FIXED_RATIO
                gr = ratio ** np.where(gpu[j], 0.7, 1.0)
                t = knobs.CPU_TIMINGS_S["n"][2] * pix**exp * gr * speed[j] + np.where(gpu[j], 0.004, 0.0)
            else:
                t = LIGHT_S * speed[j] ** 0.5 * np.ones(len(idx))
            out[:, k] = t * slow
        return out

    def _evaluate(self, job: SimJob, c: knobs.Candidates, idx: np.ndarray, load: np.ndarray,
                  base: np.ndarray | None = None) -> Truth:
        """True expected delay, F1 and compute share for candidates idx, given the load per node
        (`base`: its background part, the rest being other jobs' work)."""
        infos = {n.name: n for n in self.node_infos({})}
        nodes = [infos[n] for n in c.nodes]
        _, cap, qdepth, bw = node_arrays(c, nodes)
        mt = self._true_mean_times(c, idx, load)[:, :, None]
        nbytes = knobs.frame_bytes(c.width[idx], c.height[idx], c.quality[idx])
        tr = transfer_s(c, idx, nbytes, bw)
        # A simulated job's frames leave its generator evenly; other jobs' frames, superposed, do not.
        delay, _ = plan_delay(c, idx, mt, mt, load, cap, qdepth, tr, overload_frames=OVERLOAD_FRAMES,
                              own_cv2=PACED_CV2, service_cv2=float(np.expm1(TRUE_NOISE**2)))
        # An overloaded node serves every job's frames at the same reduced rate (processor
        # sharing); the bottleneck node of a plan sets the share of its frames that get a result.
        base = load if base is None else base
        own = c.msg_rate[idx][:, None] * node_work(c, idx, c.per_message(idx, mt))[:, :, 0] / cap[None, :]
        demand = (load - base)[None, :] + own
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(own > 0, np.maximum(RHO_MAX - base, 0.0)[None, :] / demand, np.inf)
        served = np.clip(share.min(axis=1), 0.0, 1.0)
        fps = np.maximum(c.fps[idx] * served, 0.1)
        tun = bool(c.tunable.any())
        f1 = true_f1(c.height[idx], c.src_height, fps, c.src_fps, c.grade_idx[idx], c.quality[idx], job.motion, tun,
                     job.res_sens, c.ntrack[idx])
        # Compute is what the plan asks of the cluster per second of video, served or not.
        return Truth(delay[:, 0], f1, c.compute(idx) / c.golden_compute(), served, tr, mt[:, :, 0])

    def _candidates(self, job: SimJob, inp: PlanningInput) -> knobs.Candidates:
        key = knobs.candidates_key(inp)
        if key not in self._cands:
            self._cands[key] = knobs.build_candidates(inp)
        return self._cands[key]

    def _job_work(self, c: knobs.Candidates, i: int, load: dict[str, float]) -> dict[str, float]:
        """Utilisation a job adds to each of its nodes, its service slowed by the node's other load."""
        idx = np.array([i])
        mt = self._true_mean_times(c, idx, np.clip(np.array([load[n] for n in c.nodes]), 0, 0.99))
        mt = c.per_message(idx, mt[:, :, None])[0, :, 0]
        util: dict[str, float] = {}
        for k in range(len(c.stages)):
            n = c.nodes[int(c.mapping[i, k])]
            util[n] = util.get(n, 0.0) + c.msg_rate[i] * mt[k] / max(self.nodes[n].n_process, 1)
        return util

    @staticmethod
    def _total(bg: dict[str, float], work: dict[str, dict[str, float]]) -> dict[str, float]:
        total = dict(bg)
        for w in work.values():
            for n, u in w.items():
                total[n] = total.get(n, 0.0) + u
        return total

    def _settle(self, placed: dict[str, tuple[knobs.Candidates, int]], bg: dict[str, float]) -> dict[str, dict[str, float]]:
        """Every placed job's work per node, each slowed by everything else on its nodes (a few
        fixed-point passes), so that the load nodes report matches the service times jobs see."""
        work = {uid: self._job_work(c, i, bg) for uid, (c, i) in placed.items()}
        for _ in range(2):
            total = self._total(bg, work)
            work = {uid: self._job_work(c, i, {n: total[n] - work[uid].get(n, 0.0) for n in total})
                    for uid, (c, i) in placed.items()}
        return work

    # ---- one round ------------------------------------------------------------------------------
    def step(self, planners: dict[str, Planner], events: Callable[["Simulator", int], None] | None = None) -> list[RoundStat]:
        if events:
            events(self, self.round)
        bg = {n: v.bg_load for n, v in self.nodes.items() if v.alive}
        placed: dict[str, tuple[knobs.Candidates, int]] = {}
        for job in self.jobs:
            c = self._candidates(job, self.planning_input(job, bg))
            i = c.index_of_plan(job.plan)
            if i is not None:
                placed[job.uid] = (c, i)
        # Loads the planners see: background + every job's work under its current plan.
        work = self._settle(placed, bg)
        util = self._total(bg, work)
        out = []
        for job in self.jobs:
            inp = self.planning_input(job, util)
            t0 = time.perf_counter()
            try:
                plan = planners[job.uid].plan(inp)
            except Exception as exc:  # the loop keeps the last plan; so does the simulator
                log.warning("planner failed for %s: %s", job.uid, exc)
                plan = job.plan
            dt_ms = (time.perf_counter() - t0) * 1000
            c = self._candidates(job, inp)
            i = c.index_of_plan(plan)
            # What this job's frames meet on each node: background + the other jobs' work.
            own = work.pop(job.uid, {})
            others = {n: u - own.get(n, 0.0) for n, u in util.items()}
            job.plan = plan
            if i is None:  # e.g. a stage still mapped to a dead node: the window's frames are lost
                ou, of1, odesc = self._oracle(job, c, np.clip(np.array([others[n] for n in c.nodes]), 0, 0.99),
                                              np.array([bg[n] for n in c.nodes]))
                out.append(RoundStat(self.round, job.uid, "invalid plan", math.inf, math.inf, job.constraint.delay,
                                     True, 0.0, 1.0, 0.0, ou, dt_ms, odesc, of1))
                job.obs.append([])
                util = others
                continue
            load = np.clip(np.array([others[n] for n in c.nodes]), 0, 0.99)
            out.append(self._score(job, c, i, load, np.array([bg[n] for n in c.nodes]), plan, dt_ms))
            # The scheduler knows the plans it just made: later jobs this round see their load.
            work[job.uid] = self._job_work(c, i, others)
            util = self._total(others, {job.uid: work[job.uid]})
        self.stats.extend(out)
        self.round += 1
        return out

    def _oracle(self, job: SimJob, c: knobs.Candidates, load: np.ndarray,
                base: np.ndarray | None = None) -> tuple[float, float, str]:
        """The best fixed plan for this window under the same load: (utility, F1, description)."""
        every = self._evaluate(job, c, np.arange(len(c)), load, base)
        target = job.constraint.accuracy or knobs.ACCURACY_TARGET
        u_all = knobs.utility(every.f1, every.cost, every.delay <= job.constraint.delay, target)
        best = int(np.argmax(u_all))
        desc = f"{knobs.describe(c, best)} f1={every.f1[best]:.3f} d={every.delay[best]:.3f}"
        return float(u_all[best]), float(every.f1[best]), desc

    def _score(self, job: SimJob, c: knobs.Candidates, i: int, load: np.ndarray, base: np.ndarray, plan: Plan,
               dt_ms: float) -> RoundStat:
        D = job.constraint.delay
        t = self._evaluate(job, c, np.array([i]), load, base)
        mt, tr, exp_delay = t.service[0], float(t.transfer[0]), float(t.delay[0])
        # Sample the served frames of the window: service noise per stage, queueing from the expectation.
        n_frames = int(max(1, min(30, c.msg_rate[i] * t.served[0] * self.round_s)))  # detected frames
        noise = np.exp(self.rng.normal(-TRUE_NOISE**2 / 2, TRUE_NOISE, (n_frames, len(c.stages))))
        svc = mt[None, :] * noise
        queue_total = max(exp_delay - mt.sum() - tr, 0.0)
        frame_delay = svc.sum(axis=1) + queue_total * self.rng.exponential(1.0, n_frames) + tr
        # Each detected frame's tracked frames arrive 1/fps apart and wait at most for it.
        k = int(c.ntrack[i])
        if k:
            after = np.arange(1, k + 1) / float(c.fps[i])
            tracked = np.maximum(frame_delay[:, None] - after[None, :], 0.0) + knobs.TRACK_S_PER_FRAME
            frame_delay = np.concatenate([frame_delay, tracked.ravel()])
        window_delay = float(frame_delay.mean())
        obs = []
        ts = self.round * self.round_s
        grade = GRADES[int(c.grade_idx[i])]
        nbytes = int(knobs.frame_bytes(c.width[i], c.height[i], c.quality[i]))
        for f in range(n_frames):
            for k, stage in enumerate(c.stages):
                node = c.nodes[int(c.mapping[i, k])]
                obs.append(Observation(
                    stage=stage, node=node, grade=grade if c.tunable[k] else None, width=int(c.width[i]),
                    height=int(c.height[i]), fps=float(c.fps[i]), ntracking=int(c.ntrack[i]),
                    quality=int(c.quality[i]), frame_bytes=nbytes,
                    service_s=float(svc[f, k]), queue_s=float(queue_total / len(c.stages)),
                    transfer_s=tr / len(c.stages), ts=ts, node_load=float(load[c.mapping[i, k]]),
                ))
        f1 = float(t.f1[0])
        measured = float(np.clip(f1 + self.rng.normal(0, 0.03), 0, 1))
        obs[0] = obs[0].model_copy(update={"accuracy": measured})
        job.obs.append(obs)
        cost = float(t.cost[0])
        target = job.constraint.accuracy or knobs.ACCURACY_TARGET
        u = float(knobs.utility(f1, cost, exp_delay <= D, target))
        oracle_u, oracle_f1, oracle_desc = self._oracle(job, c, load, base)
        return RoundStat(
            round=self.round, job=job.uid, config=knobs.describe(c, i), delay_s=window_delay,
            delay_expected_s=exp_delay, constraint_s=D, violated=window_delay > D, f1=f1,
            cost_share=cost, utility=u, oracle_utility=oracle_u, decision_ms=dt_ms,
            oracle_config=oracle_desc, oracle_f1=oracle_f1,
        )
