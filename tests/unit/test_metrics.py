"""/metrics on a real store (SQLite) and a real Flask app, without a broker: histograms fed
like the aggregator feeds them, job and node figures from the store, rates from samples."""
from __future__ import annotations

import re

from services.dag import DagSpec
from services.records import FrameRecord, StageRecord
from tests.support.pipeline import settings_for
from tracker.store import Store
from tracker.store.jobs import JobState
from tracker.web.app import create_app
from tracker.web.metrics import EXTENSION, _Rate


def metric(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line[line.index("{"):line.index("}")]))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


def _frame(uid: str, seq: int, latency: float, lost: bool = False) -> FrameRecord:
    stages = [] if lost else [StageRecord("detect", "edge-1", "edge-1/h/1", 0.01, 0.04),
                              StageRecord("count", "cloud", "cloud/h/2", 0.002, 0.001)]
    return FrameRecord(uid, seq, 1, seq / 10, 640, 360, latency, {}, stages, lost=lost)


def test_metrics_from_store_and_observed_frames(tmp_path):
    settings = settings_for(tmp_path, "memory://", node="cloud")
    store = Store(settings.database_url)
    store.upsert_node("cloud", "cloud", "127.0.0.1", "127.0.0.1:5000", resources={"cpu_ratio": 0.25, "gpu": True})
    store.upsert_node("edge-1", "edge", "10.0.0.2", "10.0.0.2:5001", resources={"mem_ratio": 0.5})
    dag = DagSpec(generator="SingleFrameGenerator", stages=[
        {"name": "detect", "service": "frame_probe", "inputs": {"image": "generator.image"}}])
    job = store.create_job(dag=dag, source="synthetic://320x180@10/10", node="edge-1")
    store.transition(job.uid, JobState.EXEC, "test")
    store.update_stats(job.uid, {"frames_out": 40, "frames_dropped": 3, "frames_lost": 1, "slo_violations": 2,
                                 "in_flight": 5, "fps_out": 7.5})
    app = create_app(settings, store=store)
    m = app.extensions[EXTENSION]
    m.observe(job.uid, [_frame(job.uid, 0, 0.2), _frame(job.uid, 1, 0.7), _frame(job.uid, 2, 0, lost=True)])
    m.queue_depths = {"vdag.node.edge-1": (17, 1)}
    m.queue_node = {"vdag.node.edge-1": "edge-1"}

    text = app.test_client().get("/metrics").get_data(as_text=True)
    labels = {"job": job.uid, "node": "edge-1"}
    assert metric(text, "vdag_frame_latency_seconds_count", **labels) == 2.0  # the lost frame is not a latency
    assert metric(text, "vdag_frame_latency_seconds_bucket", le="0.25", **labels) == 1.0
    assert metric(text, "vdag_stage_latency_seconds_count", job=job.uid, stage="detect", node="edge-1") == 2.0
    assert metric(text, "vdag_stage_latency_seconds_sum", job=job.uid, stage="detect", node="edge-1") == 0.08
    assert metric(text, "vdag_stage_queue_seconds_count", job=job.uid, stage="count", node="cloud") == 2.0
    assert metric(text, "vdag_stage_frames_total", stage="detect", node="edge-1") == 2.0
    # No sampler ran: infer fps falls back to the aggregator's own 5 s figure.
    assert metric(text, "vdag_job_infer_fps", **labels) == 7.5
    assert metric(text, "vdag_job_frames_dropped_total", **labels) == 3.0
    assert metric(text, "vdag_job_slo_violations_total", **labels) == 2.0
    assert metric(text, "vdag_job_in_flight", **labels) == 5.0
    assert metric(text, "vdag_node_slo_violations_total", node="edge-1") == 2.0
    assert metric(text, "vdag_node_up", node="edge-1", role="edge") == 1.0
    assert metric(text, "vdag_node_cpu_ratio", node="cloud") == 0.25
    assert metric(text, "vdag_node_gpu", node="cloud") == 1.0
    assert metric(text, "vdag_queue_depth", queue="vdag.node.edge-1", node="edge-1") == 17.0
    assert metric(text, "vdag_queue_consumers", queue="vdag.node.edge-1") == 1.0
    assert m.node_queue_depth("edge-1") == 17 and m.node_queue_depth("cloud") is None
    waits, service = m.node_waits("edge-1")
    assert waits == [0.01, 0.01] and service == [0.04, 0.04]

    # Sampled rates: 30 more frames out and 6 more dropped over 2 s.
    import time

    t0 = time.monotonic()
    m.job_rates[job.uid]["frames_out"].add(t0, 40)
    m.job_rates[job.uid]["frames_out"].add(t0 + 2, 70)
    m.job_rates[job.uid]["frames_dropped"].add(t0, 3)
    m.job_rates[job.uid]["frames_dropped"].add(t0 + 2, 9)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert metric(text, "vdag_job_infer_fps", **labels) == 15.0
    assert metric(text, "vdag_job_drop_fps", **labels) == 3.0
    assert metric(text, "vdag_node_drop_fps", node="edge-1") == 3.0

    # Ended jobs leave the gauges.
    store.transition(job.uid, JobState.CANCELLED, "test")
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert metric(text, "vdag_job_infer_fps", job=job.uid) is None
    store.close()


def test_rate_window_and_counter_reset():
    r = _Rate()
    assert r.value() == 0.0
    for t in range(0, 11):
        r.add(float(t), 10.0 * t)  # 10/s
    assert r.value() == 10.0
    assert r.samples[-1][0] - r.samples[0][0] <= 6.0  # only the last ~5 s are kept
    r.add(12.0, 5.0)  # the generator restarted
    assert r.value() == 0.0
    r.add(13.0, 8.0)
    assert r.value() == 3.0


def test_elasticity_route_when_disabled(tmp_path):
    app = create_app(settings_for(tmp_path, "memory://"))
    body = app.test_client().get("/api/v1/elasticity").get_json()
    assert body == {"enabled": False, "nodes": {}, "history": []}
