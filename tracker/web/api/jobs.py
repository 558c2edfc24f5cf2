"""/api/v1/jobs: submit, list, inspect, cancel, delete, change constraints, read results and plans."""
from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from scheduler.interface import UserConstraint
from services.records import FrameRecord
from tracker.store import StoredPlan
from tracker.store.jobs import Job
from tracker.web.api.schemas import (
    FrameOut,
    JobCreate,
    JobList,
    JobListQuery,
    JobOut,
    JobPath,
    JobSummary,
    PlanList,
    PlanOut,
    PlansQuery,
    ResultsPage,
    ResultsQuery,
    TransitionOut,
)
from tracker.web.context import TrackerContext, tracker_context
from tracker.web.errors import ErrorBody
from tracker.web.security import check_source
from tracker.web.submit import build_dag, check_node, check_plan, submit_job

bp = APIBlueprint(
    "api_jobs",
    __name__,
    url_prefix="/api/v1",
    abp_tags=[Tag(name="jobs", description="DAG jobs")],
)
AUTH = [{"bearer": []}]
E = ErrorBody


def _plan_out(p: StoredPlan) -> PlanOut:
    return PlanOut(
        id=p.id, created_at=p.created_at, planner=p.plan.planner, reason=p.plan.reason,
        video_conf=p.plan.video_conf.model_dump(mode="json"),
        flow_mapping={k: v.model_dump(mode="json") for k, v in p.plan.flow_mapping.items()},
    )


def _summary(job: Job) -> JobSummary:
    return JobSummary(
        uid=job.uid, name=job.name, source=job.source, node=job.node, state=job.state,
        reason=job.state_reason, created_at=job.created_at, updated_at=job.updated_at,
    )


def job_view(ctx: TrackerContext, job: Job) -> JobOut:
    plans = ctx.store.list_plans(job.uid, limit=1)
    return JobOut(
        **_summary(job).model_dump(),
        source_info=job.source_info,
        dag=job.dag.model_dump(mode="json"),
        constraint=job.constraint,
        fixed_plan=job.fixed_plan.model_dump(mode="json") if job.fixed_plan else None,
        stats=job.stats,
        seed_node_addr=job.seed_node_addr,
        video_id=job.video_id,
        plan=_plan_out(plans[0]) if plans else None,
        transitions=[
            TransitionOut(at=t.at, from_=t.from_state, to=t.to_state, reason=t.reason)
            for t in ctx.store.transitions(job.uid)
        ],
        result_count=ctx.store.result_count(job.uid),
    )


def frame_out(r: FrameRecord) -> FrameOut:
    return FrameOut(
        seq=r.seq, plan_id=r.plan_id, capture_ts=r.capture_ts, width=r.width, height=r.height,
        latency_s=r.latency_s, frame_bytes=getattr(r, "frame_bytes", 0), lost=r.lost,
        produced="tracked" if r.produced == "tracked" else "detected", outputs=r.outputs,
        stages=[{"stage": s.stage, "node": s.node, "worker": s.worker, "queue_s": s.queue_s, "service_s": s.service_s,
                 "runtime": s.runtime, "threads": s.threads, "batch": s.batch}
                for s in r.stages],
    )


def _json(model, status: int = 200) -> tuple[Response, int]:
    # pydantic-core writes the JSON itself, in about a third of the CPU of model_dump + jsonify
    # for a page of results (the API's hottest route).
    return Response(model.model_dump_json(by_alias=True), mimetype="application/json"), status


@bp.post("/jobs", summary="Submit a DAG job", security=AUTH,
         responses={201: JobOut, 401: E, 413: E, 422: E})
def create_job(body: JobCreate):
    ctx = tracker_context()
    dag = build_dag(body.generator, body.stages)
    check_plan(body.plan, dag)
    node = check_node(ctx, body.node)
    source = check_source(body.source, ctx.settings)
    job = submit_job(ctx, dag=dag, source=source, constraint=body.constraints, node=node,
                     name=body.name, plan=body.plan)
    resp, status = _json(job_view(ctx, ctx.store.get_job(job.uid)), 201)
    resp.headers["Location"] = f"/api/v1/jobs/{job.uid}"
    return resp, status


@bp.get("/jobs", summary="List jobs, newest first", responses={200: JobList, 422: E})
def list_jobs(query: JobListQuery):
    jobs, total = tracker_context().store.list_jobs(state=query.state, limit=query.limit, offset=query.offset)
    return _json(JobList(items=[_summary(j) for j in jobs], total=total, limit=query.limit, offset=query.offset))


@bp.get("/jobs/<string:job_uid>", summary="A job: state, reason, current plan, stats, transitions",
        responses={200: JobOut, 404: E, 422: E})
def get_job(path: JobPath):
    ctx = tracker_context()
    return _json(job_view(ctx, ctx.store.get_job(path.job_uid)))


@bp.post("/jobs/<string:job_uid>/cancel", summary="Cancel a job (409 if it has already ended)",
         security=AUTH, responses={200: JobOut, 401: E, 404: E, 409: E, 422: E})
def cancel_job(path: JobPath):
    ctx = tracker_context()
    job = ctx.control.cancel(path.job_uid)  # JobEnded -> 409
    return _json(job_view(ctx, job))


@bp.delete("/jobs/<string:job_uid>", summary="Stop a job and delete it with its plans and results",
           security=AUTH, responses={204: None, 401: E, 404: E, 422: E})
def delete_job(path: JobPath):
    ctx = tracker_context()
    ctx.control.delete(path.job_uid)
    ctx.recent.forget(path.job_uid)
    ctx.hub.forget_job(path.job_uid)
    return Response(status=204)


@bp.put("/jobs/<string:job_uid>/constraint", summary="Change a job's delay/accuracy constraint (re-plans)",
        security=AUTH, responses={200: JobOut, 401: E, 404: E, 409: E, 422: E})
def put_constraint(path: JobPath, body: UserConstraint):
    ctx = tracker_context()
    job = ctx.control.change_constraint(path.job_uid, body)  # JobEnded -> 409
    return _json(job_view(ctx, job))


@bp.get("/jobs/<string:job_uid>/results", summary="Per-frame results in seq order, paged by after_seq",
        responses={200: ResultsPage, 404: E, 422: E})
def job_results(path: JobPath, query: ResultsQuery):
    ctx = tracker_context()
    frames = ctx.recent.after(path.job_uid, query.after_seq, query.limit)
    total = ctx.recent.total(path.job_uid)
    if frames is None or total is None:  # not in memory: older frames, or a job not running here
        ctx.store.get_job(path.job_uid)
        frames = ctx.store.results(path.job_uid, after_seq=query.after_seq, limit=query.limit)
        total = ctx.store.result_count(path.job_uid)
    next_after = frames[-1].seq if frames else query.after_seq
    return _json(ResultsPage(items=[frame_out(f) for f in frames], next_after_seq=next_after, total=total))


@bp.get("/jobs/<string:job_uid>/plans", summary="Plan history, newest first, with the planner's reason",
        responses={200: PlanList, 404: E, 422: E})
def job_plans(path: JobPath, query: PlansQuery):
    plans = tracker_context().store.list_plans(path.job_uid, limit=query.limit)
    return _json(PlanList(items=[_plan_out(p) for p in plans]))
