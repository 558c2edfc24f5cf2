"""The scheduling loop the tracker runs as a thread: plan every running job every few seconds.

Knows nothing of Flask, Celery or the database: it reads jobs from a `JobSource` and hands
plans back to it. A planner error for one job is logged and that job keeps its last plan. A
job that is no longer running is forgotten by the planner (its `forget`, where it has one) in
this thread, the one that plans: the planner's per-job state never outlives the job.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from scheduler.interface import JobSource, Planner

log = logging.getLogger(__name__)


class SchedulerLoop:
    def __init__(self, planner_factory: Callable[[], Planner], job_source: JobSource,
                 interval_s: float = 2.0, name: str = "vdag-scheduler") -> None:
        self.planner_factory = planner_factory
        self.job_source = job_source
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self._woken: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._planned: set[str] = set()  # jobs the planner has seen and not yet forgotten
        self.rounds = 0
        self.errors = 0
        self.last_error: str | None = None

    # ---- control ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self, job_uid: str) -> None:
        """Re-plan this job now (e.g. its constraint changed), not at the next interval."""
        with self._lock:
            self._woken.add(job_uid)
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        log.info("scheduler loop started (every %.1f s)", self.interval_s)
        planner: Planner | None = None
        try:
            planner = self.planner_factory()  # built in this thread: compiled functions stay here
            next_round = time.monotonic()
            while not self.stop_event.is_set():
                now = time.monotonic()
                with self._lock:
                    woken, self._woken = self._woken, set()
                self._wake.clear()
                if now >= next_round:
                    self._plan_jobs(planner, None)
                    next_round = now + self.interval_s
                elif woken:
                    self._plan_jobs(planner, woken)
                self._wake.wait(timeout=max(0.0, next_round - time.monotonic()))
        except Exception:
            log.exception("scheduler loop crashed")
        finally:
            close = getattr(planner, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.exception("planner close failed")
            log.info("scheduler loop stopped after %d rounds, %d planner errors", self.rounds, self.errors)

    def _plan_jobs(self, planner: Planner, only: set[str] | None) -> None:
        try:
            jobs = self.job_source.running_jobs()
        except Exception as exc:
            self.errors += 1
            self.last_error = f"running_jobs: {exc}"
            log.warning("could not list running jobs: %s", exc)
            return
        if only is None:
            self._forget_ended(planner, {inp.job_uid for inp in jobs})
        for inp in jobs:
            if self.stop_event.is_set():
                return
            if only is not None and inp.job_uid not in only:
                continue
            self._planned.add(inp.job_uid)
            try:
                plan = planner.plan(inp)
            except Exception as exc:  # keep the job's last plan; try again next round
                self.errors += 1
                self.last_error = f"{inp.job_uid}: {exc}"
                log.warning("planner %s failed for job %s, keeping its last plan: %s",
                            getattr(planner, "name", "?"), inp.job_uid, exc)
                continue
            try:
                self.job_source.save_plan(inp.job_uid, plan)
            except Exception as exc:
                self.errors += 1
                self.last_error = f"save_plan {inp.job_uid}: {exc}"
                log.warning("could not save the plan of job %s: %s", inp.job_uid, exc)
        self.rounds += 1

    def _forget_ended(self, planner: Planner, running: set[str]) -> None:
        forget = getattr(planner, "forget", None)
        for uid in self._planned - running:
            if callable(forget):
                try:
                    forget(uid)
                except Exception:
                    log.exception("planner could not forget job %s", uid)
            self._planned.discard(uid)
