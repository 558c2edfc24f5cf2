"""Elasticity: the decision policy as a pure function, then one real grow of a real
`vdag worker` pool through Celery remote control, driven by a real backlog on RabbitMQ."""
from __future__ import annotations

import time
import uuid

import pytest

from tracker.cluster.elasticity import Decision, ElasticPolicy, Hysteresis, NodeLoad, decide, p90

POLICY = ElasticPolicy(min_concurrency=1, max_concurrency=3, grow_backlog_per_process=4, grow_wait_s=0.5,
                       shrink_wait_s=0.05, grow_after=2, shrink_after=3, cooldown_s=10.0)


def run(loads: list[NodeLoad], policy: ElasticPolicy = POLICY, start: float = 100.0, step: float = 2.0,
        state: Hysteresis | None = None) -> list[Decision]:
    state = state or Hysteresis()
    return [decide(load, state, policy, start + i * step) for i, load in enumerate(loads)]


def load(conc=1, depth=0, wait=None) -> NodeLoad:
    return NodeLoad("n1", conc, depth, wait)


def test_grows_only_after_consecutive_hot_ticks():
    out = run([load(depth=10), load(depth=10)])
    assert [d.action for d in out] == ["hold", "grow"]
    assert out[1].target == 2
    assert "queue depth >= 4" in out[1].reason and "1 -> 2" in out[1].reason
    assert "1/2 ticks" in out[0].reason


def test_a_tick_inside_the_band_resets_the_count():
    # depth 2 (< 4 per process) with a 0.2 s wait: neither hot nor idle.
    out = run([load(depth=10), load(depth=2, wait=0.2), load(depth=10), load(depth=10)])
    assert [d.action for d in out] == ["hold", "hold", "hold", "grow"]
    assert out[1].reason.startswith("within the band")


def test_slow_queue_wait_alone_is_hot():
    out = run([load(depth=1, wait=0.9), load(depth=1, wait=0.8)])
    assert out[1].action == "grow" and "p90 wait >= 0.5s" in out[1].reason


def test_backlog_scales_with_pool_size():
    # 10 ready messages are a backlog for 1 process (limit 4) but not for 3 (limit 12).
    assert run([load(conc=3, depth=10)] * 3)[-1].action == "hold"


def test_cooldown_and_max_bound_growth():
    state = Hysteresis()
    out = run([load(depth=50)] * 4, step=1.0, state=state)
    assert [d.action for d in out] == ["hold", "grow", "hold", "hold"]
    assert "cooling down" in out[3].reason
    later = decide(load(conc=3, depth=50), state, POLICY, 200.0)
    assert later.action == "hold" and "at max 3" in later.reason


def test_shrinks_slower_than_it_grows_and_not_below_min():
    out = run([load(conc=2, depth=0, wait=0.01)] * 3)
    assert [d.action for d in out] == ["hold", "hold", "shrink"]
    assert out[-1].target == 1 and "empty queue" in out[-1].reason
    assert all(d.action == "hold" for d in run([load(conc=1, depth=0)] * 5))


def test_unknown_depth_is_not_a_backlog():
    assert all(d.action == "hold" for d in run([load(depth=None, wait=None)] * 5))


def test_policy_rejects_an_empty_band():
    with pytest.raises(ValueError, match="hysteresis band"):
        ElasticPolicy(grow_wait_s=0.1, shrink_wait_s=0.2)
    with pytest.raises(ValueError):
        ElasticPolicy(min_concurrency=3, max_concurrency=2)


def test_p90():
    assert p90([]) is None
    assert p90([0.1] * 9 + [5.0]) == 5.0
    assert p90([float(i) for i in range(100)]) == 90.0


# -- a real grow -------------------------------------------------------------------------------


@pytest.mark.integration
def test_backlog_grows_a_real_worker_pool(tmp_path):
    from kombu import Connection

    from tests.support.cluster import delete_queues
    from tests.support.pipeline import AMQP_URL, fixed_plan, settings_for, start_worker_process, stop_process, submit
    from tracker.server import TrackerServer

    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.connect()
    except Exception:
        pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}")
    node = f"e{uuid.uuid4().hex[:8]}"
    settings = settings_for(tmp_path, AMQP_URL, node=node, results_queue=f"vdag.results.{node}",
                            max_in_flight=48, reorder_wait_s=10.0)
    policy = ElasticPolicy(max_concurrency=2, grow_after=2, cooldown_s=30.0, interval_s=0.5,
                           grow_backlog_per_process=4)
    server = TrackerServer(settings, pace=0.0, backpressure="block", serve_http=False, scheduler_interval_s=None,
                           elasticity=policy).start()
    worker = start_worker_process(node, 1, log_path=tmp_path / "worker.log")
    try:
        ctl = server.elasticity
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (ctl.views.get(node) is None or ctl.views[node].concurrency != 1):
            time.sleep(0.2)
        assert ctl.views[node].concurrency == 1, ctl.snapshot()
        client = server.app.test_client()
        stages = [{"name": "detect", "service": "yolo_detection", "params": {"grade": "n"},
                   "inputs": {"image": "generator.image"}}]
        uid = submit(client, "synthetic://1280x720@30/600", stages,
                     fixed_plan(["detect"], node=node, resolution="480p", grade="n"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not ctl.history:
            time.sleep(0.2)
        assert ctl.history, (ctl.snapshot(), (tmp_path / "worker.log").read_text()[-2000:])
        grow = ctl.history[0]
        assert grow["action"] == "grow" and grow["node"] == node and (grow["concurrency"], grow["target"]) == (1, 2)
        assert "queue depth" in grow["reason"] or "p90 wait" in grow["reason"]
        # The worker really has two pool processes now, and says so over remote control.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(ctl.pools().get(node, {}).values()) != 2:
            time.sleep(0.5)
        assert sum(ctl.pools().get(node, {}).values()) == 2
        # ... and both serve frames.
        deadline = time.monotonic() + 60
        pids: set[str] = set()
        while time.monotonic() < deadline and len(pids) < 2:
            recs = server.store.results(uid, after_seq=-1, limit=10_000)
            pids = {r.stages[0].worker.rsplit("/", 1)[1] for r in recs if r.stages}
            time.sleep(0.5)
        assert len(pids) >= 2, pids
        body = client.get("/api/v1/elasticity").get_json()
        assert body["enabled"] and body["history"][0]["action"] == "grow"
        assert body["nodes"][node]["last_change"]["reason"] == grow["reason"]
        client.post(f"/api/v1/jobs/{uid}/cancel")
    finally:
        stop_process(worker)
        server.stop()
        delete_queues(f"vdag.node.{node}", f"vdag.results.{node}", f"vdag.acks.{node}")
