"""Which runtime serves a model at each input size, measured on the frames a worker serves.

An export is not faster everywhere. On the slowest 2-core AMD host of our benches OpenVINO
took 1.4x PyTorch's time for the person model at 640 while it was 2x faster at 320
(bench/results/throughput_slow_amd.json); which wins depends on the CPU, the threads and
the size. So with runtime "auto", once a model has an export, a worker serves each input
size from the runtimes in turn: one warm-up call each (a first call at a new shape compiles),
then `rounds` timed single-frame calls each, and from then on from the one with the lower
median time, the export unless another runtime is faster by more than `margin` (noise on a
shared host must not flip it). Every frame of the trial is served as usual (the runtimes give
the same boxes, tests/integration/test_runtimes.py): the trial costs the slower runtime's
extra time on a few frames of each size. Batched calls are served by the size's current
choice and not timed (a batch's time is not a frame's).

Decisions are kept in a JSON file beside the exports, per host (CPU model, threads, device)
and export, so a restarted worker serves every size it has seen from its winner at once.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import statistics
import threading
from collections import defaultdict
from pathlib import Path

log = logging.getLogger(__name__)

CHOICES_FILE = "runtime-choices.json"


def size_key(imgsz: int | None, shape: tuple[int, ...] | None) -> str:
    """What a predict call's cost depends on: the inference size and the frame's own shape."""
    h, w = (shape or (0, 0))[:2]
    return f"{imgsz or 0}@{w}x{h}"


class RuntimeTrial:
    """Per size: the runtime to serve the next call from, and what the calls took.

    `runtimes` in order of preference (the export first). `explore=False` only follows the
    decisions given (a process whose timings would mislead: the niced segment profiler).
    """

    def __init__(self, runtimes: list[str], rounds: int = 4, margin: float = 0.05,
                 decided: dict[str, str] | None = None, on_decide=None, explore: bool = True) -> None:
        if len(runtimes) < 2 or rounds < 1:
            raise ValueError("a trial needs two runtimes or more and rounds >= 1")
        self.runtimes, self.rounds, self.margin, self.explore = list(runtimes), rounds, margin, explore
        self._decided = {k: v for k, v in (decided or {}).items() if v in self.runtimes}
        self._calls: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(self.runtimes, 0))
        self._times: dict[str, dict[str, list[float]]] = defaultdict(lambda: {r: [] for r in self.runtimes})
        self._on_decide = on_decide
        self._lock = threading.Lock()

    @property
    def preferred(self) -> str:
        return self.runtimes[0]

    def decided(self) -> dict[str, str]:
        with self._lock:
            return dict(self._decided)

    def in_progress(self) -> bool:
        """Whether a size has been served but not decided yet."""
        with self._lock:
            return bool(self._calls)

    def pick(self, size: str, batch: int = 1) -> str:
        with self._lock:
            if size in self._decided:
                return self._decided[size]
            if batch > 1 or not self.explore:
                return self.preferred
            calls = self._calls[size]
            return min(self.runtimes, key=lambda r: calls[r])  # the fewest calls; ties: preference

    def record(self, size: str, runtime: str, seconds: float) -> str | None:
        """One single-frame call's time; returns the winner when this call decides the size."""
        with self._lock:
            if size in self._decided or not self.explore:
                return None
            calls, times = self._calls[size], self._times[size]
            calls[runtime] += 1
            if calls[runtime] > 1:  # the first call at a size warms up (a shape compile)
                times[runtime].append(seconds)
            if any(len(t) < self.rounds for t in times.values()):
                return None
            medians = {r: statistics.median(t) for r, t in times.items()}
            best = min(medians, key=medians.get)
            if medians[best] >= medians[self.preferred] * (1 - self.margin):
                best = self.preferred
            self._decided[size] = best
            del self._calls[size], self._times[size]
        log.info("runtime trial at %s: %s serves it (median ms a frame: %s)", size, best,
                 ", ".join(f"{r} {m * 1e3:.1f}" for r, m in medians.items()))
        if self._on_decide is not None:
            self._on_decide(size, best)
        return best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_key(device: str, threads: int) -> str:
    return f"{cpu_model()}|{os.cpu_count()} cores|{threads} threads|{device}"


class ChoiceFile:
    """{host: {export key: {size: runtime}}} in `root`/runtime-choices.json, shared by the
    worker processes of a node (an flock around each read-modify-write, an atomic replace)."""

    def __init__(self, root: Path, host: str, export_key: str) -> None:
        self.path, self.host, self.export_key = Path(root) / CHOICES_FILE, host, export_key

    def load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        found = data.get(self.host, {}).get(self.export_key, {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def save(self, size: str, runtime: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    data = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    data = {}
                if not isinstance(data, dict):
                    data = {}
                data.setdefault(self.host, {}).setdefault(self.export_key, {})[size] = runtime
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
                os.replace(tmp, self.path)
        except OSError as exc:  # a read-only exports folder costs a new trial per start, nothing else
            log.warning("could not keep the runtime choice in %s: %s", self.path, exc)
