"""The seed-003 ("video-dag-manager") API: same paths, same JSON, `status: 0 | 1`.

User routes: /user/submit_job, /query/submit_query, /user/submit_job_user_constraint,
/user/sync_job_result/<job_uid>, /user/get_all_status (the MJPEG /user/video/<job_uid> is
in tracker.viewer). Node routes: /node/submit_job, /node/get_plan, /node/update_plan, and
ours, /node/register and /node/heartbeat. Errors answer {"status": 1, "msg": ...} with a
4xx status (see tracker.errors). Bodies are parsed as JSON and validated, never evaluated.
"""
from __future__ import annotations

import re
from statistics import fmean
from typing import Any

from flask import Blueprint, Flask, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scheduler.interface import NodeRole, Plan, StageMapping, UserConstraint
from services.dag import DagSpec, dag_from_pipeline, dag_from_seed
from services.registry import UnknownService
from services.video_conf import GRADES, VideoConf
from tracker.api.schemas import JOB_UID_PATTERN, NODE_NAME_PATTERN
from tracker.context import TrackerContext, tracker_context
from tracker.errors import BadRequest, Conflict, NotFound, ValidationFailed, pydantic_details, pydantic_message
from tracker.jobs import Job
from tracker.security import CheckedSource
from tracker.store import NodeRecord
from tracker.submit import check_plan, submit_job

user_bp = Blueprint("seed_user", __name__)
node_bp = Blueprint("seed_node", __name__, url_prefix="/node")

APPENDED_FRAMES = 10  # the seed's "last 10 frames"
DELAY_WINDOW = 30  # frames averaged into plan_result.delay
COUNT_KEYS = ("counts", "count_result")
_UID = re.compile(JOB_UID_PATTERN)


def init_app(app: Flask) -> None:
    app.register_blueprint(user_bp)
    app.register_blueprint(node_bp)


# -- request bodies ------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # seed clients may send more than we read


class SeedDag(_Body):
    generator: str = "SingleFrameGenerator"
    flow: list[str] = Field(..., min_length=1, max_length=33)
    input: dict[str, dict[str, str]] = Field(default_factory=dict)


class SubmitJob(_Body):
    dag: SeedDag
    node_addr: str = Field(..., max_length=128)
    video_id: int | str
    user_constraint: dict[str, Any] | None = None


class NodeSubmitJob(SubmitJob):
    unique_job_id: str = Field(..., pattern=JOB_UID_PATTERN)


class SubmitQuery(_Body):
    node_addr: str = Field(..., max_length=128)
    video_id: int | str
    pipeline: list[str] = Field(..., min_length=1, max_length=32)
    user_constraint: dict[str, Any] | None = None


class JobConstraint(_Body):
    job_uid: str = Field(..., pattern=JOB_UID_PATTERN)
    user_constraint: dict[str, Any]


class GetPlan(_Body):
    job_uid: str = Field(..., pattern=JOB_UID_PATTERN)
    dag: dict[str, Any] | None = None
    last_plan_result: dict[str, Any] | None = None
    user_constraint: dict[str, Any] | None = None


class UpdatePlan(_Body):
    job_uid: str = Field(..., pattern=JOB_UID_PATTERN)
    video_conf: dict[str, Any]
    flow_mapping: dict[str, dict[str, Any]] = Field(..., min_length=1)
    planner: str = Field("node/update_plan", max_length=64)
    reason: str = Field("pushed over /node/update_plan", max_length=1000)


class VideoSourceEntry(BaseModel):
    model_config = ConfigDict(extra="allow")  # width/height/fps and the like are kept

    id: int | str
    url: str = Field(..., min_length=1, max_length=4096)
    type: str = Field("", max_length=200)


class RegisterNode(_Body):
    name: str = Field(..., pattern=NODE_NAME_PATTERN)
    role: NodeRole = "edge"
    ip: str = Field(..., min_length=1, max_length=64)
    address: str | None = Field(None, max_length=128, description='"ip:port" of the node\'s API')
    port: int | None = Field(None, ge=1, le=65535)
    video_sources: list[VideoSourceEntry] = Field(default_factory=list, max_length=256)
    services: list[str] = Field(default_factory=list, max_length=256)
    resources: dict[str, Any] = Field(default_factory=dict)


