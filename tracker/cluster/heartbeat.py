"""Node liveness: live resource readings, the edge's heartbeat loop, the cloud's upkeep loop.

An edge sends `POST /node/heartbeat` every `interval_s` with its resources and its
generators' stats. The cloud heartbeats its own node row, marks nodes without a heartbeat
for `node_timeout_s` as down, and wakes the scheduler for every job whose current plan
uses a node that went down, so its stages move at the next planning round.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Callable

import psutil

if TYPE_CHECKING:
    from services.settings import Settings
    from tracker.runtime.job_control import JobControl

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 1.0
NODE_TIMEOUT_S = 4.0  # four missed heartbeats

_gpu_lock = threading.Lock()
_gpu_info: dict | None = None


def gpu_info() -> dict:
    """{"gpu": bool, "gpu_count", "gpu_name", "gpu_mem_gb"} from nvidia-smi, read once per
    process: a tracker must not import torch (~600 MB) just to say whether its host has a GPU."""
    global _gpu_info
    with _gpu_lock:
        if _gpu_info is None:
            info: dict = {"gpu": False}
            smi = shutil.which("nvidia-smi")
            if smi:
                try:
                    out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                         capture_output=True, text=True, timeout=10, check=True).stdout
                    gpus = [line.rsplit(",", 1) for line in out.strip().splitlines() if "," in line]
                    if gpus:
                        info = {"gpu": True, "gpu_count": len(gpus), "gpu_name": gpus[0][0].strip(),
                                "gpu_mem_gb": round(float(gpus[0][1]) / 1024, 1)}
                except (OSError, subprocess.SubprocessError, ValueError) as exc:
                    log.info("no GPU information (%s)", exc)
            _gpu_info = info
        return dict(_gpu_info)


def node_resources(check_gpu: bool = True) -> dict:
    """What the planner's `resource_info` needs, read live (psutil; GPU from torch)."""
    mem = psutil.virtual_memory()
    out = {
        "cpu_count": os.cpu_count() or 1,
        "cpu_ratio": round(min(psutil.cpu_percent(interval=None) / 100.0, 1.0), 3),
        "mem_ratio": round(min(mem.percent / 100.0, 1.0), 3),
        "mem_total_gb": round(mem.total / 2**30, 1),
        "load_1m": round(os.getloadavg()[0], 2),
    }
    out.update(gpu_info() if check_gpu else {"gpu": False})
    return out


class PeriodicLoop(threading.Thread):
    """The house loop shape: a named thread, a stop event, a bounded wait, a log line on exit."""

    def __init__(self, name: str, interval_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.interval_s = interval_s
        self.stop_event = threading.Event()

    def tick(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self) -> None:
        failing_since: float | None = None  # a run of failed ticks: one traceback, then a line
        next_warning = 0.0                  # every 30 s (a broker restart, a database outage)
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self.tick()
                if failing_since is not None:
                    log.info("%s: recovered after %.1f s of failed ticks", self.name, started - failing_since)
                    failing_since = None
            except Exception as exc:
                if failing_since is None:
                    failing_since = started
                    log.exception("%s: tick failed", self.name)
                    next_warning = started + 30.0
                elif started >= next_warning:
                    log.warning("%s: still failing after %.0f s: %s", self.name, started - failing_since, exc)
                    next_warning = started + 30.0
            self.stop_event.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
        log.info("%s stopped", self.name)

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout)


class HeartbeatSender(PeriodicLoop):
    """Edge side: calls `send(resources)` every interval; `send` returns False when the
    cloud does not know this node any more, and `on_unknown` then re-registers."""

    def __init__(self, send: Callable[[dict], bool], on_unknown: Callable[[], None],
                 interval_s: float = HEARTBEAT_EVERY_S, check_gpu: bool = True) -> None:
        super().__init__("vdag-heartbeat", interval_s)
        self.send = send
        self.on_unknown = on_unknown
        self.check_gpu = check_gpu
        self.sent = 0
        self.failures = 0

    def tick(self) -> None:
        try:
            known = self.send(node_resources(self.check_gpu))
        except Exception as exc:  # cloud restarting, network blip: keep trying
            self.failures += 1
            if self.failures == 1 or self.failures % 30 == 0:
                log.warning("heartbeat to the cloud failed (%d in a row): %s", self.failures, exc)
            return
        if self.failures:
            log.info("heartbeat to the cloud works again after %d failures", self.failures)
        self.failures = 0
        self.sent += 1
        if not known:
            log.warning("the cloud does not know this node; registering again")
            self.on_unknown()


class NodeUpkeep(PeriodicLoop):
    """Cloud side: keep our own node row alive, mark silent nodes down, re-plan their jobs."""

    def __init__(self, settings: "Settings", control: "JobControl", interval_s: float = HEARTBEAT_EVERY_S,
                 node_timeout_s: float = NODE_TIMEOUT_S, check_gpu: bool = True) -> None:
        super().__init__("vdag-node-upkeep", interval_s)
        self.settings = settings
        self.control = control
        self.store = control.store
        self.node_timeout_s = node_timeout_s
        self.check_gpu = check_gpu
        self.marked_down: list[tuple[float, str]] = []  # (wall time, node) for the record

    def tick(self) -> None:
        self.store.heartbeat(self.settings.node, node_resources(self.check_gpu))
        down = self.store.mark_stale_nodes(self.node_timeout_s)
        if down:
            now = time.time()
            self.marked_down.extend((now, n) for n in down)
            del self.marked_down[:-100]
            self.replan_jobs_on(set(down))

    def replan_jobs_on(self, nodes: set[str]) -> list[str]:
        """Running jobs whose current plan maps a stage to `nodes` lose their plan (EXEC ->
        UNSCHED, generator paused) and are planned again at once."""
        affected = []
        for job in self.store.active_jobs():
            current = self.store.current_plan(job.uid)
            if current and any(m.node in nodes for m in current[1].flow_mapping.values()):
                affected.append(job.uid)
        if affected:
            log.warning("nodes %s down: re-planning jobs %s", ", ".join(sorted(nodes)), ", ".join(affected))
            reason = f"node {', '.join(sorted(nodes))} down"
            for uid in affected:
                if not self.control.plan_lost(uid, reason):
                    self.control.request_plan(uid)
        return affected
