"""Per-frame delay of candidate plans: service time + queueing on each node + transfers.

Shared by the Bayesian planner (service times = posterior draws) and the simulator
(service times = the simulated truth), so both reason about the same structure:
- stages run in topological order, the frame hopping node to node;
- a node's queue is G/G/1 (Kingman): utilisation rho = background load + this job's work per
  second over the node's worker count; wait = rho / (1 - rho) x (ca2 + cs2) / 2 x work, plus
  the backlog already queued there. ca2, the arrivals' squared coefficient of variation, mixes
  the background (other jobs' frames superposed: Poisson-like, 1) with this job's own frames,
  which a paced source sends evenly (`own_cv2`, PACED_CV2 for a live or paced video); cs2 is
  the service times' (0: constant). With own_cv2 = 1 and cs2 = 0 it is M/D/1. Measured on
  vtest.avi (one worker, 0.16 s per detected frame at 5 of 10 fps, rho ~0.8): frame delay p95
  0.19 s, where M/D/1 predicts a mean of 0.44 s and ruled the plan out at D = 0.5 s;
- a hop between different nodes (the generator's node -> first stage counts) costs
  frame bytes / link bandwidth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scheduler.interface import NodeInfo, Observation
from scheduler.knobs import Candidates
from scheduler.observations import recent_window
from services.video_conf import GRADES

DEFAULT_BW = 12.5e6      # bytes/s (100 Mbit/s) when a link has no measurement
RHO_MAX = 0.97
# Squared coefficient of variation of a paced source's inter-arrival times: frames leave the
# generator evenly, give or take its read/encode jitter on a busy host (tens of ms at 5-10 fps)
# and the detected/tracked interleave. Measured waits of detected frames on vtest.avi, one
# worker: 0.03 s at p95 with 0.16 s frames at rho ~0.8 (OpenVINO), a mean of 0.018 s with
# 0.37 s frames at rho 0.64 (PyTorch; broker hops and the tracked frames' messages included).
# At 0.1 Kingman predicts 0.035 s and 0.037 s there; 0.3 predicted 0.1 s and ruled out the
# plan the one-time profile ran at D = 0.5 s with no frame late. measured_wait_scale corrects
# it per job from what the frames wait.
PACED_CV2 = 0.1
# The planner's hedge on a node's utilisation (the simulator's truth has none): on a shared host
# a node's service time grows with the job's own load (the generator, tracker and profiler
# compete for the cores), which the load model reads only after the fact. vtest.avi on 2 cores:
# a plan at a predicted rho ~0.85-0.9 (10 of 10 fps detected, 0.08 s each) queued frames for
# 0.5-1 s within 2 s of each start, three times in 60 s; plans at rho <= 0.8 did not in that run.
# What is uncertain is this job's own work; the load others put on a node is measured. So the
# ceiling is background + own x (1 + margin) < RHO_MAX: rho 0.84 on an idle node (the 0.85 that
# vtest.avi asked for), but up to 0.94 on one that others keep 75 % busy, where a flat 0.85
# left a job 10 % of the node and the simulator's load shift ran 360p-grade-s plans at 0.79 F1
# for 20 rounds (oracle share 0.909 -> 0.936, every scenario's SLO violations 0).
PLAN_OWN_MARGIN = 0.15
# ...unless the running plan's own frames show it holds: the margin hedges bursts the model
# cannot see, and those frames saw them. vtest.avi, OpenVINO, D = 0.5 s: every frame detected at
# the source resolution took 0.063-0.093 s (2-s window means), i.e. rho 0.63-0.93, and waited
# 0.003-0.063 s on average; each window over 0.085 s ruled the plan out and the planner left
# it (0.975-0.989 F1) for tracked or 5-fps plans (0.93-0.96), 6-7 times a minute. (Probing such
# a plan on purpose was tried: at D = 0.5 s its queue built up to 1 s before its frames could
# say so, 23 late frames in one 60-s run; not kept.)
PROVEN_FRAMES = 10          # the running plan's recent frames needed to count as evidence...
PROVEN_DELAY_SHARE = 0.6    # ...and their 95th-percentile delay, as a share of the bound...
PROVEN_OWN_MARGIN = 0.05    # ...shrink the margin this far: rho 0.92 on an idle node (the plan
# above peaked at 0.93). With no margin (0.97), two of six runs at D = 0.5 s had 3.7-4.5 % of
# frames late.
# How a job's measured queueing corrects the model's (measured_wait_scale): a stabiliser for
# near-zero waits, the frames that count as much as the model, and the range of the correction.
WAIT_FLOOR_S, WAIT_PRIOR_FRAMES, WAIT_SCALE_RANGE = 0.02, 4.0, (0.2, 4.0)


def node_arrays(c: Candidates, nodes: list[NodeInfo]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(background load, worker count, queue depth, bandwidth matrix) in c.nodes order."""
    by = {n.name: n for n in nodes}
    live = [by[name] for name in c.nodes]
    load = np.array([n.cpu_ratio for n in live])
    cap = np.array([max(n.n_process, 1) for n in live], float)
    qdepth = np.array([n.queue_depth for n in live], float)
    bw = np.full((len(live), len(live)), DEFAULT_BW)
    for i, a in enumerate(live):
        for j, b in enumerate(live):
            if a.name in by[b.name].bandwidth_bps and b.name not in a.bandwidth_bps:
                bw[i, j] = by[b.name].bandwidth_bps[a.name]
            elif b.name in a.bandwidth_bps:
                bw[i, j] = a.bandwidth_bps[b.name]
    return load, cap, qdepth, np.maximum(bw, 1.0)


