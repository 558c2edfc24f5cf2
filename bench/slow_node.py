"""A slower node on this host: every process of the bench gets a CPU quota of its own.

The adaptation bench's results depend on the node's speed, and hosts of "the same class" differ
2.5x (bench/HISTORY.md). With `share` = 0.8 each process (the bench's tracker, the worker and
its pool child, the segment profiler, the posterior sampler) may run 80 ms of every 100 ms: a
process computing on one thread runs ~1.25x slower, as on a slower CPU, while the processes still
contend for the host's cores as they would there. The worker in these benches infers on one
thread (cores - 1 on a 2-core host), so a per-process quota is a per-thread slowdown for it; a
process with several busy threads would be capped harder than a slower CPU would slow it.

Measured on the faster 2-core AMD EPYC (the person detector 0.07 / 0.11 / 0.16 s a vtest frame
at 360p / 480p / 576p on OpenVINO): the worker on PyTorch at share 0.8 took 0.19-0.20 / 0.30-0.33
/ 0.43-0.49 s, the slow host's 0.17 / 0.29 / 0.40 on OpenVINO give or take its spread, and
static's one-time profile scored 0.871 at vtest D = 0.5 s here as it did there (0.871-0.872).

Linux cgroups' CPU controller, v1 (`cpu.cfs_quota_us`) or v2 (`cpu.max`); it needs root.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

PERIOD_US = 100_000
POLL_S = 0.2  # new processes (the profiler child, the sampler) are capped within this
_V1 = Path("/sys/fs/cgroup/cpu")
_V2 = Path("/sys/fs/cgroup")


class SlowNodeUnavailable(RuntimeError):
    """No CPU controller this process may write to."""


def _controller() -> tuple[Path, str]:
    if (_V1 / "cpu.cfs_quota_us").exists():
        return _V1, "v1"
    enabled = _V2 / "cgroup.subtree_control"
    if enabled.exists() and "cpu" in enabled.read_text().split():
        return _V2, "v2"
    raise SlowNodeUnavailable("no cgroup CPU controller at /sys/fs/cgroup/cpu (v1) or enabled in /sys/fs/cgroup (v2)")


class SlowNode:
    """Context manager: this process and every descendant, each in a cgroup of its own capped at
    `share` of a CPU, until exit (then they go back to the root group and the groups go)."""

    def __init__(self, share: float) -> None:
        if not 0.05 <= share <= 1.0:
            raise ValueError(f"share must be in [0.05, 1], not {share}")
        self.share = share
        self.root, self.version = _controller()
        self._groups: dict[int, Path] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vdag-slow-node", daemon=True)

    def __enter__(self) -> "SlowNode":
        try:
            self._place(psutil.Process().pid)
        except OSError as exc:
            raise SlowNodeUnavailable(f"cannot create a CPU cgroup under {self.root} (root needed): {exc}") from exc
        self._thread.start()
        log.info("slow node: every process at %.2f of a CPU (cgroup %s)", self.share, self.version)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2 * POLL_S + 1)
        for pid, group in self._groups.items():
            try:
                for member in (group / "cgroup.procs").read_text().split():
                    (self.root / "cgroup.procs").write_text(member)
                group.rmdir()
            except OSError:
                log.warning("slow node: cgroup %s of process %d not removed", group, pid)

    def _place(self, pid: int) -> None:
        group = self.root / f"vdag-slow-{pid}"
        group.mkdir(exist_ok=True)
        quota = int(self.share * PERIOD_US)
        if self.version == "v1":
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        (group / "cgroup.procs").write_text(str(pid))
        self._groups[pid] = group

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(POLL_S):
            try:
                children = me.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                if child.pid not in self._groups:
                    try:
                        self._place(child.pid)
                    except OSError:
                        pass  # it ended before it was placed


__all__ = ["SlowNode", "SlowNodeUnavailable"]
