"""500 jobs submitted, run briefly and deleted on a real embedded tracker: every per-job map
of the runtime, the aggregator, the node-load estimator, the result cache, the viewer hub and
the metrics is back to its size before (bench/churn.py runs the same on RabbitMQ + PostgreSQL
and adds the RSS growth)."""
from __future__ import annotations

import pytest

from bench.churn import JOBS, churn, per_job_sizes, wait_sizes
from tests.support.pipeline import fixed_plan, settings_for
from tracker.server import TrackerServer

pytestmark = pytest.mark.integration


def test_500_jobs_leave_nothing_behind(tmp_path):
    server = TrackerServer(settings_for(tmp_path, "memory://"), in_process_workers=1, pace=0.0,
                           backpressure="block", serve_http=False, scheduler_interval_s=None,
                           node_timeout_s=None).start()
    try:
        client = server.app.test_client()
        before = per_job_sizes(server)
        stored = churn(client, fixed_plan(["probe"]), JOBS, timeout_s=60)
        assert stored >= 0.9 * (JOBS - JOBS // 5) * 5, f"only {stored} frames stored"
        assert wait_sizes(server, before, timeout_s=10) == before
        assert server.store.list_jobs()[1] == 0
    finally:
        server.stop()
