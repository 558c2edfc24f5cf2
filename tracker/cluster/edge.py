"""The edge agent: an edge node's tracker. It has no database and no scheduler.

It registers with the cloud over HTTP, heartbeats (resources + its generators' stats),
and every `poll_s` reconciles its generators against `GET /node/jobs?node=NAME`: it
starts a JobRunner for each EXEC job whose source it reads, applies plan changes at the
next frame, and stops generators of jobs that left EXEC. Frames go through the broker to
the first stage's node queue, results to the cloud's results queue, and acks come back
to `vdag.acks.<this node>`. A generator that ends reports DONE/FAILED to the cloud
(`POST /node/job_event`), retried until the cloud has it.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from celery import Celery

from scheduler.interface import Plan
from services.dag import DagSpec
from services.generator import ActivePlan
from services.settings import Settings
from services.sources import SourceError, probe_source
from tasks.app import make_celery
from tasks.consumers import AckListener
from tracker.cluster.heartbeat import HEARTBEAT_EVERY_S, HeartbeatSender, PeriodicLoop, node_resources
from tracker.runtime.generators import JobRunner, active_plan
from tracker.store.jobs import JobState

log = logging.getLogger(__name__)

POLL_EVERY_S = 0.5


class CloudUnavailable(RuntimeError):
    pass


class CloudClient:
    """The edge's HTTP view of the cloud tracker: /node/register, /node/heartbeat,
    /node/jobs, /node/job_event, /node/seq_reservation. Every call has a timeout."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 3.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kw) -> requests.Response:
        try:
            return self.session.request(method, self.base_url + path, timeout=self.timeout, **kw)
        except requests.RequestException as exc:
            raise CloudUnavailable(f"{method} {path}: {exc}") from None

    @staticmethod
    def _json(resp: requests.Response) -> dict:
        if resp.status_code >= 400:
            raise CloudUnavailable(f"{resp.request.method} {resp.url}: HTTP {resp.status_code} {resp.text[:300]}")
        return resp.json()

    def register(self, body: dict) -> dict:
        return self._json(self._call("POST", "/node/register", json=body))

    def heartbeat(self, name: str, resources: dict, jobs: dict[str, dict]) -> bool:
        """False when the cloud does not know this node (it must register again)."""
        resp = self._call("POST", "/node/heartbeat", json={"name": name, "resources": resources, "jobs": jobs})
        if resp.status_code == 404:
            return False
        self._json(resp)
        return True

    def jobs(self, node: str) -> dict:
        return self._json(self._call("GET", "/node/jobs", params={"node": node}))

    def reserve_seqs(self, node: str, job_uid: str, until: int, restarted: dict | None = None) -> None:
        """Raises CloudUnavailable unless the cloud recorded the reservation."""
        body = {"node": node, "job_uid": job_uid, "until": until, **({"restarted": restarted} if restarted else {})}
        self._json(self._call("POST", "/node/seq_reservation", json=body))

    def job_event(self, node: str, job_uid: str, state: str, reason: str) -> None:
        resp = self._call("POST", "/node/job_event",
                          json={"node": node, "job_uid": job_uid, "state": state, "reason": reason[:1000]})
        if resp.status_code in (404, 409):  # deleted meanwhile, or no longer ours: nothing to tell
            log.info("job_event for %s not recorded: %s", job_uid, resp.text[:200])
            return
        self._json(resp)


