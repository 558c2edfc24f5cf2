"""A tracker process assembled from its parts, started and stopped in a written-out order.

Used by `vdag up` (embedded: SQLite + in-process broker and worker), `vdag tracker`
(cloud/edge) and the integration tests, so all of them run the same code path.
"""
from __future__ import annotations

import logging
from pathlib import Path

from services.settings import Settings
from tasks.app import make_celery
from tasks.queues import service_reply_queue_name
from tasks.service_call import ServiceCaller
from tasks.worker import InProcessWorker
from tracker.cluster.elasticity import EXTENSION as ELASTICITY
from tracker.cluster.elasticity import ElasticityController, ElasticPolicy
from tracker.cluster.heartbeat import NODE_TIMEOUT_S, NodeUpkeep
from tracker.cluster.nodes import register_local_node
from tracker.runtime.runtime import Runtime
from tracker.store import Store
from tracker.store.db import is_sqlite, is_sqlite_memory
from tracker.web.app import create_app
from tracker.web.front.process import ApiFront
from tracker.web.http_server import HttpServer
from tracker.web.metrics import EXTENSION as METRICS
from tracker.web.metrics import ClusterMetrics
from tracker.web.service_api import ServiceApi, create_service_app
from tracker.web.viewer.hub import ViewerHub

log = logging.getLogger(__name__)


