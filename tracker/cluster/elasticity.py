"""Elastic worker pools: grow or shrink each node's Celery pool from its queue depth and
queue wait, with hysteresis, and say why.

`decide` is the whole policy as a pure function of (load, hysteresis state, policy, now),
unit-tested without Celery. The controller thread measures each node's load (queue depth
from the metrics sampler, p90 queue wait of its recent stage runs from the aggregator,
pool sizes from `inspect().stats()`), calls `decide`, and applies a decision with
`control.pool_grow` / `control.pool_shrink` on one worker of that node. Decisions are
logged and served at `GET /api/v1/elasticity`. Needs worker remote control (tasks.app
enables it on real brokers).

Hysteresis: a node must look hot for `grow_after` ticks in a row (cold for
`shrink_after` ticks, a longer run) before its pool changes, anything in between resets
both counts, and no change follows another within `cooldown_s`.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from flask import Blueprint, Flask, current_app, jsonify

from tracker.cluster.heartbeat import PeriodicLoop

if TYPE_CHECKING:
    from celery import Celery

    from tracker.store import Store
    from tracker.web.metrics import ClusterMetrics

log = logging.getLogger(__name__)

EXTENSION = "vdag.elasticity"
bp = Blueprint("elasticity", __name__, url_prefix="/api/v1")


@dataclass(frozen=True)
class ElasticPolicy:
    min_concurrency: int = 1
    max_concurrency: int = 4
    grow_backlog_per_process: float = 4.0  # ready messages per pool process that count as a backlog
    grow_wait_s: float = 0.5  # p90 queue wait that counts as hot
    shrink_wait_s: float = 0.05  # p90 queue wait below which an empty queue counts as cold
    grow_after: int = 2  # hot ticks in a row before growing
    shrink_after: int = 10  # cold ticks in a row before shrinking
    cooldown_s: float = 10.0
    step: int = 1
    interval_s: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_concurrency <= self.max_concurrency:
            raise ValueError("need 1 <= min_concurrency <= max_concurrency")
        if self.shrink_wait_s >= self.grow_wait_s:
            raise ValueError("shrink_wait_s must be below grow_wait_s (the hysteresis band)")


@dataclass(frozen=True)
class NodeLoad:
    node: str
    concurrency: int  # pool processes serving the node's queue, over all its workers
    depth: int | None  # ready messages in the node's queue; None = unknown
    wait_p90_s: float | None  # p90 queue wait of the node's recent stage runs; None = no runs


@dataclass
class Hysteresis:
    hot: int = 0
    cold: int = 0
    last_change: float = -math.inf


@dataclass(frozen=True)
class Decision:
    node: str
    action: Literal["grow", "shrink", "hold"]
    concurrency: int
    target: int
    reason: str


def decide(load: NodeLoad, state: Hysteresis, policy: ElasticPolicy, now: float) -> Decision:
    """One tick of the policy for one node; updates `state`'s counts."""
    conc, depth, wait = load.concurrency, load.depth, load.wait_p90_s
    backlog_limit = policy.grow_backlog_per_process * max(conc, 1)
    backlog = depth is not None and depth >= backlog_limit
    slow = wait is not None and wait >= policy.grow_wait_s
    idle = depth == 0 and (wait is None or wait <= policy.shrink_wait_s)
    seen = f"depth {depth if depth is not None else '?'}, p90 wait " + (f"{wait:.3f}s" if wait is not None else "-")

    def hold(why: str) -> Decision:
        return Decision(load.node, "hold", conc, conc, f"{why} ({seen}, {conc} processes)")

    if backlog or slow:
        state.hot, state.cold = state.hot + 1, 0
        why = " and ".join(filter(None, [f"queue depth >= {backlog_limit:g}" if backlog else "",
                                         f"p90 wait >= {policy.grow_wait_s:g}s" if slow else ""]))
        if conc >= policy.max_concurrency:
            return hold(f"hot ({why}) but at max {policy.max_concurrency}")
        if state.hot < policy.grow_after:
            return hold(f"hot ({why}) {state.hot}/{policy.grow_after} ticks")
        if now - state.last_change < policy.cooldown_s:
            return hold(f"hot ({why}) but cooling down")
        target = min(policy.max_concurrency, conc + policy.step)
        state.hot, state.last_change = 0, now
        return Decision(load.node, "grow", conc, target,
                        f"{why} for {policy.grow_after} ticks ({seen}): {conc} -> {target} processes")
    if idle:
        state.cold, state.hot = state.cold + 1, 0
        if conc <= policy.min_concurrency:
            return hold(f"idle, at min {policy.min_concurrency}")
        if state.cold < policy.shrink_after:
            return hold(f"idle {state.cold}/{policy.shrink_after} ticks")
        if now - state.last_change < policy.cooldown_s:
            return hold("idle but cooling down")
        target = max(policy.min_concurrency, conc - policy.step)
        state.cold, state.last_change = 0, now
        return Decision(load.node, "shrink", conc, target,
                        f"empty queue and p90 wait <= {policy.shrink_wait_s:g}s for {policy.shrink_after} ticks "
                        f"({seen}): {conc} -> {target} processes")
    state.hot = state.cold = 0
    return hold("within the band")


