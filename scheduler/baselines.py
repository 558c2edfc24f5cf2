"""Baseline planners: golden (static best-accuracy), PID on delay, greedy one knob at a time.

All three map every stage to the node that looks fastest on paper (GPU, then most cores)
and re-map to a live node when that one disappears; only the video knobs adapt.
"""
from __future__ import annotations

import logging

import numpy as np

from scheduler import bayes, bayes_priors, knobs
from scheduler.interface import NodeInfo, Observation, Plan, PlanningInput
from services.video_conf import GRADES

log = logging.getLogger(__name__)


def fastest_mapping(c: knobs.Candidates, nodes: list[NodeInfo]) -> tuple[int, ...]:
    by = {n.name: n for n in nodes}
    score = [bayes_priors.node_prior(by[name]) for name in c.nodes]
    rows = c.mapping[: c.n_map]
    # every stage on its fastest capable node: the row minimising the summed prior offsets
    best = int(np.argmin(np.array(score)[rows].sum(axis=1)))
    return tuple(int(x) for x in rows[best])


def measured_delay(obs: list[Observation]) -> float | None:
    """Mean end-to-end delay of the most recent window: per stage mean of service+queue+transfer."""
    if not obs:
        return None
    last = max(o.ts for o in obs)
    recent = [o for o in obs if o.ts >= last - 1e-9]
    per_stage: dict[str, list[float]] = {}
    for o in recent:
        per_stage.setdefault(o.stage, []).append(o.service_s + o.queue_s + o.transfer_s)
    return float(sum(np.mean(v) for v in per_stage.values()))


class GoldenPlanner:
    """Highest resolution, largest grade, every frame, on the fastest node: the accuracy reference."""

    name = "golden"

    def plan(self, inp: PlanningInput) -> Plan:
        c = knobs.build_candidates(inp)
        i = c.find(c.res[-1][0], c.src_fps, len(GRADES) - 1, knobs.GOLDEN_QUALITY, fastest_mapping(c, inp.nodes))
        assert i is not None
        return knobs.to_plan(c, i, inp.nodes, self.name, f"golden: {knobs.describe(c, i)}")


class PIDPlanner:
    """PID on the relative delay error over a ladder of (resolution, fps) settings ordered by
    pixel rate; grade fixed. Anti-windup: the integral only accumulates while the output is
    not saturated (or the error pulls it back), and is clamped."""

    name = "pid"

    def __init__(self, kp: float = 0.6, ki: float = 0.15, kd: float = 0.1, grade: str = "m",
                 quality: int = 75, i_max: float = 3.0) -> None:
        self.kp, self.ki, self.kd, self.grade, self.quality, self.i_max = kp, ki, kd, grade, quality, i_max
        self._integral = 0.0
        self._prev_err: float | None = None
        self._pos: float | None = None

    def plan(self, inp: PlanningInput) -> Plan:
        c = knobs.build_candidates(inp)
        ladder = sorted(((r, f) for r in range(len(c.res)) for f in knobs.fps_options(c.src_fps)),
                        key=lambda rf: c.res[rf[0]][1] * c.res[rf[0]][2] * rf[1])
        top = len(ladder) - 1
        if self._pos is None:
            self._pos = float(top)
        d = measured_delay(inp.observations)
        reason = "no measurement yet"
        if d is not None:
            D = inp.constraint.delay
            err = float(np.clip((D - d) / D, -2.0, 1.0))  # >0: headroom, step up
            deriv = 0.0 if self._prev_err is None else err - self._prev_err
            self._prev_err = err
            u = self.kp * err + self.ki * (self._integral + err) + self.kd * deriv
            # The ladder is geometric in cost, so the output moves a fraction of its length.
            target = self._pos + u * len(ladder) / 4
            saturated = (target > top and err > 0) or (target < 0 and err < 0)
            if not saturated:
                self._integral = float(np.clip(self._integral + err, -self.i_max, self.i_max))
            self._pos = float(np.clip(target, 0, top))
            reason = f"delay {d:.3f}s vs {D:g}s, err {err:+.2f}, integral {self._integral:+.2f}"
        r, f = ladder[int(round(self._pos))]
        i = c.find(c.res[r][0], f, GRADES.index(self.grade) if c.tunable.any() else len(GRADES) - 1,
                   self.quality, fastest_mapping(c, inp.nodes))
        assert i is not None
        return knobs.to_plan(c, i, inp.nodes, self.name, f"pid: {knobs.describe(c, i)}; {reason}")


class GreedyPlanner:
    """AWStream-like: one knob a round. Over the delay bound: step down the knob that loses the
    least profiled accuracy per compute saved; well under it (< headroom x bound): step up
    the knob that gains the most accuracy per compute added. Profile = the prior F1 model."""

    name = "greedy"

    def __init__(self, headroom: float = 0.6, quality: int = 75) -> None:
        self.headroom, self.quality = headroom, quality
        self._state: list[int] | None = None  # [res_idx, fps_idx, grade_idx]
        mean = bayes_priors.Layout(1, 1).acc_prior()[0]
        self._th, self._kappa, self._lam, self._rho = mean[:5], mean[5], mean[6], mean[7]

    def _f1(self, c: knobs.Candidates, s: list[int], fpss: list[float]) -> float:
        h = c.res[s[0]][2] / c.src_height
        g = s[2] if c.tunable.any() else len(GRADES) - 1
        eta = (self._th[g] + self._kappa * np.log(h) + self._lam * float(bayes.stale_s(fpss[s[1]], c.src_fps))
               + self._rho * np.log(self.quality / 100))
        return float(np.exp(min(eta, 0.0)))

    def _cost(self, c: knobs.Candidates, s: list[int], fpss: list[float]) -> float:
        w, h = c.res[s[0]][1], c.res[s[0]][2]
        g = np.array([s[2]])
        return float(sum(knobs.stage_gflops(bool(t), np.array([w * h]), g, bool(f))[0]
                         for t, f in zip(c.tunable, c.fixed_k)) * fpss[s[1]])

    def plan(self, inp: PlanningInput) -> Plan:
        c = knobs.build_candidates(inp)
        fpss = knobs.fps_options(c.src_fps)
        n_grades = len(GRADES) if c.tunable.any() else 1
        limits = [len(c.res) - 1, len(fpss) - 1, n_grades - 1]
        if self._state is None:
            self._state = list(limits)
        s = self._state
        d = measured_delay(inp.observations)
        D = inp.constraint.delay
        reason = "no measurement yet"
        if d is not None and (d > D or d < self.headroom * D):
            down = d > D
            best, best_score = None, -np.inf
            for k in range(3):
                t = list(s)
                t[k] += -1 if down else 1
                if not 0 <= t[k] <= limits[k]:
                    continue
                da = abs(self._f1(c, s, fpss) - self._f1(c, t, fpss))
                dc = abs(self._cost(c, s, fpss) - self._cost(c, t, fpss)) + 1e-9
                score = -da / dc if down else da / dc
                if score > best_score:
                    best, best_score = t, score
            if best is not None:
                self._state = s = best
            reason = f"delay {d:.3f}s vs {D:g}s: {'down' if down else 'up'} one knob"
        elif d is not None:
            reason = f"delay {d:.3f}s vs {D:g}s: hold"
        grade = s[2] if c.tunable.any() else len(GRADES) - 1
        i = c.find(c.res[s[0]][0], fpss[s[1]], grade, self.quality, fastest_mapping(c, inp.nodes))
        assert i is not None
        return knobs.to_plan(c, i, inp.nodes, self.name, f"greedy: {knobs.describe(c, i)}; {reason}")
