"""What each plan a job ran did to its frames' delay, remembered for a while.

The latency model predicts a plan from every frame the job measured; on a shared 2-core host
the same plan is not equally fast under every other plan. vtest.avi, OpenVINO, D = 1 s: the
detector took 0.063-0.073 s a frame while every frame was detected at the source resolution
(10 a second, no frame late), 0.09-0.14 s while every other one was and the others tracked.
Once the planner had left the every-frame plan, the slower frames made it look past the
utilisation ceiling (P(delay <= D) 0.00) for the rest of the run, though golden (the same
plan) ran 60 s with no frame late; on Megamind.avi the opposite: 720p@10fps queued 13 of its
frames past D = 0.5 s, and 30 s later, from cheaper plans' frames, the model sent the job back
to it for 13 more. What a plan's own frames did is better evidence than the model's reading of
other plans, while it is recent and nothing has shifted since:
- proven: PROVEN_FRAMES or more frames, none over the bound, the 95th percentile within
  PROVEN_DELAY_SHARE of it -> the plan counts as meeting the bound;
- late: at least LATE_FRAMES of its frames over the bound -> it is ruled out, and so is every
  plan that detects at least as many frames a second at the same resolution, grade and nodes:
  the same frames, arriving as often or more. (A slow node, D = 0.5 s: 720p@5fps track 2 was late
  on 6 frames, and 8 s later the model sent the job to 720p@10fps track 4, late on 6 more.)
A plan is (height, kept-frame rate, ntracking, grade, node of each stage); its memory ends
MEMORY_S after its last frame, or at a shift (nodes, constraint, a confirmed slowdown), which
forgets everything. A job's first profiling segment is scored beside its frames, not stopped for
them (tasks/profiler.py), and on a small node slows them while it runs: once it is scored, the
frames that started before are forgotten and not recorded again. (A slow node, Megamind.avi,
D = 1 s: frames at 2.0-4.6 s were 1.1-1.5 s late beside it, which ruled out 480p and 720p at
their rates, and the job ran 360p at E[F1] 0.70-0.74 from 12 s to 34 s.)
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from scheduler.delay import PROVEN_DELAY_SHARE, PROVEN_FRAMES, PlanShape, plan_frame_maps

MEMORY_S = 60.0      # seconds of observation time a plan's record holds after its last frame
KEEP_FRAMES = 40     # frames per plan: its latest run, not its whole history
LATE_FRAMES = 3      # frames over the bound that rule a plan out (one is a hiccup, e.g. a GC)
RECENT_PLANS = 4     # plans left lately whose frames are still recorded: their last ones land after the switch

PlanKey = tuple[int, float, int, int, tuple[int, ...]]
PROVEN, LATE = "proven", "late"


@dataclass
class PlanRecord:
    delays: OrderedDict = field(default_factory=OrderedDict)  # frame key -> delay (s), oldest first
    last_ts: float = 0.0


class PlanMemory:
    """One job's records (kept in its JobState)."""

    def __init__(self) -> None:
        self.records: dict[PlanKey, PlanRecord] = {}
        self.ran: OrderedDict[PlanKey, PlanShape] = OrderedDict()  # what tells each one's frames apart
        self.started_after = -math.inf  # frames that started before are not recorded

    def first_segment_scored(self, ts: float) -> None:
        """The job's first profiling segment was scored at `ts`: what its frames did beside it is
        forgotten (once; later segments are stopped while frames run)."""
        if self.started_after == -math.inf:
            self.forget()
            self.started_after = ts

    def record_ran(self, observations: list, stages: set[str], src_fps: float, running: PlanKey,
                   shape: PlanShape) -> dict:
        """Record the recent frames of the running plan (`shape`: delay.PlanShape) and of the
        RECENT_PLANS it followed, and return the running plan's frame map
        (delay.plan_frame_maps, one pass for them all). A plan's last frames are measured after the job has left
        it: a slow node, Megamind.avi, D = 0.5 s, 720p@10fps track 4 was left on its second late
        frame, the third was never recorded, and 4 s later it ran again for 20 more late frames."""
        self.ran.pop(running, None)
        self.ran[running] = shape
        while len(self.ran) > RECENT_PLANS + 1:
            self.ran.popitem(last=False)
        maps = plan_frame_maps(observations, stages, set(self.ran.values()), src_fps, self.started_after)
        for key, plan_shape in self.ran.items():
            self.record(key, *maps[plan_shape])
        return maps[shape][0]

    def record(self, key: PlanKey, frames: dict, newest_ts: float) -> None:
        """frames: frame key -> (wait, delay) of the plan's recent frames (delay.plan_frame_maps).
        Only numbered frames count: observations without a sequence number (the simulator's) are
        grouped by time stamp there, i.e. a whole window read as one frame, whose summed delay
        would rule every plan out after three windows (simulator, person detector on CPUs: oracle
        share 0.955 -> 0.947)."""
        frames = {k: v for k, v in frames.items() if isinstance(k, int)}
        if not frames:
            return
        rec = self.records.setdefault(key, PlanRecord())
        for k, (_, delay) in frames.items():
            rec.delays[k] = delay
            rec.delays.move_to_end(k)
        while len(rec.delays) > KEEP_FRAMES:
            rec.delays.popitem(last=False)
        rec.last_ts = max(rec.last_ts, newest_ts)

    def forget(self) -> None:
        self.records.clear()
        self.ran.clear()

    def verdict(self, key: PlanKey, delay_bound: float, now_ts: float) -> str | None:
        rec = self.records.get(key)
        if rec is None:
            return None
        if now_ts - rec.last_ts > MEMORY_S:
            del self.records[key]
            return None
        d = np.fromiter(rec.delays.values(), float)
        if (d > delay_bound).sum() >= LATE_FRAMES:
            return LATE
        if len(d) >= PROVEN_FRAMES and d.max() <= delay_bound and np.percentile(d, 95) <= PROVEN_DELAY_SHARE * delay_bound:
            return PROVEN
        return None

    def verdicts(self, delay_bound: float, now_ts: float) -> dict[PlanKey, str]:
        """The verdict of every remembered plan that has one (expired records are dropped)."""
        out = {}
        for k in list(self.records):
            v = self.verdict(k, delay_bound, now_ts)
            if v is not None:
                out[k] = v
        return out