def p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


@dataclass
class _NodeView:
    concurrency: int | None = None
    depth: int | None = None
    wait_p90_s: float | None = None
    workers: dict[str, int] = field(default_factory=dict)
    last: dict | None = None  # the last decision
    last_change: dict | None = None  # the last grow/shrink


class ElasticityController(PeriodicLoop):
    def __init__(self, celery: "Celery", store: "Store", metrics: "ClusterMetrics", policy: ElasticPolicy) -> None:
        super().__init__("vdag-elasticity", policy.interval_s)
        self.celery = celery
        self.store = store
        self.metrics = metrics
        self.policy = policy
        self.states: dict[str, Hysteresis] = {}
        self.views: dict[str, _NodeView] = {}
        self.history: deque[dict] = deque(maxlen=200)
        self._lock = threading.Lock()

    def pools(self) -> dict[str, dict[str, int]]:
        """{node: {worker hostname: pool processes}} of the workers that answer in time."""
        replies = self.celery.control.inspect(timeout=1.0).stats() or {}
        out: dict[str, dict[str, int]] = {}
        for hostname, stats in replies.items():
            pool = (stats or {}).get("pool") or {}
            size = pool.get("max-concurrency")
            if isinstance(pool.get("processes"), list):
                size = len(pool["processes"])
            if isinstance(size, int):
                out.setdefault(hostname.split("@", 1)[0], {})[hostname] = size
        return out

    def tick(self) -> None:
        pools = self.pools()
        now = time.monotonic()
        for node in sorted(n.name for n in self.store.list_nodes(alive_only=True)):
            workers = pools.get(node)
            view = self.views.setdefault(node, _NodeView())
            view.workers = dict(workers or {})
            view.depth = self.metrics.node_queue_depth(node)
            view.wait_p90_s = p90(self.metrics.node_waits(node, window_s=3 * self.policy.interval_s)[0])
            if not workers:
                view.concurrency = None
                view.last = {"action": "hold", "reason": "no worker of this node answers remote control"}
                continue
            view.concurrency = sum(workers.values())
            load = NodeLoad(node, view.concurrency, view.depth, view.wait_p90_s)
            decision = decide(load, self.states.setdefault(node, Hysteresis()), self.policy, now)
            record = {"at": time.time(), **asdict(decision)}
            view.last = record
            if decision.action != "hold":
                self.apply(decision, workers)
                view.last_change = record
                self.history.append(record)

    def apply(self, decision: Decision, workers: dict[str, int]) -> None:
        delta = abs(decision.target - decision.concurrency)
        if decision.action == "grow":
            hostname = min(workers, key=workers.get)
            replies = self.celery.control.pool_grow(delta, destination=[hostname], reply=True, timeout=2.0)
        else:
            candidates = {h: n for h, n in workers.items() if n > 1}
            if not candidates:
                return
            hostname = max(candidates, key=candidates.get)
            replies = self.celery.control.pool_shrink(delta, destination=[hostname], reply=True, timeout=2.0)
        log.info("elasticity: %s %s on %s: %s (worker replied %s)", decision.action, decision.node, hostname,
                 decision.reason, replies)

    def snapshot(self) -> dict[str, dict]:
        return {node: asdict(view) for node, view in list(self.views.items())}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.get("/elasticity")
def elasticity_route():
    ctl: ElasticityController | None = current_app.extensions.get(EXTENSION)
    if ctl is None:
        return jsonify({"enabled": False, "nodes": {}, "history": []})
    return jsonify({"enabled": True, "policy": asdict(ctl.policy), "nodes": ctl.snapshot(),
                    "history": list(ctl.history)})
