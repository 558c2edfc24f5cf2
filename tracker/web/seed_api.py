"""The seed's user routes (seed 003, and the later query_manager's): same paths, same JSON.

  POST /user/submit_job                  {dag, node_addr, video_id, user_constraint}
  POST /query/submit_query               {node_addr, video_id, pipeline, user_constraint} -> query_id
  POST /user/submit_job_user_constraint  {job_uid | query_id, user_constraint: {delay, accuracy}}
  GET  /user/sync_job_result/<job_uid>   {"result": {appended_result, latest_result}, "status": 0}
  GET  /query/get_agg_info/<query_id>    {appended_result, latest_result: {plan, runtime}} (bare)
  GET  /user/get_all_status              {"data": {node_addr: {"video": {...}}}, "status": 0}

The /node routes are in tracker.web.seed_node_api, the MJPEG /user/video/<job_uid> in
tracker.web.viewer; every seed field is read and written by scheduler.seed_format. Errors
answer {"status": 1, "msg", "error"} with a 4xx status (tracker.web.errors).
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from typing import Any

from flask import Blueprint, Flask, jsonify

from scheduler.interface import Plan
from scheduler.seed_format import (
    agg_entry,
    appended_entry,
    constraint_update_from_seed,
    plan_to_seed,
    runtime_summary,
    video_map,
)
from services.records import FrameRecord
from tracker.web import seed_node_api
from tracker.web.context import TrackerContext, tracker_context
from tracker.web.errors import NotReady
from tracker.web.seed_requests import (
    JobConstraint,
    SubmitJob,
    SubmitQuery,
    dag_from_pipeline_body,
    dag_from_seed_body,
    job_or_404,
    parse_body,
    seed_ok,
    submit_seed_job,
)

bp = Blueprint("seed_user", __name__)

APPENDED_FRAMES = 10  # sync_job_result: the seed's "last 10 frames"
AGG_FRAMES = 11  # get_agg_info: the query_manager kept 11
DELAY_WINDOW = 30  # frames averaged into plan_result.delay
RUNTIME_WINDOW_S = 3.0  # get_agg_info runtime: the seed averaged since its scheduler's last 3 s poll


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_blueprint(seed_node_api.bp)


@dataclass
class RecentView:
    """A job's newest frames and the plan in force, from memory while it runs, else the store."""

    frames: list[FrameRecord]
    current: tuple[int, Plan] | None
    order: list[str]
    source_fps: float | None


def _recent(ctx: TrackerContext, job_uid: str, n: int) -> RecentView:
    live, frames = ctx.recent.plan(job_uid), ctx.recent.recent(job_uid, n)
    if live is not None and frames is not None:
        return RecentView(frames, (live.plan_id, live.plan), list(live.stage_order), live.source_fps)
    job = job_or_404(ctx, job_uid)
    return RecentView(ctx.store.recent_results(job.uid, n), ctx.store.current_plan(job.uid),
                      job.dag.topological_order(), (job.source_info or {}).get("fps"))


# -- routes ----------------------------------------------------------------------------------


@bp.post("/user/submit_job")
def submit_job_route():
    ctx = tracker_context()
    body = parse_body(SubmitJob)
    job = submit_seed_job(ctx, dag_from_seed_body(body.dag), body.node_addr, body.video_id, body.user_constraint)
    return seed_ok(msg="submitted to the scheduler", job_uid=job.uid)


@bp.post("/query/submit_query")
def submit_query():
    ctx = tracker_context()
    body = parse_body(SubmitQuery)
    job = submit_seed_job(ctx, dag_from_pipeline_body(body.pipeline), body.node_addr, body.video_id,
                          body.user_constraint)
    return seed_ok(msg="submitted to the scheduler", query_id=job.uid, job_uid=job.uid)


@bp.post("/user/submit_job_user_constraint")
def submit_job_user_constraint():
    """Strict: a null or missing delay is a 400 that changes nothing; a null accuracy keeps
    the job's accuracy."""
    ctx = tracker_context()
    body = parse_body(JobConstraint)
    job = job_or_404(ctx, body.uid)
    constraint = constraint_update_from_seed(body.user_constraint, job.constraint)
    ctx.control.change_constraint(job.uid, constraint)  # JobEnded -> 409
    return seed_ok(msg="user constraint updated", user_constraint=constraint.model_dump())


@bp.get("/user/sync_job_result/<job_uid>")
def sync_job_result(job_uid: str):
    """`{"result": null, "status": 0}` until the first frame has a result (the seed's clients
    handle that; an object with empty members makes them throw)."""
    view = _recent(tracker_context(), job_uid, max(APPENDED_FRAMES, DELAY_WINDOW))
    done = [f for f in view.frames if not f.lost]
    if not done:
        return jsonify({"result": None, "status": 0})
    appended = [appended_entry(f.outputs, view.order, f.seq) for f in done][-APPENDED_FRAMES:]
    latest: dict[str, Any] = {}
    if view.current is not None:
        plan_id, plan = view.current
        window = [f for f in done if f.plan_id == plan_id] or done
        per_stage: dict[str, list[float]] = {}
        for f in window:
            for st in f.stages:
                per_stage.setdefault(st.stage, []).append(st.queue_s + st.service_s)
        latest = {"plan": plan_to_seed(plan), "plan_result": {"delay": {s: fmean(v) for s, v in per_stage.items()}}}
    return seed_ok(result={"appended_result": appended, "latest_result": latest})


@bp.get("/query/get_agg_info/<query_id>")
def get_agg_info(query_id: str):
    """The later query_manager's bare shape. Before the first result: 503 with Retry-After
    (the front end shows "results not ready yet" on any failure; the seed sent an HTML 500)."""
    view = _recent(tracker_context(), query_id, max(AGG_FRAMES, DELAY_WINDOW))
    done = [f for f in view.frames if not f.lost]
    if not done or view.current is None:
        raise NotReady(f"no result for {query_id!r} yet", retry_after_s=3)
    newest = done[-1].capture_ts
    runtime = runtime_summary(f for f in done if f.capture_ts >= newest - RUNTIME_WINDOW_S)
    return jsonify({
        "appended_result": [agg_entry(f, view.order, view.source_fps) for f in done][-AGG_FRAMES:],
        "latest_result": {"plan": plan_to_seed(view.current[1], with_tracking=False), "runtime": runtime},
    })


@bp.get("/user/get_all_status")
def get_all_status():
    data = {
        node.address: {"video": video_map(node.video_sources)}
        for node in tracker_context().store.list_nodes(alive_only=True)
    }
    return jsonify({"data": data, "status": 0})
