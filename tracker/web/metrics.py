"""Prometheus `/metrics` for the cloud tracker: per job, per node, per queue.

- Histograms of per-stage service time and queue wait, and of end-to-end frame latency,
  fed by the aggregator (Runtime.record_observers) as frames are stored.
- Infer fps (frames stored per second), drop fps (frames the generator dropped per
  second) and send fps per job, computed over a sliding window by the sampler thread
  from the job stats in the store (an edge's generator stats arrive with its heartbeat).
- Queue depth and consumer count of every node queue and of the results queue, asked of
  the broker (passive `queue_declare`: it never creates a queue).
- Node liveness and resources from the registrations and heartbeats.

Each app has its own CollectorRegistry, so several trackers in one process (tests) do
not collide.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from services.records import FrameRecord
from tasks.queues import node_queue_name
from tracker.cluster.heartbeat import PeriodicLoop

if TYPE_CHECKING:
    from celery import Celery

    from services.settings import Settings
    from tracker.store import Store

log = logging.getLogger(__name__)

EXTENSION = "vdag.metrics"
RATE_WINDOW_S = 5.0
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
bp = Blueprint("metrics", __name__)


def init_app(app: Flask) -> None:
    ctx = app.extensions["vdag"]
    app.extensions[EXTENSION] = ClusterMetrics(ctx.store, ctx.settings)
    app.register_blueprint(bp)


@bp.get("/metrics")
def metrics_route():
    registry = current_app.extensions[EXTENSION].registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class _Rate:
    """Rate of a monotonically growing counter over the last RATE_WINDOW_S seconds."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=64)

    def add(self, t: float, value: float) -> None:
        if self.samples and value < self.samples[-1][1]:
            self.samples.clear()  # counter reset (generator restarted)
        self.samples.append((t, value))
        while len(self.samples) > 2 and t - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()

    def value(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0


class ClusterMetrics:
    def __init__(self, store: "Store", settings: "Settings") -> None:
        self.store = store
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=False)
        labels = ["job", "stage", "node"]
        self.stage_latency = Histogram("vdag_stage_latency_seconds", "Time inside a stage's DNN service",
                                       labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_queue = Histogram("vdag_stage_queue_seconds", "Time a frame waited in a stage's node queue",
                                     labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.frame_latency = Histogram("vdag_frame_latency_seconds", "Capture-to-result latency of a frame",
                                       ["job", "node"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_frames = Counter("vdag_stage_frames", "Frames a node processed for a stage",
                                    ["stage", "node"], registry=self.registry)
        self.registry.register(_Collector(self))
        self._lock = threading.Lock()
        self._job_node: dict[str, str] = {}
        self._job_series: dict[str, set[tuple[str, str]]] = defaultdict(set)  # job -> (stage, node) labelled
        self._node_frames: dict[str, int] = defaultdict(int)  # processed stage runs per node
        self._waits: dict[str, deque[tuple[float, float, float]]] = defaultdict(lambda: deque(maxlen=2000))
        self.job_rates: dict[str, dict[str, _Rate]] = defaultdict(lambda: defaultdict(_Rate))
        self.node_rates: dict[str, _Rate] = defaultdict(_Rate)
        self.queue_depths: dict[str, tuple[int, int]] = {}  # queue -> (messages, consumers)
        self.queue_node: dict[str, str] = {}
        self.sampler: QueueSampler | None = None
        self.elasticity = None  # tracker.cluster.elasticity.ElasticityController, when running

    # -- fed by the aggregator -------------------------------------------------------------
    def job_node(self, job_uid: str) -> str:
        node = self._job_node.get(job_uid)
        if node is None:
            job = self.store.find_job(job_uid)
            node = job.node if job else "?"
            self._job_node[job_uid] = node
        return node

    def observe(self, job_uid: str, records: list[FrameRecord]) -> None:
        source_node = self.job_node(job_uid)
        now = time.time()
        with self._lock:
            for r in records:
                if r.lost:
                    continue
                self.frame_latency.labels(job_uid, source_node).observe(max(r.latency_s, 0.0))
                for s in r.stages:
                    self._job_series[job_uid].add((s.stage, s.node))
                    self.stage_latency.labels(job_uid, s.stage, s.node).observe(max(s.service_s, 0.0))
                    self.stage_queue.labels(job_uid, s.stage, s.node).observe(max(s.queue_s, 0.0))
                    self.stage_frames.labels(s.stage, s.node).inc()
                    self._node_frames[s.node] += 1
                    self._waits[s.node].append((now, s.queue_s, s.service_s))

    def forget_job(self, job_uid: str) -> None:
        """A job ended: drop its labelled series and rates (jobs come and go; nodes stay)."""
        with self._lock:
            node = self._job_node.pop(job_uid, None)
            series = self._job_series.pop(job_uid, set())
            self.job_rates.pop(job_uid, None)
        for stage, stage_node in series:
            for hist in (self.stage_latency, self.stage_queue):
                try:
                    hist.remove(job_uid, stage, stage_node)
                except KeyError:
                    pass
        if node is not None:
            try:
                self.frame_latency.remove(job_uid, node)
            except KeyError:
                pass

    def tracked_jobs(self) -> int:
        with self._lock:
            return len(set(self._job_node) | set(self._job_series) | set(self.job_rates))

    def node_waits(self, node: str, window_s: float = 10.0) -> tuple[list[float], list[float]]:
        """(queue waits, service times) of the node's stage runs stored in the last window."""
        cutoff = time.time() - window_s
        with self._lock:
            recent = [(q, sv) for t, q, sv in self._waits.get(node, ()) if t >= cutoff]
        return [q for q, _ in recent], [sv for _, sv in recent]

    def node_queue_depth(self, node: str) -> int | None:
        depth = self.queue_depths.get(node_queue_name(node))
        return depth[0] if depth else None

    # -- sampled ------------------------------------------------------------------------------
    def sample_jobs(self) -> None:
        now = time.monotonic()
        for job in self.store.active_jobs():
            stats = job.stats or {}
            rates = self.job_rates[job.uid]
            for key in ("frames_out", "frames_dropped", "frames_sent"):
                if isinstance(stats.get(key), (int, float)):
                    rates[key].add(now, float(stats[key]))
        with self._lock:
            counts = dict(self._node_frames)
        for node, n in counts.items():
            self.node_rates[node].add(now, float(n))

    def start_sampler(self, celery: "Celery", interval_s: float = 1.0) -> "QueueSampler":
        self.sampler = QueueSampler(self, celery, interval_s)
        self.sampler.start()
        return self.sampler

    def stop(self) -> None:
        if self.sampler:
            self.sampler.stop()


class QueueSampler(PeriodicLoop):
    """Every interval: the depth of each registered node's queue and the results queue
    (passive declare, so nothing is created), and the job/node rate samples."""

    def __init__(self, metrics: ClusterMetrics, celery: "Celery", interval_s: float = 1.0) -> None:
        super().__init__("vdag-metrics-sampler", interval_s)
        self.metrics = metrics
        self.celery = celery
        self._conn = None

    def queues(self) -> dict[str, str]:
        out = {node_queue_name(n.name): n.name for n in self.metrics.store.list_nodes()}
        out[self.metrics.settings.results_queue] = self.metrics.settings.node
        return out

    def tick(self) -> None:
        self.metrics.sample_jobs()
        queues = self.queues()
        depths: dict[str, tuple[int, int]] = {}
        try:
            if self._conn is None:
                self._conn = self.celery.connection_for_read()
                self._conn.ensure_connection(max_retries=1)
            for name in queues:
                depth = self._declare(name)
                if depth is not None:
                    depths[name] = depth
        except Exception as exc:
            log.warning("queue depth sampling failed: %s", exc)
            self._close()
            return
        self.metrics.queue_depths = depths
        self.metrics.queue_node = queues

    def _declare(self, name: str) -> tuple[int, int] | None:
        channel = self._conn.channel()
        try:
            ok = channel.queue_declare(queue=name, passive=True)
            return int(ok.message_count), int(ok.consumer_count)
        except self._conn.channel_errors:
            return None  # the queue does not exist (yet): no worker nor frame has declared it
        finally:
            try:
                channel.close()
            except Exception:
                pass

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.release()
            except Exception:
                pass
            self._conn = None

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._close()


class _Collector:
    """Metrics computed at scrape time from the store and the sampler."""

    def __init__(self, metrics: ClusterMetrics) -> None:
        self.m = metrics

    def describe(self):
        return []

    def collect(self):
        m = self.m
        job_gauges = {
            "infer_fps": GaugeMetricFamily("vdag_job_infer_fps", "Frames stored per second (5 s window)",
                                           labels=["job", "node"]),
            "drop_fps": GaugeMetricFamily("vdag_job_drop_fps", "Frames the generator dropped per second",
                                          labels=["job", "node"]),
            "send_fps": GaugeMetricFamily("vdag_job_send_fps", "Frames the generator sent per second",
                                          labels=["job", "node"]),
            "in_flight": GaugeMetricFamily("vdag_job_in_flight", "Frames sent and not yet settled",
                                           labels=["job", "node"]),
        }
        job_counters = {
            key: CounterMetricFamily(f"vdag_job_{key}", help_, labels=["job", "node"])
            for key, help_ in (("frames_out", "Frames stored"), ("frames_dropped", "Frames dropped at the source"),
                               ("frames_lost", "Frames declared lost by the aggregator"),
                               ("slo_violations", "Frames whose latency exceeded the job's delay constraint"))
        }
        node_slo: dict[str, float] = defaultdict(float)
        node_drop: dict[str, float] = defaultdict(float)
        try:
            jobs = m.store.active_jobs()
        except Exception:
            log.exception("metrics: could not list jobs")
            jobs = []
        for job in jobs:
            stats, labels = job.stats or {}, [job.uid, job.node]
            rates = m.job_rates.get(job.uid)
            infer = rates["frames_out"].value() if rates else float(stats.get("fps_out") or 0.0)
            drop = rates["frames_dropped"].value() if rates else 0.0
            job_gauges["infer_fps"].add_metric(labels, infer)
            job_gauges["drop_fps"].add_metric(labels, drop)
            job_gauges["send_fps"].add_metric(labels, rates["frames_sent"].value() if rates else 0.0)
            job_gauges["in_flight"].add_metric(labels, float(stats.get("in_flight") or 0))
            for key, fam in job_counters.items():
                fam.add_metric(labels, float(stats.get(key) or 0))
            node_slo[job.node] += float(stats.get("slo_violations") or 0)
            node_drop[job.node] += drop
        yield from job_gauges.values()
        yield from job_counters.values()

        up = GaugeMetricFamily("vdag_node_up", "1 while the node heartbeats", labels=["node", "role"])
        cpu = GaugeMetricFamily("vdag_node_cpu_ratio", "CPU utilisation 0..1", labels=["node"])
        mem = GaugeMetricFamily("vdag_node_mem_ratio", "Memory utilisation 0..1", labels=["node"])
        gpu = GaugeMetricFamily("vdag_node_gpu", "1 if the node has a CUDA GPU", labels=["node"])
        infer = GaugeMetricFamily("vdag_node_infer_fps", "Stage runs per second on the node", labels=["node"])
        drop = GaugeMetricFamily("vdag_node_drop_fps", "Frames dropped per second by the node's generators",
                                 labels=["node"])
        slo = CounterMetricFamily("vdag_node_slo_violations", "SLO violations of the jobs the node reads",
                                  labels=["node"])
        conc = GaugeMetricFamily("vdag_node_worker_concurrency", "Worker pool processes serving the node's queue",
                                 labels=["node"])
        try:
            nodes = m.store.list_nodes()
        except Exception:
            nodes = []
        elastic = m.elasticity.snapshot() if m.elasticity is not None else {}
        for n in nodes:
            up.add_metric([n.name, n.role], 1.0 if n.alive else 0.0)
            cpu.add_metric([n.name], n.cpu_ratio)
            mem.add_metric([n.name], n.mem_ratio)
            gpu.add_metric([n.name], 1.0 if n.gpu else 0.0)
            rate = m.node_rates.get(n.name)
            infer.add_metric([n.name], rate.value() if rate else 0.0)
            drop.add_metric([n.name], node_drop.get(n.name, 0.0))
            slo.add_metric([n.name], node_slo.get(n.name, 0.0))
            if n.name in elastic and elastic[n.name].get("concurrency") is not None:
                conc.add_metric([n.name], float(elastic[n.name]["concurrency"]))
        yield from (up, cpu, mem, gpu, infer, drop, slo, conc)

        depth = GaugeMetricFamily("vdag_queue_depth", "Messages ready in the queue (broker's count)",
                                  labels=["queue", "node"])
        consumers = GaugeMetricFamily("vdag_queue_consumers", "Consumers of the queue", labels=["queue", "node"])
        for queue, (messages, n_consumers) in sorted(m.queue_depths.items()):
            node = m.queue_node.get(queue, "")
            depth.add_metric([queue, node], float(messages))
            consumers.add_metric([queue, node], float(n_consumers))
        yield depth
        yield consumers