def measured_own_load(c: Candidates, nodes: list[NodeInfo]) -> np.ndarray:
    """Each node's share of its load that is the planned job's own work, in c.nodes order, as
    the reporter measured it (NaN where it did not: the planner estimates it from the plan)."""
    by = {n.name: n.own_load for n in nodes}
    return np.array([np.nan if by.get(name) is None else by[name] for name in c.nodes], float)


def transfer_s(c: Candidates, idx: np.ndarray, nbytes: np.ndarray, bw: np.ndarray) -> np.ndarray:
    mapping = c.mapping[idx]
    prev = np.full(len(idx), c.source_node) if c.source_node >= 0 else mapping[:, 0]
    t = np.zeros(len(idx))
    for k in range(mapping.shape[1]):
        cur = mapping[:, k]
        hop = prev != cur
        t = t + np.where(hop, nbytes / bw[prev, cur], 0.0)
        prev = cur
    return t


def node_work(c: Candidates, idx: np.ndarray, mean_time: np.ndarray) -> np.ndarray:
    """Seconds of service per frame on each node: [M, J, D] from mean_time [M, K, D]."""
    M, K, D = mean_time.shape
    work = np.zeros((M, len(c.nodes), D))
    rows = np.arange(M)
    mapping = c.mapping[idx]
    for k in range(K):  # one node per (row, stage): a plain fancy-index add is exact
        work[rows, mapping[:, k]] += mean_time[:, k, :]
    return work


