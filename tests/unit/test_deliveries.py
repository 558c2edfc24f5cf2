"""The per-host delivery ledger (tasks.deliveries): attempts of a frame whose process died."""
from __future__ import annotations

import os
import time

from tasks.deliveries import DeliveryLedger


def test_an_attempt_counts_only_when_the_one_before_did_not_finish(tmp_path):
    book = DeliveryLedger(tmp_path / "d", max_attempts=2)
    assert book.start("task-1") == 1
    book.finish("task-1")
    assert book.start("task-1") == 1, "a finished frame that comes again (a requeue) starts afresh"
    # The process died on it twice: the markers stayed.
    assert book.start("task-1") == 2 and not book.given_up(2)
    assert book.start("task-1") == 3 and book.given_up(3)
    book.finish("task-1")
    assert not list((tmp_path / "d").iterdir())


def test_odd_task_ids_stay_inside_the_directory_and_old_markers_are_pruned(tmp_path):
    book = DeliveryLedger(tmp_path / "d")
    book.start("../../etc/passwd")
    assert [p.parent for p in (tmp_path / "d").iterdir()] == [tmp_path / "d"]
    marker = next((tmp_path / "d").iterdir())
    old = time.time() - 7200
    os.utime(marker, (old, old))
    assert book.prune() == 1 and not list((tmp_path / "d").iterdir())
