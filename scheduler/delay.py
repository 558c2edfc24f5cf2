"""Per-frame delay of candidate plans: service time + queueing on each node + transfers.

Shared by the Bayesian planner (service times = posterior draws) and the simulator
(service times = the simulated truth), so both reason about the same structure:
- stages run in topological order, the frame hopping node to node;
- a node's queue is M/D/1-like: utilisation = background load + this job's work per second
  over the node's worker count; wait = rho / (2 (1 - rho)) x work, plus the backlog already
  queued there;
- a hop between different nodes (the generator's node -> first stage counts) costs
  frame bytes / link bandwidth.
"""
from __future__ import annotations

import numpy as np

from scheduler.interface import NodeInfo
from scheduler.knobs import Candidates

DEFAULT_BW = 12.5e6      # bytes/s (100 Mbit/s) when a link has no measurement
RHO_MAX = 0.97


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
    overload_frames: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame delay [M, D] and peak node utilisation [M, D].

    svc_time: per-frame service time per stage [M, K, D]; mean_time: its mean (for load).
    With ntracking, a node's load is that of each detected frame and the frames tracked after
    it (knobs.per_message) at the detected-frame rate; the delay is a detected frame's (its own
    stages plus the queue): the tracked frames after it take a few ms and at most wait for it.
    When a node is over RHO_MAX the delay is inf, or, if overload_frames is given (the
    simulator: the generator caps frames in flight), that many frames of work.
    Works stage by stage rather than node by node: a plan uses at most K of the cluster's
    nodes, and a decision scores every candidate, so [M, K] beats [M, nodes] on a big cluster.
    """
    fps = c.msg_rate[idx][:, None]
    mean_time = c.per_message(idx, mean_time)
    mapping = c.mapping[idx]
    K = mapping.shape[1]
    delay = svc_time.sum(axis=1) + transfer[:, None]
    peak = np.zeros_like(delay)
    for k in range(K):
        j = mapping[:, k]
        same = mapping == j[:, None]                               # stages on stage k's node
        work = (mean_time * same[:, :, None]).sum(axis=1)
        per = work / cap[j][:, None]
        rho = bg[j][:, None] + fps * per
        with np.errstate(divide="ignore", invalid="ignore"):
            wait = np.where(rho < RHO_MAX, rho / (2 * (1 - rho)) * per + qdepth[j][:, None] * per, np.inf)
        if overload_frames is not None:
            wait = np.where(np.isinf(wait), overload_frames * per, wait)
        repeat = same[:, :k].any(axis=1)                            # node already counted: it waits once
        delay = delay + (np.where(repeat[:, None], 0.0, wait) if repeat.any() else wait)
        peak = np.maximum(peak, rho)
    return delay, peak
