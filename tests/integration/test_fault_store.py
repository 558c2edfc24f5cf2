"""A PostgreSQL outage in the middle of a job (issue 10, item 2), as a real network partition
between the tracker and a real PostgreSQL: no received frame is lost (the aggregator holds and
retries them), polls never serve a frame the store does not hold, and the API answers 503 with
Retry-After while the store is away instead of a 500."""
from __future__ import annotations

import time

import pytest

from bench.tcp_proxy import TcpProxy
from tests.support.db import PG_BASE, drop_pg_schema, new_pg_schema, pg_unreachable
from tests.support.pipeline import all_results, fixed_plan, settings_for, submit, wait_state
from tracker.server import TrackerServer

pytestmark = pytest.mark.integration

PROBE = [{"name": "probe", "service": "frame_probe", "inputs": {"image": "generator.image"}}]
OUTAGE_S = 8.0


@pytest.fixture
def pg_behind_proxy():
    if (reason := pg_unreachable()) is not None:
        pytest.skip(reason)
    schema, url = new_pg_schema()
    proxy = TcpProxy(("127.0.0.1", 5432))
    assert "127.0.0.1:5432" in PG_BASE
    yield url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), proxy
    proxy.close()
    drop_pg_schema(schema)


def test_a_database_outage_loses_no_frame_and_the_api_answers_503(tmp_path, pg_behind_proxy):
    url, proxy = pg_behind_proxy
    settings = settings_for(tmp_path, "memory://").model_copy(update={"database_url": url})
    server = TrackerServer(settings, in_process_workers=1, pace=1.0, backpressure="drop", serve_http=False,
                           scheduler_interval_s=None).start()
    try:
        client = server.app.test_client()
        # 25 s of 10 fps played in real time: frames keep arriving through the whole outage.
        uid = submit(client, "synthetic://320x180@10/250", PROBE, fixed_plan(["probe"]))
        deadline = time.monotonic() + 60
        while server.store.result_count(uid) < 30 and time.monotonic() < deadline:
            time.sleep(0.1)
        proxy.cut()
        t_cut = time.monotonic()
        held = 0
        while time.monotonic() - t_cut < OUTAGE_S:
            resp = client.get(f"/api/v1/jobs/{uid}")
            assert resp.status_code == 503, resp.get_json()
            assert resp.headers["Retry-After"] == "5"
            assert resp.get_json()["error"]["code"] == "store_unavailable"
            held = max(held, server.runtime.aggregator.unsaved())
            time.sleep(0.5)
        proxy.restore()
        job = wait_state(client, uid, timeout=120)
        assert server.runtime.aggregator.unsaved() == 0
    finally:
        server.stop()

    assert job["state"] == "DONE", job
    assert held >= 30, f"frames received during the outage were held for the store ({held})"
    stats = job["stats"]
    results = all_results(client, uid)
    assert [r["seq"] for r in results] == list(range(stats["frames_sent"])), "every frame sent stored once"
    assert not [r["seq"] for r in results if r["lost"]], "no frame lost to the outage"
    assert stats["frames_lost"] == 0 and stats["frames_out"] == stats["frames_sent"], stats


def test_a_postgresql_store_call_is_bounded_not_endless(pg_behind_proxy):
    """Every store connection carries server-side bounds (a lock wait or statement that would
    block forever fails instead, and the aggregator's retry takes over) and TCP keepalives."""
    from sqlalchemy import text

    from tracker.store.db import make_engine

    url, _ = pg_behind_proxy
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            bounds = {name: conn.execute(text(f"SHOW {name}")).scalar()
                      for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")}
            assert "search_path" in url and conn.execute(text("SHOW search_path")).scalar().startswith("vdag_t_")
        assert bounds == {"statement_timeout": "30s", "lock_timeout": "10s",
                          "idle_in_transaction_session_timeout": "1min"}, bounds
    finally:
        engine.dispose()
