"""Internal routes an edge agent (tracker.cluster.edge) uses on the cloud, beside /node/register and
/node/heartbeat (tracker.web.seed_node_api):

  GET  /node/jobs?node=NAME   EXEC jobs whose generator runs on NAME, with their current plan
  POST /node/job_event        an edge generator ended: {"node", "job_uid", "state", "reason"}
  POST /node/seq_reservation  an edge generator may use sequence numbers below "until"
                              (tracker.runtime.resume); with "restarted" when it just started

Edges have no database: the cloud's store is the one source of truth, and an edge
reconciles its generators against this answer every poll.
"""
from __future__ import annotations

import re
from typing import Literal

from flask import Blueprint, Flask, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from tracker.runtime.resume import resume_point
from tracker.store.jobs import JobState
from tracker.web.api.schemas import JOB_UID_PATTERN, NODE_NAME_PATTERN
from tracker.web.context import tracker_context
from tracker.web.errors import BadRequest, Conflict, NotFound
from tracker.web.seed_requests import parse_body

bp = Blueprint("edge_node", __name__, url_prefix="/node")

MAX_EDGE_JOBS = 1000


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


class JobEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str = Field(..., pattern=NODE_NAME_PATTERN)
    job_uid: str = Field(..., pattern=JOB_UID_PATTERN)
    state: Literal["DONE", "FAILED"]
    reason: str = Field("", max_length=1000)


class Restarted(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sent_before: int = Field(..., ge=0)
    first_seq: int = Field(..., ge=0)


class SeqReservationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str = Field(..., pattern=NODE_NAME_PATTERN)
    job_uid: str = Field(..., pattern=JOB_UID_PATTERN)
    until: int = Field(..., ge=0)
    restarted: Restarted | None = None


def _node_arg() -> str:
    node = request.args.get("node", "")
    if not re.match(NODE_NAME_PATTERN, node):
        raise BadRequest("node: give ?node=NAME (letters, digits, _ . : -)")
    return node


@bp.get("/jobs")
def node_jobs():
    ctx = tracker_context()
    node = _node_arg()
    jobs, _ = ctx.store.list_jobs(state=JobState.EXEC, limit=MAX_EDGE_JOBS)
    items = []
    for job in jobs:
        if job.node != node:
            continue
        current = ctx.store.current_plan(job.uid)
        if current is None:
            continue
        at = resume_point(ctx.store.last_result_position(job.uid), job.stats, ctx.settings.max_in_flight)
        items.append({
            "uid": job.uid,
            "source": job.source,
            "dag": job.dag.model_dump(mode="json"),
            "constraint": job.constraint.model_dump(mode="json"),
            "plan_id": current[0],
            "plan": current[1].model_dump(mode="json"),
            "planned": job.fixed_plan is None,
            "first_seq": at.first_seq,
            "sent_before": at.sent_before,
            "start_ts": at.start_ts,
            "counters": at.counters,
        })
    return jsonify({"status": 0, "node": node, "results_queue": ctx.settings.results_queue,
                    "cloud": ctx.settings.node, "jobs": items})


def _job_read_by(ctx, node: str, job_uid: str):
    """The job whose generator runs on `node`: 404 if there is none, 409 if another node reads it."""
    job = ctx.store.find_job(job_uid)
    if job is None:
        raise NotFound(f"no job {job_uid!r}")
    if job.node != node:
        raise Conflict(f"job {job_uid!r} is read by node {job.node!r}, not {node!r}")
    return job


@bp.post("/job_event")
def node_job_event():
    ctx = tracker_context()
    body = parse_body(JobEvent)
    job = _job_read_by(ctx, body.node, body.job_uid)
    if job.state.ended:
        return jsonify({"status": 0, "msg": f"job already {job.state.value}"})
    ctx.control.finish(job.uid, JobState(body.state), f"{body.reason or body.state.lower()} (on {body.node})")
    return jsonify({"status": 0, "msg": "recorded"})


@bp.post("/seq_reservation")
def node_seq_reservation():
    ctx = tracker_context()
    body = parse_body(SeqReservationBody)
    job = _job_read_by(ctx, body.node, body.job_uid)
    restarted = (body.restarted.sent_before, body.restarted.first_seq) if body.restarted else None
    ctx.control.reserve_seqs(job.uid, body.until, restarted)  # JobEnded -> 409
    return jsonify({"status": 0, "msg": "reserved", "until": body.until})