def plan_delay(
    c: Candidates, idx: np.ndarray, svc_time: np.ndarray, mean_time: np.ndarray,
    bg: np.ndarray, cap: np.ndarray, qdepth: np.ndarray, transfer: np.ndarray,
    overload_frames: float | None = None, own_cv2: float = 1.0, service_cv2: np.ndarray | float = 0.0,
    wait_scale: float = 1.0, own_margin: np.ndarray | float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame delay [M, D] and peak node utilisation [M, D].

    svc_time: per-frame service time per stage [M, K, D]; mean_time: its mean (for load).
    With ntracking, a node's load is that of each detected frame and the frames tracked after
    it (knobs.per_message) at the detected-frame rate; the delay is a detected frame's (its own
    stages plus the queue): the tracked frames after it take a few ms and at most wait for it.
    own_cv2: this job's arrivals' squared coefficient of variation (PACED_CV2 for a paced
    source; 1.0, the default, is Poisson); service_cv2: the service times' ([D] per draw, or a
    scalar); wait_scale: a factor on the queueing wait (measured_wait_scale). When a node's
    background + own work x (1 + own_margin) (one margin for all, or one per candidate of c)
    reaches RHO_MAX the delay is inf, or, if overload_frames is given (the simulator: the
    generator caps frames in flight), that many frames of work.
    Works stage by stage rather than node by node: a plan uses at most K of the cluster's
    nodes, and a decision scores every candidate, so [M, K] beats [M, nodes] on a big cluster.
    """
    fps = c.msg_rate[idx][:, None]
    mean_time = c.per_message(idx, mean_time)
    mapping = c.mapping[idx]
    K = mapping.shape[1]
    hedge = 1.0 + (np.asarray(own_margin, float)[idx][:, None] if np.ndim(own_margin) else own_margin)
    delay = svc_time.sum(axis=1) + transfer[:, None]
    peak = np.zeros_like(delay)
    for k in range(K):
        j = mapping[:, k]
        same = mapping == j[:, None]                               # stages on stage k's node
        work = (mean_time * same[:, :, None]).sum(axis=1)
        per = work / cap[j][:, None]
        own = fps * per
        rho = bg[j][:, None] + own
        with np.errstate(divide="ignore", invalid="ignore"):
            ca2 = np.where(rho > 0, (bg[j][:, None] + own * own_cv2) / rho, 1.0)
            kingman = rho / (1 - rho) * (ca2 + service_cv2) / 2
            fits = bg[j][:, None] + own * hedge < RHO_MAX
            wait = np.where(fits, wait_scale * kingman * per + qdepth[j][:, None] * per, np.inf)
        if overload_frames is not None:
            wait = np.where(np.isinf(wait), overload_frames * per, wait)
        repeat = same[:, :k].any(axis=1)                            # node already counted: it waits once
        delay = delay + (np.where(repeat[:, None], 0.0, wait) if repeat.any() else wait)
        peak = np.maximum(peak, rho)
    return delay, peak


@dataclass(frozen=True)
class PlanShape:
    """What tells a plan's frames apart among a job's observations: resolution, kept-frame rate,
    ntracking, and where each stage ran (`placement`: stage -> node and grade, the grade None for
    a stage without one; empty = any placement). JPEG quality is left out, as in plan_memory's
    PlanKey: plans that differ only in quality are one plan there. Without the placement, the
    frames of a plan that moved its detector to another node at the same resolution and rate
    were read as the new plan's: a late edge plan ruled out the cloud plan that replaced it."""
    height: int
    rate: float
    ntracking: int
    placement: tuple[tuple[str, str, str | None], ...] = ()

    @classmethod
    def of(cls, c: Candidates, i: int) -> "PlanShape":
        """Candidate i of c."""
        grade = GRADES[int(c.grade_idx[i])]
        return cls(int(c.res[c.res_idx[i]][2]), float(c.fps[i]), int(c.ntrack[i]),
                   tuple((stage, c.nodes[int(c.mapping[i, k])], grade if c.tunable[k] else None)
                         for k, stage in enumerate(c.stages)))

    def matches(self, o: Observation, src_fps: float) -> bool:
        if o.height != self.height or o.ntracking != self.ntracking or abs((o.fps or src_fps) - self.rate) >= 1e-6:
            return False
        for stage, node, grade in self.placement:
            if stage == o.stage:
                return o.node == node and o.grade == grade
        return True


def plan_frame_maps(observations: list[Observation], stages: set[str], shapes, src_fps: float,
                    started_after: float = -math.inf) -> dict:
    """Per PlanShape: ({frame: (wait, delay)}, newest time stamp) of its recent frames
    (observations.recent_window), in one pass: queue_s and queue_s + service_s summed over the
    frame's stages. A frame is its sequence number; observations without one (the simulator's)
    group by time stamp. Frames that started (time stamp less delay) before `started_after` are
    left out."""
    found: dict = {shape: ({}, 0.0) for shape in shapes}
    for o in recent_window(observations, lambda o: o.source == "frame" and o.service_s > 0 and o.stage in stages):
        for shape in found:
            if shape.matches(o, src_fps):
                frames, newest = found[shape]
                w = frames.setdefault(o.seq if o.seq is not None else o.ts, [0.0, 0.0, o.ts])
                w[0] += o.queue_s
                w[1] += o.queue_s + o.service_s
                w[2] = max(w[2], o.ts)
                found[shape] = (frames, max(newest, o.ts))
    return {shape: ({k: (w, d) for k, (w, d, ts) in frames.items() if ts - d >= started_after}, newest)
            for shape, (frames, newest) in found.items()}


