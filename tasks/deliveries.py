"""How often a frame was in the hands of a worker process that died (issue 10, item 5).

`acks_late` + `reject_on_worker_lost` requeue the frame a killed process held, which is what
makes a worker kill lose nothing, but a frame that itself kills its worker (a decoder crash,
a model running out of memory on it) would then be redelivered forever and take the pool down
with it each time. A classic queue keeps no delivery count, and a frame's envelope cannot
carry one (the broker redelivers the same bytes), so each host keeps a marker file per frame
that is being processed: written when a process starts the frame, removed when it finishes.
A delivery that finds the marker of an earlier attempt knows that attempt's process died on
it. Frames that only sat in a dying process's prefetch never started and are not counted.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3          # processes a frame may take down before it is given up
STALE_AFTER_S = 3600.0    # markers older than this are from frames long settled elsewhere
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class DeliveryLedger:
    def __init__(self, directory: Path, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.directory = Path(directory)
        self.max_attempts = max_attempts
        self.directory.mkdir(parents=True, exist_ok=True)

    def _marker(self, task_id: str) -> Path:
        return self.directory / _SAFE.sub("_", task_id)[:200]

    def start(self, task_id: str) -> int:
        """Record that this process starts the frame; returns its attempt number (1 = first)."""
        marker = self._marker(task_id)
        try:
            attempt = int(marker.read_text() or "0") + 1
        except (FileNotFoundError, ValueError):
            attempt = 1
        marker.write_text(str(attempt))
        if attempt > 1:
            log.warning("frame task %s: attempt %d (the process that had it before died)", task_id, attempt)
        return attempt

    def finish(self, task_id: str) -> None:
        self._marker(task_id).unlink(missing_ok=True)

    def given_up(self, attempt: int) -> bool:
        return attempt > self.max_attempts

    def prune(self, older_than_s: float = STALE_AFTER_S) -> int:
        """Drop markers of frames that another host finished, or whose job is long gone."""
        cutoff = time.time() - older_than_s
        dropped = 0
        for marker in self.directory.iterdir():
            try:
                if marker.stat().st_mtime < cutoff:
                    marker.unlink()
                    dropped += 1
            except FileNotFoundError:
                pass
        return dropped


_ledger: DeliveryLedger | None = None
_ledger_pid: int | None = None


def ledger(data_dir: Path) -> DeliveryLedger:
    """This host's ledger (one directory shared by every worker process on it)."""
    global _ledger, _ledger_pid
    if _ledger is None or _ledger_pid != os.getpid():
        _ledger, _ledger_pid = DeliveryLedger(Path(data_dir) / "deliveries"), os.getpid()
        _ledger.prune()
    return _ledger
