"""The nutpie model in a process of its own, at low CPU priority.

Compiling the model (44-75 s on a 2-core node with nutpie's C callbacks; 15-20 s the first
time and about 4 s after that with scheduler/nutpie_model.py) and sampling it hold the GIL for
long stretches; inside the tracker that starved the generators and the aggregator (DESIGN.md
s.7: the first-run demo ended before the compile did). Here the child process compiles and
samples, niced, and the planner thread only waits on a pipe (which releases the GIL). Until
the child is ready the planner keeps using the Gaussian posterior (bayes.gaussian_snapshot).

The pipe carries our own numpy arrays between two processes of this program (pickled by
multiprocessing on a local socket pair), never data from the network.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time

from scheduler.bayes import MAX_NODES, MAX_SERVICES, BayesModel, ModelData, Snapshot
from scheduler.bayes_priors import Layout
from services.priority import become_background

log = logging.getLogger(__name__)

NICE = 15  # below a job's first profiling segment (10): accuracy from the video first
START_TIMEOUT_S = 600.0
SAMPLE_TIMEOUT_S = 120.0


def _serve(conn, max_services: int, max_nodes: int, nice: int) -> None:
    become_background(nice)  # a group of its own: niceness alone ranks it only within the tracker's
    model = BayesModel(max_services, max_nodes)
    try:
        model.compile()
    except Exception as exc:  # reported to the parent, which stays on the Gaussian posterior
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", model.compile_s))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        _, data, kwargs = msg
        try:
            conn.send(("snapshot", model.sample(data, **kwargs)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class SamplerError(RuntimeError):
    pass


class ProcessBayesModel:
    """BayesModel's interface (layout, compiled, compile, sample, compile_s) over a child process."""

    def __init__(self, max_services: int = MAX_SERVICES, max_nodes: int = MAX_NODES, nice: int = NICE) -> None:
        self.layout = Layout(max_services, max_nodes)
        self._sizes = (max_services, max_nodes)
        self._nice = nice
        self._conn = None
        self._proc: mp.process.BaseProcess | None = None
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self.compile_s: float | None = None
        self.start_s: float | None = None  # child start -> compiled, wall time

    @property
    def compiled(self) -> bool:
        return self._ready.is_set()

    def compile(self) -> None:
        """Start the child and wait until its model is compiled (call from a side thread)."""
        with self._lock:
            if self._proc is not None or self._closing.is_set():
                return
            t0 = time.monotonic()
            # spawn, not fork: the tracker has threads (and maybe torch) that a fork would copy mid-state.
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            self._proc = ctx.Process(target=_serve, args=(child, *self._sizes, self._nice),
                                     name="vdag-sampler", daemon=True)
            self._proc.start()
            child.close()
            self._conn = parent
        deadline = time.monotonic() + START_TIMEOUT_S
        while not parent.poll(0.5):  # not under the lock: close() must not wait for a compile
            if self._closing.is_set():
                return
            if time.monotonic() > deadline:
                raise SamplerError(f"sampler process not ready after {START_TIMEOUT_S:.0f} s")
        kind, value = parent.recv()
        if kind != "ready":
            raise SamplerError(f"sampler process could not compile the model: {value}")
        self.compile_s, self.start_s = value, time.monotonic() - t0
        self._ready.set()
        log.info("sampler process ready: model compiled in %.1f s (%.1f s from start, nice %d)",
                 value, self.start_s, self._nice)

    def sample(self, data: ModelData, **kwargs) -> Snapshot:
        if not self.compiled:
            raise SamplerError("the sampler process is not ready; use the Gaussian posterior meanwhile")
        with self._lock:
            self._conn.send(("sample", data, kwargs))
            if not self._conn.poll(SAMPLE_TIMEOUT_S):
                raise SamplerError(f"no posterior from the sampler process in {SAMPLE_TIMEOUT_S:.0f} s")
            kind, value = self._conn.recv()
        if kind != "snapshot":
            raise SamplerError(f"sampling failed in the sampler process: {value}")
        return value

    def close(self, timeout: float = 5.0) -> None:
        self._closing.set()
        with self._lock:
            proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if proc is None:
            return
        try:
            conn.send(("stop",))
        except (OSError, ValueError):
            pass
        proc.join(timeout)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout)
        self._ready.clear()
        log.info("sampler process stopped")


__all__ = ["ProcessBayesModel", "SamplerError"]
