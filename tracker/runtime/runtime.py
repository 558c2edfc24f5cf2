"""Runs jobs on this node: the generators, the aggregator, the scheduler loop, job control.

The one place where the data plane (tasks/, services/), the planner (scheduler/) and the
store meet. It is the JobEffects of its JobControl (tracker.runtime.job_control): request
handlers, node upkeep and edge routes move jobs through `runtime.control`, never here.
Start order is written out in `start`, and `stop` undoes it in reverse.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from celery import Celery

from scheduler.interface import Plan, PlanningInput
from services.records import FrameRecord
from services.settings import Settings
from services.sources import SourceError, probe_source
from tasks.consumers import AckListener, AckPublisher, ResultConsumer
from tracker.runtime.aggregator import Aggregator
from tracker.runtime.generators import JobRunner, active_plan, renders
from tracker.runtime.job_control import JobControl
from tracker.runtime.node_load import NodeLoad
from tracker.runtime.planning import PlanningInputs, StoreJobSource, make_scheduler_loop
from tracker.runtime.resume import resume_point
from tracker.store import Store
from tracker.store.jobs import Job, JobState
from tracker.store.recent_results import LivePlan, RecentResults

log = logging.getLogger(__name__)

STATS_EVERY_S = 1.0


class Runtime:
    def __init__(self, settings: Settings, store: Store, hub, celery: Celery, planner=None,
                 pace: float = 1.0, backpressure: str = "drop", scheduler_interval_s: float | None = 2.0,
                 recent: RecentResults | None = None) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.celery = celery
        self.planner = planner  # a factory of planners; None = the Bayesian planner
        self.scheduler_interval_s = scheduler_interval_s  # None: no scheduler, fixed plans only
        self.pace = pace
        self.backpressure = backpressure
        self.node_load = NodeLoad(lambda: [(n.name, n.n_process) for n in store.list_nodes()])
        self.aggregator = Aggregator(settings, store, hub, AckPublisher(celery), self.node_load, self.on_ack)
        # newest stored frames and plans, for result polls (mirrored into the API front when there is one)
        self.recent = recent if recent is not None else RecentResults()
        self.aggregator.observers.append(self.recent.add)
        self.control = JobControl(store, self)
        self.planning_input: Callable[[Job], PlanningInput] = PlanningInputs(settings, store, self.node_load,
                                                                             paced=pace > 0)
        self.job_end_observers: list[Callable[[str], None]] = []  # a job ended: metrics forget it
        self.runners: dict[str, JobRunner] = {}
        self._runners_lock = threading.Lock()
        self._last_stats = 0.0
        self.result_consumer: ResultConsumer | None = None
        self.ack_listener: AckListener | None = None
        self.scheduler = None

    @property
    def record_observers(self) -> list[Callable[[str, list[FrameRecord]], None]]:
        """Called with (job_uid, records) after each batch is stored: metrics, elasticity."""
        return self.aggregator.observers

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Runtime":
        self.start_result_consumer()
        self.start_ack_listener()
        if self.scheduler_interval_s is not None:
            self.start_scheduler()
        self.resume_jobs()
        return self

    def start_result_consumer(self) -> None:
        self.result_consumer = ResultConsumer(self.celery, self.settings.results_queue, self.aggregator.on_frame,
                                              self.on_tick)
        self.result_consumer.start()
        self.result_consumer.ready.wait(10)
        log.info("aggregator consuming results")

    def start_ack_listener(self) -> None:
        self.ack_listener = AckListener(self.celery, self.settings.node, self.on_ack)
        self.ack_listener.start()
        self.ack_listener.ready.wait(10)

    def start_scheduler(self) -> None:
        source = StoreJobSource(self.store, self.planning_input, self.control)
        self.scheduler = make_scheduler_loop(source, self.planner, self.scheduler_interval_s)
        self.scheduler.start()
        log.info("scheduler loop started")

    def resume_jobs(self) -> None:
        items, _ = self.store.list_jobs(state=JobState.EXEC, limit=10_000, offset=0)
        for job in items:
            log.info("resuming job %s", job.uid)
            self.start_generator(job.uid)

    def stop(self) -> None:
        with self._runners_lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.stop()
        log.info("generators stopped")
        if self.scheduler:
            self.scheduler.stop()
            log.info("scheduler stopped")
        if self.ack_listener:
            self.ack_listener.stop()
        if self.result_consumer:
            self.result_consumer.stop()
            self.aggregator.flush(force=True)
            log.info("aggregator stopped")
        for runner in runners:  # where each job continues: exactly, since nothing sends any more
            self.publish_stats(runner.job_uid, stopped_cleanly=True)

    # -- generators ------------------------------------------------------------------------
    def start_generator(self, job_uid: str) -> None:
        job = self.store.get_job(job_uid)
        current = self.store.current_plan(job_uid)
        if current is None:
            return
        plan_id, plan = current
        at = resume_point(self.store.last_result_position(job_uid), job.stats, self.settings.max_in_flight)
        here = job.node == self.settings.node
        # An edge's generator runs on across this restart; it reports its own (generator_restarted).
        self.aggregator.start_job(job_uid, job.dag, at.expect_from, stored=self.store.result_counts(job_uid),
                                  maybe_unused=(at.sent_before, at.first_seq) if here else (0, 0))
        self.recent.start(job_uid, at.expect_from)  # polls until its first result: answered from memory
        self._show_plan(job, plan_id, plan)
        if not here:
            return  # another node reads this job's source (tracker.cluster.edge polls for it)
        # Running again: a crash from here on must not read the last clean stop's record as exact.
        self.store.update_stats(job_uid, {"next_seq": at.first_seq, "seq_reserved": at.first_seq,
                                          "stopped_cleanly": False})
        runner = JobRunner(self.settings, self.celery, job_uid, job.dag, job.source, self._active(job, plan_id, plan),
                           at.first_seq, at.start_ts, self.pace, self.backpressure, on_end=self.control.finish,
                           preview=None if renders(job.dag) else self.hub.publish, counters=at.counters,
                           record_reservation=lambda until: self.store.update_stats(job_uid, {"seq_reserved": until}))
        with self._runners_lock:
            old = self.runners.pop(job_uid, None)
            self.runners[job_uid] = runner
        if old:
            old.stop()
        runner.start()

    def _active(self, job: Job, plan_id: int, plan: Plan):
        self.aggregator.remember_plan(job.uid, plan_id, plan)
        return active_plan(self.settings, job.dag, plan_id, plan, planned=job.fixed_plan is None)

    def _show_plan(self, job: Job, plan_id: int, plan: Plan) -> None:
        fps = (job.source_info or {}).get("fps")
        self.recent.set_plan(job.uid, LivePlan(tuple(job.dag.topological_order()), plan_id, plan, fps))

    def _stop_runner(self, job_uid: str) -> None:
        with self._runners_lock:
            runner = self.runners.pop(job_uid, None)
        if runner:
            runner.stop()

    def on_ack(self, job_uid: str, seq: int) -> None:
        with self._runners_lock:
            runner = self.runners.get(job_uid)
        if runner:
            runner.window.release(seq)

    # -- stats -----------------------------------------------------------------------------
    def on_tick(self) -> None:
        self.aggregator.expire()
        now = time.monotonic()
        if now - self._last_stats >= STATS_EVERY_S:
            self._last_stats = now
            for job_uid in self.aggregator.active_jobs():
                self.publish_stats(job_uid)

    def publish_stats(self, job_uid: str, stopped_cleanly: bool = False) -> None:
        stats = self.aggregator.stats(job_uid)
        if stats is None:
            return
        with self._runners_lock:
            runner = self.runners.get(job_uid)
        if runner and runner.generator:
            stats.update(runner.stats())
            stats["in_flight"] = len(runner.window)
            stats["window_expired"] = runner.window.expired
            stats["next_seq"] = runner.generator.seq  # where a restart continues (tracker.runtime.resume)
            stats["sent_ts"] = runner.generator.last_sent_ts
            stats["stopped_cleanly"] = stopped_cleanly
        try:
            self.store.update_stats(job_uid, stats)
        except Exception:
            log.debug("stats for %s not stored", job_uid, exc_info=True)

    # -- JobEffects (called by self.control) ------------------------------------------------
    def job_submitted(self, job: Job) -> str | None:
        if job.source_info is None:
            try:
                self.store.set_source_info(job.uid, probe_source(job.source))
            except SourceError as exc:
                return f"video source failed: {exc}"
        return None

    def plan_applied(self, job_uid: str, plan_id: int, plan: Plan, started: bool) -> None:
        if started:
            self.start_generator(job_uid)
            return
        job = self.store.get_job(job_uid)
        self._show_plan(job, plan_id, plan)
        with self._runners_lock:
            runner = self.runners.get(job_uid)
        if runner:
            runner.set_plan(self._active(job, plan_id, plan))
        else:
            self.aggregator.remember_plan(job_uid, plan_id, plan)

    def job_settling(self, job_uid: str) -> None:
        self.aggregator.flush(force=True)
        self.publish_stats(job_uid)

    def generator_paused(self, job_uid: str) -> None:
        self._stop_runner(job_uid)

    def job_stopped(self, job_uid: str) -> None:
        self._stop_runner(job_uid)
        self.publish_stats(job_uid)
        self.aggregator.forget(job_uid)
        self.recent.forget(job_uid)  # polls of an ended job read the store
        self.hub.close_job(job_uid)
        for observe in self.job_end_observers:
            observe(job_uid)

    def job_deleted(self, job_uid: str) -> None:
        self.recent.forget(job_uid)
        self.hub.forget_job(job_uid)

    def generator_restarted(self, job_uid: str, sent_before: int, first_seq: int) -> None:
        self.aggregator.reorder.generator_restarted(job_uid, (sent_before, first_seq))

    def replan(self, job_uid: str) -> None:
        if self.scheduler:
            self.scheduler.wake(job_uid)
