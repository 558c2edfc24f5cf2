"""Background processes at a CPU priority the kernel honours.

Niceness orders threads within one scheduling group only. Under Linux's autogroup
(/proc/sys/kernel/sched_autogroup_enabled = 1, the default of many distributions' kernels) every
session is a group and the groups share the CPU evenly, whatever their threads' niceness.
Measured with top on a 2-core host: the posterior sampler (the tracker's session, nice 15) took
~90 % of a core for the first 24 s of a job, while the segment profiler (the worker's session,
nice 10, the job's first accuracy waiting on it) got 25-38 % and took 28-33 s for a segment that
takes 9 s alone. So a background process starts a session of its own and gives that group its
niceness too. Where cgroups rather than autogroups divide the CPU (a systemd service) the
session changes nothing and the thread niceness does the work.
"""
from __future__ import annotations

import os


def set_group_nice(pid: int, nice: int) -> bool:
    """The niceness of `pid`'s autogroup; False where there is none or it may not be changed
    (raising a group's priority needs the privilege that raising a thread's does)."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
        return True
    except OSError:
        return False


def become_background(nice: int) -> None:
    """In a process about to do background work: this niceness, in a session (and so an
    autogroup) of its own at the same niceness."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        pass
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader: its group is its own
    set_group_nice(os.getpid(), nice)


__all__ = ["become_background", "set_group_nice"]
