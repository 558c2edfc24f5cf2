"""How busy each node's workers are, from the service times the aggregator sees.

This, not the host's CPU utilisation, is the planner's node load: the planner treats load as
work queued on the node's workers, while other processes sharing the CPU only slow the
service times, which it learns from observations (reading psutil's CPU here counted that
contention twice and made every plan look infeasible on a busy host).

The aggregator records, the scheduler thread and the stats flush read: one lock guards it all.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from typing import Callable, Iterable

log = logging.getLogger(__name__)

LOAD_WINDOW_S = 5.0  # how far back a job's own busy time on a node is summed
NODES_EVERY_S = 1.0  # how often the node table is re-read

NodeTable = Callable[[], Iterable[tuple[str, int]]]  # (node name, worker processes)


class NodeLoad:
    def __init__(self, read_nodes: NodeTable, window_s: float = LOAD_WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.read_nodes = read_nodes
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._busy: dict[tuple[str, str], deque[tuple[float, float]]] = defaultdict(deque)  # (job, node)
        self._nodes: dict[str, int] = {}
        self._nodes_read_at = float("-inf")

    def record(self, job_uid: str, node: str, service_s: float, at: float | None = None) -> None:
        at = self.clock() if at is None else at
        with self._lock:
            self._busy[(job_uid, node)].append((at, service_s))

    def forget(self, job_uid: str) -> None:
        with self._lock:
            for key in [k for k in self._busy if k[0] == job_uid]:
                del self._busy[key]

    def _n_process(self, node: str, now: float) -> int | None:
        if now - self._nodes_read_at >= NODES_EVERY_S:
            try:
                self._nodes = {name: max(n, 1) for name, n in self.read_nodes()}
            except Exception:
                log.debug("node table not readable for node load", exc_info=True)
            self._nodes_read_at = now
        return self._nodes.get(node)

    def _trim(self, busy: deque[tuple[float, float]], now: float) -> float:
        while busy and busy[0][0] < now - self.window_s:
            busy.popleft()
        return sum(t for _, t in busy)

    def worker_busy(self, node: str, now: float | None = None) -> float | None:
        """Busy share of a node's worker processes over the window, summed over every job;
        None when the node is unknown."""
        now = self.clock() if now is None else now
        with self._lock:
            return self._worker_busy(node, now)

    def _worker_busy(self, node: str, now: float) -> float | None:
        n_process = self._n_process(node, now)
        if n_process is None:
            return None
        total = sum(self._trim(busy, now) for (_, n), busy in self._busy.items() if n == node)
        return round(min(total / self.window_s / n_process, 1.0), 3)

    def shares(self, job_uid: str, node: str, now: float | None = None) -> tuple[float, float] | None:
        """(busy share of the node's workers over every job, this job's own part of it); None
        when the node is unknown."""
        now = self.clock() if now is None else now
        with self._lock:
            total = self._worker_busy(node, now)
            if total is None:
                return None
            busy = self._busy.get((job_uid, node))
            own = self._trim(busy, now) / self.window_s / self._n_process(node, now) if busy else 0.0
            return total, round(min(own, total), 3)

    def background_load(self, job_uid: str, node: str, now: float | None = None) -> float | None:
        """The node's load apart from this job's own work; None when the node is unknown."""
        shares = self.shares(job_uid, node, now)
        return None if shares is None else round(max(shares[0] - shares[1], 0.0), 3)

    def jobs(self) -> set[str]:
        with self._lock:
            return {job for job, _ in self._busy}