def local_ip_towards(host: str, port: int = 80) -> str:
    """The address this host uses to reach `host` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def describe_sources(sources: list[dict]) -> list[dict]:
    """Add width/height/fps to each video source we can open now, so the cloud can plan
    for a source it cannot open itself."""
    out = []
    for src in sources:
        entry = dict(src)
        if not {"width", "height", "fps"} <= entry.keys():
            try:
                info = probe_source(entry["url"])
                entry.update({k: info[k] for k in ("width", "height", "fps") if info.get(k)})
            except (SourceError, Exception) as exc:  # a camera that is off now is still offered
                log.info("video source %s not probed: %s", entry.get("url"), exc)
        out.append(entry)
    return out


@dataclass
class _Event:
    job_uid: str
    state: str
    reason: str


class EdgeAgent:
    def __init__(self, settings: Settings, client: CloudClient, *, advertise_ip: str, video_sources: list[dict],
                 services: list[str] | None = None, pace: float = 1.0, backpressure: str = "drop",
                 poll_s: float = POLL_EVERY_S, heartbeat_s: float = HEARTBEAT_EVERY_S, check_gpu: bool = True) -> None:
        self.settings = settings
        self.client = client
        self.advertise_ip = advertise_ip
        self.video_sources = video_sources
        self.services = services or []
        self.pace, self.backpressure = pace, backpressure
        self.poll_s, self.heartbeat_s = poll_s, heartbeat_s
        self.check_gpu = check_gpu
        self.celery: Celery | None = None
        self.results_queue: str | None = None
        self.runners: dict[str, JobRunner] = {}
        self.ended: set[str] = set()  # ended here, the cloud may not know yet
        self._events: list[_Event] = []
        self._lock = threading.Lock()
        self.stop_event = threading.Event()
        self.ack_listener: AckListener | None = None
        self.heartbeat: HeartbeatSender | None = None
        self.reconciler: PeriodicLoop | None = None

    @property
    def node(self) -> str:
        return self.settings.node

    @property
    def address(self) -> str:
        return f"{self.advertise_ip}:{self.settings.api_port}"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, register_timeout_s: float | None = None) -> "EdgeAgent":
        self.start_celery()
        self.register(timeout_s=register_timeout_s)
        self.start_ack_listener()
        self.start_heartbeat()
        self.start_reconciler()
        log.info("edge %s up (cloud %s, address %s)", self.node, self.client.base_url, self.address)
        return self

    def start_celery(self) -> None:
        self.celery = make_celery(self.settings)

    def register(self, timeout_s: float | None = None) -> None:
        """Register, retrying every 2 s until the cloud answers (or timeout_s passes)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        attempts = 0
        while not self.stop_event.is_set():
            try:
                answer = self.client.register({
                    "name": self.node, "role": "edge", "ip": self.advertise_ip, "address": self.address,
                    "video_sources": self.video_sources, "services": self.services,
                    "resources": node_resources(self.check_gpu),
                })
                self.results_queue = answer.get("results_queue") or self.results_queue
                log.info("registered with the cloud at %s as %s", self.client.base_url, self.node)
                return
            except CloudUnavailable as exc:
                attempts += 1
                if attempts == 1 or attempts % 15 == 0:
                    log.warning("cannot register with the cloud yet (%s); retrying", exc)
                if deadline is not None and time.monotonic() > deadline:
                    raise
                self.stop_event.wait(2.0)

    def start_ack_listener(self) -> None:
        self.ack_listener = AckListener(self.celery, self.node, self.on_ack)
        self.ack_listener.start()
        self.ack_listener.ready.wait(10)

    def start_heartbeat(self) -> None:
        self.heartbeat = HeartbeatSender(self._send_heartbeat, self.register, self.heartbeat_s, self.check_gpu)
        self.heartbeat.start()

    def start_reconciler(self) -> None:
        agent = self

        class Reconciler(PeriodicLoop):
            def tick(self) -> None:
                agent.reconcile()

        self.reconciler = Reconciler("vdag-edge-reconcile", self.poll_s)
        self.reconciler.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.reconciler:
            self.reconciler.stop()
            log.info("reconciler stopped")
        with self._lock:
            runners, self.runners = list(self.runners.values()), {}
        for runner in runners:
            runner.stop()
        log.info("generators stopped")
        if self.heartbeat:
            self.heartbeat.stop()
            log.info("heartbeat stopped")
        if self.ack_listener:
            self.ack_listener.stop()
        self._flush_events()

    # -- heartbeat and acks ----------------------------------------------------------------
    def generator_stats(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            runners = list(self.runners.values())
        out = {}
        for r in runners:
            if r.generator is not None:
                out[r.job_uid] = {**r.stats(), "in_flight": len(r.window), "window_expired": r.window.expired,
                                  "next_seq": r.generator.seq, "sent_ts": r.generator.last_sent_ts,
                                  "stopped_cleanly": False}
        return out

    def _send_heartbeat(self, resources: dict) -> bool:
        resources = {**resources, "generators": len(self.runners)}
        return self.client.heartbeat(self.node, resources, self.generator_stats())

    def on_ack(self, job_uid: str, seq: int) -> None:
        with self._lock:
            runner = self.runners.get(job_uid)
        if runner:
            runner.window.release(seq)

    # -- reconciling -----------------------------------------------------------------------
    def reconcile(self) -> None:
        self._flush_events()
        try:
            answer = self.client.jobs(self.node)
        except CloudUnavailable as exc:
            log.debug("job poll failed: %s", exc)
            return
        self.results_queue = answer.get("results_queue") or self.results_queue
        wanted = {j["uid"]: j for j in answer.get("jobs", [])}
        to_stop: list[JobRunner] = []
        with self._lock:
            self.ended &= set(wanted)  # the cloud recorded the end: forget it
            for uid in [u for u in self.runners if u not in wanted]:
                to_stop.append(self.runners.pop(uid))
        for runner in to_stop:
            log.info("job %s no longer runs here: generator stopped", runner.job_uid)
            runner.stop()
        for uid, spec in wanted.items():
            try:
                self._apply(uid, spec)
            except Exception:
                log.exception("could not apply job %s", uid)

    def _apply(self, uid: str, spec: dict) -> None:
        with self._lock:
            if uid in self.ended:
                return
            runner = self.runners.get(uid)
        dag = runner.dag if runner else DagSpec.model_validate(spec["dag"])
        if runner is not None:
            if runner.active.plan_id != spec["plan_id"]:
                runner.set_plan(self._active(dag, spec))
                log.info("job %s: plan %s applied", uid, spec["plan_id"])
            return
        runner = JobRunner(self.settings, self.celery, uid, dag, spec["source"], self._active(dag, spec),
                           int(spec.get("first_seq", 0)), float(spec.get("start_ts", 0.0)), self.pace,
                           self.backpressure, on_end=self._on_end, results_queue=self.results_queue,
                           counters={k: v for k, v in (spec.get("counters") or {}).items() if isinstance(v, int)},
                           record_reservation=self._reservation_recorder(uid, spec))
        with self._lock:
            self.runners[uid] = runner
        runner.start()
        log.info("job %s: generator started on %s (plan %s, from seq %s)", uid, self.node, spec["plan_id"],
                 spec.get("first_seq", 0))

    def _reservation_recorder(self, uid: str, spec: dict):
        """Records the generator's sequence numbers on the cloud; the first call also tells it
        where this generator started, so it stops waiting for numbers never sent."""
        first_seq = int(spec.get("first_seq", 0))
        restarted = {"sent_before": int(spec.get("sent_before", first_seq)), "first_seq": first_seq}

        def record(until: int) -> None:
            nonlocal restarted
            self.client.reserve_seqs(self.node, uid, until, restarted)
            restarted = None

        return record

    def _active(self, dag: DagSpec, spec: dict) -> ActivePlan:
        return active_plan(self.settings, dag, int(spec["plan_id"]), Plan.model_validate(spec["plan"]),
                           planned=bool(spec.get("planned", True)))

    def _on_end(self, job_uid: str, state: JobState, reason: str) -> None:
        """A generator thread ended by itself (end of file, source failure)."""
        with self._lock:
            self.ended.add(job_uid)
            self.runners.pop(job_uid, None)
            self._events.append(_Event(job_uid, state.value, reason))
        log.info("job %s %s on %s: %s", job_uid, state.value, self.node, reason)
        self._flush_events()

    def _flush_events(self) -> None:
        with self._lock:
            events, self._events = self._events, []
        failed = []
        for ev in events:
            try:
                self.client.job_event(self.node, ev.job_uid, ev.state, ev.reason)
            except CloudUnavailable as exc:
                log.warning("could not tell the cloud that %s is %s (%s); will retry", ev.job_uid, ev.state, exc)
                failed.append(ev)
        if failed:
            with self._lock:
                self._events[:0] = failed