class Heartbeat(_Body):
    name: str = Field(..., pattern=NODE_NAME_PATTERN)
    resources: dict[str, Any] = Field(default_factory=dict)
    # Stats of the generators this node runs (tracker.edge), merged into each job's stats.
    jobs: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=1000)


def _body(model: type[BaseModel]) -> Any:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = pydantic_details(exc)
        raise BadRequest(pydantic_message(details), details) from None


def _ok(**fields: Any):
    return jsonify({"status": 0, **fields})


# -- conversions ---------------------------------------------------------------------------


def constraint_from_seed(raw: dict[str, Any] | None) -> UserConstraint:
    """The seed's user_constraint in its several spellings -> UserConstraint.

    delay: seconds, or a [low, high] range (the high end counts). accuracy: a fraction
    0..1, or a percentage above 1 (90 -> 0.9); acc_level: the seed's 0..5 grade (-> level/5).
    """
    raw = raw or {}
    out: dict[str, Any] = {}
    try:
        delay = raw.get("delay")
        if isinstance(delay, (list, tuple)) and delay:
            delay = delay[-1]
        if delay is not None:
            out["delay"] = float(delay)
        if raw.get("accuracy") is not None:
            acc = float(raw["accuracy"])
            out["accuracy"] = acc / 100.0 if 1.0 < acc <= 100.0 else acc
        elif raw.get("acc_level") is not None:
            out["accuracy"] = float(raw["acc_level"]) / 5.0
    except (TypeError, ValueError):
        raise BadRequest("user_constraint: delay and accuracy must be numbers") from None
    try:
        return UserConstraint.model_validate(out)
    except ValidationError as exc:
        details = pydantic_details(exc, ("user_constraint",))
        raise BadRequest(pydantic_message(details), details) from None


def _resolve_video(ctx: TrackerContext, node_addr: str, video_id: int | str) -> tuple[NodeRecord, CheckedSource]:
    node = ctx.store.node_by_address(node_addr)
    if node is None:
        raise NotFound(f"node_addr: no node registered at {node_addr!r}; see /user/get_all_status")
    entry = node.video_source(video_id)
    if entry is None:
        raise NotFound(f"video_id: node {node_addr!r} has no video {video_id!r}")
    info = {k: entry[k] for k in ("width", "height", "fps") if isinstance(entry.get(k), (int, float))}
    return node, CheckedSource("url" if "://" in str(entry["url"]) else "file", str(entry["url"]), info or None)


def _submit(ctx: TrackerContext, dag: DagSpec, node_addr: str, video_id: int | str,
            user_constraint: dict | None, uid: str | None = None) -> Job:
    constraint = constraint_from_seed(user_constraint)
    node, source = _resolve_video(ctx, node_addr, video_id)
    return submit_job(ctx, dag=dag, source=source, constraint=constraint, node=node.name,
                      seed_node_addr=node_addr, video_id=str(video_id), uid=uid)