def plan_key(c, i: int) -> PlanKey:
    """Candidate i of c (knobs.Candidates) as a PlanKey."""
    return (int(c.height[i]), float(c.fps[i]), int(c.ntrack[i]), int(c.grade_idx[i]), tuple(int(j) for j in c.mapping[i]))


def matching(c, key: PlanKey) -> np.ndarray:
    """Indices of the candidates of c that are the plan `key` (one per JPEG quality)."""
    h, rate, k, g, mapping = key
    return np.flatnonzero((c.height == h) & np.isclose(c.fps, rate) & (c.ntrack == k) & (c.grade_idx == g)
                          & (c.mapping == np.array(mapping)).all(axis=1))


def at_least_as_loaded(c, key: PlanKey) -> np.ndarray:
    """Indices of the candidates of c at the plan `key`'s resolution, grade and nodes that detect
    at least as many frames a second."""
    h, rate, k, g, mapping = key
    detected = c.fps / (1 + c.ntrack)
    return np.flatnonzero((c.height == h) & (detected >= rate / (1 + k) - 1e-9) & (c.grade_idx == g)
                          & (c.mapping == np.array(mapping)).all(axis=1))


def remembered_candidates(memory: PlanMemory, c, delay_bound: float, now_ts: float) -> dict[str, np.ndarray]:
    """Candidate indices of c per verdict (PROVEN, LATE) of the plans in memory."""
    out: dict[str, list[np.ndarray]] = {}
    for key, verdict in memory.verdicts(delay_bound, now_ts).items():
        out.setdefault(verdict, []).append(at_least_as_loaded(c, key) if verdict == LATE else matching(c, key))
    return {v: np.concatenate(idx) for v, idx in out.items()}


__all__ = ["LATE", "LATE_FRAMES", "MEMORY_S", "PROVEN", "PlanMemory", "PlanRecord", "at_least_as_loaded", "matching", "plan_key",
           "remembered_candidates"]
