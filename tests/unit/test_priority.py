"""A background process's priority as the kernel applies it (services/priority.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, os
from services.priority import become_background
become_background(12)
group = open("/proc/self/autogroup").read().split() if os.path.exists("/proc/self/autogroup") else None
print(json.dumps({"nice": os.getpriority(os.PRIO_PROCESS, 0), "sid": os.getsid(0), "pid": os.getpid(), "group": group}))
"""


def test_a_background_process_is_niced_in_a_scheduling_group_of_its_own():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = json.loads(out.stdout)
    assert child["nice"] == 12
    assert child["sid"] == child["pid"] != os.getsid(0)  # its own session: autogroups are per session
    if child["group"] is not None:  # a kernel with autogroup: the group carries the niceness too
        assert child["group"][-2:] == ["nice", "12"], child["group"]