def running_plan_frames(observations: list[Observation], stages: set[str], shape: PlanShape,
                        src_fps: float) -> list[tuple[float, float]]:
    """(wait, delay) of each of the running plan's recent frames (plan_frame_maps)."""
    return list(plan_frame_maps(observations, stages, [shape], src_fps)[shape][0].values())


def measured_wait_scale(frames: list[tuple[float, float]], predicted_wait_s: float) -> float:
    """How much of the predicted queueing wait a job's running plan really sees: its recent
    detected frames' median wait (running_plan_frames), against the model's wait for that plan,
    as a factor shrunk toward 1 by the number of frames.

    Kingman's formula with PACED_CV2 is a safe guess for arrivals it cannot see; a paced
    source on an idle node queues far less. vtest.avi on PyTorch, D = 0.5 s: source@5fps
    track 2 (0.36 s per detected frame, rho 0.6) was predicted to wait 0.09 s and ruled out
    (P(delay <= D) 0.55-0.9); its frames waited 0.018 s (broker hops included), and the
    one-time profile ran it with no frame late. A node that does queue (other jobs, a shared host) raises the factor instead."""
    if not frames or not np.isfinite(predicted_wait_s):
        return 1.0
    m = len(frames)
    # The median: the first frames of a plan wait behind the last ones of the plan before (0.4-0.6 s
    # at 0.37 s a frame); with the mean those two frames scaled every wait up to 2.4x, made the
    # next plan look late, and each switch set up the next one.
    ratio = (float(np.median([w for w, _ in frames])) + WAIT_FLOOR_S) / (max(predicted_wait_s, 0.0) + WAIT_FLOOR_S)
    scale = float(np.exp(np.log(ratio) * m / (m + WAIT_PRIOR_FRAMES)))
    return float(np.clip(scale, *WAIT_SCALE_RANGE))


def in_time_unqueued(frames: list[tuple[float, float]], delay_bound: float, min_frames: int,
                     wait_share: float = 0.25) -> bool:
    """Whether the running plan's recent (wait, delay) frames, `min_frames` at least, were all
    within the bound, 90 % of them waiting no more than `wait_share` of it: slow, perhaps, but
    not queueing (a queue near the bound is a node past its capacity, which the model judges)."""
    return (len(frames) >= min_frames and max(d for _, d in frames) <= delay_bound
            and float(np.percentile([w for w, _ in frames], 90)) <= wait_share * delay_bound)


def proven_within(frames: list[tuple[float, float]], delay_bound: float) -> bool:
    """Whether the running plan's recent frames show it meets the bound with room to spare:
    PROVEN_FRAMES of them at least, their 95th-percentile delay within PROVEN_DELAY_SHARE of it."""
    return (len(frames) >= PROVEN_FRAMES
            and float(np.percentile([d for _, d in frames], 95)) <= PROVEN_DELAY_SHARE * delay_bound)


def running_wait_scale(frames: list[tuple[float, float]], c: Candidates, last: int | None, st_mean: np.ndarray,
                       bg: np.ndarray, cap: np.ndarray, trans: np.ndarray, queueing: dict) -> float:
    """The factor on every candidate's queueing wait from what the running plan (candidate
    `last`) saw: measured_wait_scale of its frames against plan_delay's wait for it with the
    mean service times st_mean [C, K, 1]; 1 before the job has a plan."""
    if last is None:
        return 1.0
    one = np.array([last])
    no_backlog = np.zeros(len(c.nodes))  # a backlog is measured as it drains, not modelled
    delay = plan_delay(c, one, st_mean[one], st_mean[one], bg, cap, no_backlog, trans[one], **queueing)[0]
    predicted = float(delay[0, 0] - st_mean[last].sum() - trans[last])
    return measured_wait_scale(frames, predicted)


def own_work(c: Candidates, i: int, tbar: np.ndarray) -> np.ndarray:
    """Seconds of work per message on each node under candidate i (tbar [K, J, R, G] mean service times)."""
    per_frame = np.array([tbar[k, c.mapping[i, k], c.res_idx[i], c.grade_idx[i]] for k in range(len(c.stages))])
    per_msg = c.per_message(np.array([i]), per_frame[None, :, None])[0, :, 0]
    work = np.zeros(len(c.nodes))
    for k in range(len(c.stages)):
        work[c.mapping[i, k]] += per_msg[k]
    return work