def _dag_from_seed(seed: SeedDag) -> DagSpec:
    try:
        return dag_from_seed(seed.model_dump())
    except (ValidationError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            details = pydantic_details(exc, ("dag",))
            raise ValidationFailed(pydantic_message(details), details) from None
        raise ValidationFailed(str(exc), field="dag") from None


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def seed_plan(plan: Plan) -> dict[str, Any]:
    vc = plan.video_conf
    return {
        "flow_mapping": {
            stage: {"model_id": m.model_id, "node_ip": m.node_ip, "node_role": m.node_role}
            for stage, m in plan.flow_mapping.items()
        },
        "video_conf": {"encoder": vc.encoder, "fps": _number(vc.fps), "nskip": vc.nskip,
                       "ntracking": vc.ntracking, "resolution": vc.resolution},
    }


def appended_entry(outputs: dict[str, dict[str, Any]], order: list[str], seq: int) -> dict[str, Any]:
    """One frame as the seed shows it: every stage's count dicts merged, plus n_loop."""
    entry: dict[str, Any] = {}
    for stage in [*order, *(s for s in outputs if s not in order)]:
        out = outputs.get(stage) or {}
        for key in COUNT_KEYS:
            if isinstance(out.get(key), dict):
                entry.update(out[key])
    entry["n_loop"] = seq
    return entry


def _node_for(ctx: TrackerContext, stage: str, m: dict[str, Any]) -> str:
    """A seed flow_mapping entry names an ip and a role; we route to a node by name."""
    if isinstance(m.get("node"), str) and m["node"]:
        return m["node"]  # our own edges name the node
    ip, role = m.get("node_ip"), m.get("node_role")
    nodes = [n for n in ctx.store.list_nodes() if n.ip == ip]
    nodes.sort(key=lambda n: (n.role != role, not n.alive, n.name))
    if nodes:
        return nodes[0].name
    if ip in (None, ctx.settings.cloud_ip) or role == "cloud":
        return ctx.settings.node
    raise ValidationFailed(f"no registered node has ip {ip!r}", field=f"flow_mapping.{stage}.node_ip")


def plan_from_seed(ctx: TrackerContext, body: UpdatePlan) -> Plan:
    video_conf = body.video_conf
    if video_conf and all(isinstance(v, dict) for v in video_conf.values()):
        video_conf = next(iter(video_conf.values()))  # the seed's per-stage form: one conf per job here
    mapping: dict[str, StageMapping] = {}
    try:
        vc = VideoConf.model_validate(video_conf)
        for stage, m in body.flow_mapping.items():
            model_id = int(m.get("model_id", 0))
            grade = m.get("grade") or (GRADES[model_id] if 0 <= model_id < len(GRADES) else None)
            mapping[stage] = StageMapping(
                model_id=model_id, node=_node_for(ctx, stage, m), node_ip=m.get("node_ip") or "127.0.0.1",
                node_role=m.get("node_role") or "cloud", grade=grade,
            )
    except ValidationError as exc:
        details = pydantic_details(exc)
        raise BadRequest(pydantic_message(details), details) from None
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"flow_mapping: {exc}") from None
    return Plan(video_conf=vc, flow_mapping=mapping, planner=body.planner, reason=body.reason)


def _job_or_404(ctx: TrackerContext, job_uid: str) -> Job:
    job = ctx.store.find_job(job_uid) if _UID.match(job_uid) else None
    if job is None:
        raise NotFound(f"unknown job_uid {job_uid!r}")
    return job


# -- user routes ---------------------------------------------------------------------------


@user_bp.post("/user/submit_job")
def submit_job_route():
    ctx = tracker_context()
    body = _body(SubmitJob)
    job = _submit(ctx, _dag_from_seed(body.dag), body.node_addr, body.video_id, body.user_constraint)
    return _ok(msg="submitted to the scheduler", job_uid=job.uid)


@user_bp.post("/query/submit_query")
def submit_query():
    ctx = tracker_context()
    body = _body(SubmitQuery)
    try:
        dag = dag_from_pipeline(body.pipeline)
    except UnknownService as exc:
        raise ValidationFailed(str(exc), field="pipeline") from None
    except ValidationError as exc:
        details = pydantic_details(exc, ("pipeline",))
        raise ValidationFailed(pydantic_message(details), details) from None
    job = _submit(ctx, dag, body.node_addr, body.video_id, body.user_constraint)
    return _ok(msg="submitted to the scheduler", query_id=job.uid, job_uid=job.uid)


@user_bp.post("/user/submit_job_user_constraint")
def submit_job_user_constraint():
    ctx = tracker_context()
    body = _body(JobConstraint)
    constraint = constraint_from_seed(body.user_constraint)
    _job_or_404(ctx, body.job_uid)
    ctx.store.update_constraint(body.job_uid, constraint)  # JobEnded -> 409
    ctx.control.constraint_changed(body.job_uid)
    return _ok(msg="user constraint updated")


