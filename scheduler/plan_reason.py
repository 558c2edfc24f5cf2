"""The human-readable reason every Bayesian plan carries, and what tools read back from it."""
from __future__ import annotations

import re

import numpy as np

from scheduler import knobs
from scheduler.bayes import Snapshot

_BASIS = re.compile(r"; (\w+) v\d+, (\d+) latency / (\d+) accuracy obs\)")


def explain(c: knobs.Candidates, short: np.ndarray, pick: int, p_ok: np.ndarray, f1: np.ndarray, cost: np.ndarray,
            D: float, why: str, snap: Snapshot, ef1_all: np.ndarray) -> str:
    """The chosen plan (shortlist position `pick`) with its P(delay), E[F1] and compute, why it
    was chosen and from what; the most accurate plan it passed over and why; what the next
    lower resolution would lose. f1: [M, n] draws of the shortlist; ef1_all: E[F1] of every candidate."""
    i = int(short[pick])
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
    if r > 0:  # same fps, grade, quality and mapping: one resolution block earlier in the grid
        lower = i - len(c) // len(c.res)
        head += f"; {c.res[r - 1][0]} would lose {ef1_all[i] - ef1_all[lower]:.2f} F1"
    return head


def plan_basis(reason: str) -> tuple[str, int, int] | None:
    """What a plan's reason (explain) says it was made from: the posterior's source ("prior",
    "gaussian", "posterior") and its latency and accuracy observation counts."""
    m = _BASIS.search(reason)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None