class TrackerServer:
    def __init__(self, settings: Settings, *, in_process_workers: int = 0, planner_factory=None,
                 pace: float = 1.0, backpressure: str = "drop", host: str = "127.0.0.1",
                 serve_http: bool = True, scheduler_interval_s: float | None = 2.0,
                 node_timeout_s: float | None = NODE_TIMEOUT_S, elasticity: ElasticPolicy | None = None) -> None:
        self.settings = settings
        self.in_process_workers = in_process_workers
        self.planner_factory = planner_factory
        self.pace, self.backpressure = pace, backpressure
        self.host = host
        self.serve_http = serve_http
        self.scheduler_interval_s = scheduler_interval_s
        self.node_timeout_s = node_timeout_s  # None: no node upkeep (no stale marking)
        self.elastic_policy = elasticity  # None: worker pools keep their size
        self.upkeep: NodeUpkeep | None = None
        self.metrics: ClusterMetrics | None = None
        self.elasticity: ElasticityController | None = None
        self.store: Store | None = None
        self.celery = None
        self.worker: InProcessWorker | None = None
        # Polls and streams get a process of their own (tracker.web.front) unless told otherwise
        # or the store is an in-memory SQLite that a second process cannot open.
        url = settings.database_url
        self.front = (ApiFront(settings, host) if serve_http and settings.api_process
                      and not (is_sqlite(url) and is_sqlite_memory(url)) else None)
        self.hub = self.front.hub if self.front else ViewerHub()
        self.runtime: Runtime | None = None
        self.app = None
        self.service_caller: ServiceCaller | None = None
        self.service_app = None
        self.servers: list[HttpServer] = []

    def start(self) -> "TrackerServer":
        self.start_store()
        self.start_celery()
        self.start_runtime()
        self.start_app()
        self.start_service_api()
        self.start_metrics()
        self.start_upkeep()
        self.start_elasticity()
        log.info("tracker %s (%s, %s) up", self.settings.node, self.settings.side, self.settings.mode)
        return self

    def start_store(self) -> None:
        if self.settings.database_url.startswith("sqlite:///"):
            Path(self.settings.database_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.settings.database_url)
        register_local_node(self.store, self.settings)

    def start_celery(self) -> None:
        self.celery = make_celery(self.settings)
        if self.in_process_workers:
            self.worker = InProcessWorker(self.celery, self.settings.node, self.in_process_workers).start()

    def start_runtime(self) -> None:
        self.runtime = Runtime(self.settings, self.store, self.hub, self.celery, planner=self.planner_factory,
                               pace=self.pace, backpressure=self.backpressure,
                               scheduler_interval_s=self.scheduler_interval_s,
                               recent=self.front.recent if self.front else None)
        self.runtime.start()

    def start_app(self) -> None:
        self.app = create_app(self.settings, store=self.store, control=self.runtime.control, hub=self.hub,
                              recent=self.runtime.recent)
        if not self.serve_http:
            return
        if self.front:
            # The core's own server, for what the front forwards; the front owns the public ports.
            core = HttpServer(self.app, "127.0.0.1", 0, "vdag-http-core")
            self.servers.append(core)
            core.start()
            self.front.start(f"http://127.0.0.1:{core.port}")
            return
        api = HttpServer(self.app, self.host, self.settings.api_port, "vdag-http-api")
        self.servers.append(api)
        if self.settings.video_port != self.settings.api_port:
            self.servers.append(HttpServer(self.app, self.host, self.settings.video_port, "vdag-http-video"))
        for server in self.servers:
            server.start()
        log.info("API on http://%s:%d, video on port %d", self.host, api.port, self.settings.video_port)

    def start_service_api(self) -> None:
        """The seed's :5500 service API; its calls run on workers through a reply queue of this tracker."""
        self.service_caller = ServiceCaller(self.celery, service_reply_queue_name(self.settings.node)).start()
        self.service_app = create_service_app(ServiceApi(self.settings, self.store, self.service_caller))
        if not self.serve_http:
            return
        server = HttpServer(self.service_app, self.host, self.settings.service_port, "vdag-http-service")
        self.servers.append(server)
        server.start()
        log.info("service API on port %d", server.port)

    def _url(self, name: str) -> str:
        server = next((s for s in self.servers if s.thread.name == name), None)
        return f"http://{self.host}:{server.port}" if server else ""

    @property
    def service_url(self) -> str:
        return self._url("vdag-http-service")

    @property
    def video_url(self) -> str:
        """Where /user/video/<job_uid> is served (the API's own port when they are the same)."""
        if self.front and self.front.ports:
            return f"http://{self.host}:{self.front.ports.video}"
        return self._url("vdag-http-video") or self.api_url

    def start_metrics(self) -> None:
        self.metrics = self.app.extensions[METRICS]
        self.runtime.record_observers.append(self.metrics.observe)
        self.runtime.job_end_observers.append(self.metrics.forget_job)
        self.metrics.start_sampler(self.celery)

    def start_upkeep(self) -> None:
        if self.node_timeout_s is None:
            return
        self.upkeep = NodeUpkeep(self.settings, self.runtime.control, node_timeout_s=self.node_timeout_s)
        self.upkeep.start()
        log.info("node upkeep started (nodes down after %.1f s without a heartbeat)", self.node_timeout_s)

    def start_elasticity(self) -> None:
        if self.elastic_policy is None:
            return
        self.elasticity = ElasticityController(self.celery, self.store, self.metrics, self.elastic_policy)
        self.metrics.elasticity = self.elasticity
        self.app.extensions[ELASTICITY] = self.elasticity
        self.elasticity.start()
        log.info("elasticity controller started")

    @property
    def api_url(self) -> str:
        if self.front and self.front.ports:
            return f"http://{self.host}:{self.front.ports.api}"
        return f"http://{self.host}:{self.servers[0].port}" if self.servers else ""

    @property
    def core_url(self) -> str:
        """The core's own HTTP server (the API itself when there is no front)."""
        return self._url("vdag-http-core") or self.api_url

    def stop(self) -> None:
        if self.front:
            self.front.stop()  # its streams end and it stops forwarding before the core goes
        self.hub.close()  # ends every viewer's stream, so that the request threads can finish
        for server in reversed(self.servers):
            server.stop()
        log.info("http servers stopped")
        if self.service_caller:
            self.service_caller.stop()
        if self.elasticity:
            self.elasticity.stop()
            log.info("elasticity controller stopped")
        if self.upkeep:
            self.upkeep.stop()
            log.info("node upkeep stopped")
        if self.metrics:
            self.metrics.stop()
            log.info("metrics sampler stopped")
        try:
            if self.runtime:
                self.runtime.stop()
                log.info("runtime stopped")
        finally:  # a worker left running would take the next server's frames (one broker per process)
            if self.worker:
                self.worker.stop()
            if self.store:
                self.store.close()
                log.info("store closed")