@user_bp.get("/user/sync_job_result/<job_uid>")
def sync_job_result(job_uid: str):
    ctx = tracker_context()
    n = max(APPENDED_FRAMES, DELAY_WINDOW)
    live, frames = ctx.recent.plan(job_uid), ctx.recent.recent(job_uid, n)
    if live is None or frames is None:  # not running here: read the store
        job = _job_or_404(ctx, job_uid)
        current = ctx.store.current_plan(job.uid)
        order = job.dag.topological_order()
        frames = ctx.store.recent_results(job.uid, n)
    else:
        current, order = (live.plan_id, live.plan), list(live.stage_order)
    appended = [appended_entry(f.outputs, order, f.seq) for f in frames if not f.lost][-APPENDED_FRAMES:]
    latest: dict[str, Any] = {}
    if current is not None:
        plan_id, plan = current
        window = [f for f in frames if not f.lost and f.plan_id == plan_id] or [f for f in frames if not f.lost]
        per_stage: dict[str, list[float]] = {}
        for f in window:
            for st in f.stages:
                per_stage.setdefault(st.stage, []).append(st.queue_s + st.service_s)
        latest = {"plan": seed_plan(plan), "plan_result": {"delay": {s: fmean(v) for s, v in per_stage.items()}}}
    return _ok(result={"appended_result": appended, "latest_result": latest})


@user_bp.get("/user/get_all_status")
def get_all_status():
    data = {
        node.address: {"video": {str(v["id"]): {"type": v.get("type", "")} for v in node.video_sources}}
        for node in tracker_context().store.list_nodes(alive_only=True)
    }
    return jsonify({"data": data, "status": 0})


# -- node routes ---------------------------------------------------------------------------


@node_bp.post("/submit_job")
def node_submit_job():
    ctx = tracker_context()
    body = _body(NodeSubmitJob)
    if ctx.store.find_job(body.unique_job_id) is not None:
        raise Conflict(f"job {body.unique_job_id!r} already exists")
    job = _submit(ctx, _dag_from_seed(body.dag), body.node_addr, body.video_id, body.user_constraint,
                  uid=body.unique_job_id)
    return _ok(msg="submitted to the scheduler", job_uid=job.uid)


@node_bp.post("/get_plan")
def node_get_plan():
    """The seed's "please schedule this job": re-plan now; answers the current plan if any."""
    ctx = tracker_context()
    body = _body(GetPlan)
    job = _job_or_404(ctx, body.job_uid)
    if body.user_constraint:
        ctx.store.update_constraint(job.uid, constraint_from_seed(body.user_constraint))
    ctx.control.constraint_changed(job.uid)
    current = ctx.store.current_plan(job.uid)
    return _ok(msg="scheduling requested", plan=seed_plan(current[1]) if current else None)


@node_bp.post("/update_plan")
def node_update_plan():
    ctx = tracker_context()
    body = _body(UpdatePlan)
    job = _job_or_404(ctx, body.job_uid)
    plan = plan_from_seed(ctx, body)
    check_plan(plan, job.dag, field="flow_mapping")
    plan_id = ctx.store.add_plan(job.uid, plan)  # JobEnded -> 409
    ctx.control.plan_pushed(job.uid)
    return _ok(msg="plan updated", plan_id=plan_id)


@node_bp.post("/register")
def node_register():
    ctx = tracker_context()
    body = _body(RegisterNode)
    address = body.address or (f"{body.ip}:{body.port}" if body.port else None)
    if not address:
        raise BadRequest("address: give address (\"ip:port\") or port")
    node = ctx.store.upsert_node(
        body.name, body.role, body.ip, address,
        video_sources=[v.model_dump() for v in body.video_sources],
        services=body.services, resources=body.resources,
    )
    return _ok(msg="registered", node=node.name)


@node_bp.post("/heartbeat")
def node_heartbeat():
    ctx = tracker_context()
    body = _body(Heartbeat)
    if not ctx.store.heartbeat(body.name, body.resources):
        raise NotFound(f"unknown node {body.name!r}; register first")
    for uid, stats in body.jobs.items():
        job = ctx.store.find_job(uid) if _UID.match(uid) else None
        if job is not None and job.node == body.name and not job.state.ended:
            ctx.store.update_stats(uid, {k: v for k, v in stats.items() if isinstance(v, (int, float))})
    return _ok(msg="ok")
