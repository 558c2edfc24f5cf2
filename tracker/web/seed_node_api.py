"""The seed's /node routes: /node/submit_job, /node/get_plan, /node/update_plan,
/node/get_video_info (the later query_manager's bare map), and ours, /node/register and
/node/heartbeat. Errors answer {"status": 1, "msg", "error"} with a 4xx status."""
from __future__ import annotations

from flask import Blueprint, jsonify

from scheduler.seed_format import constraint_from_seed, plan_from_seed, plan_to_seed, video_map
from tracker.web.context import tracker_context
from tracker.web.errors import BadRequest, Conflict, NotFound, ValidationFailed
from tracker.web.seed_requests import (
    GetPlan,
    Heartbeat,
    NodeSubmitJob,
    RegisterNode,
    UpdatePlan,
    dag_from_seed_body,
    is_job_uid,
    job_or_404,
    parse_body,
    seed_ok,
    submit_seed_job,
)
from tracker.web.submit import check_plan

bp = Blueprint("seed_node", __name__, url_prefix="/node")


@bp.post("/submit_job")
def node_submit_job():
    ctx = tracker_context()
    body = parse_body(NodeSubmitJob)
    if ctx.store.find_job(body.unique_job_id) is not None:
        raise Conflict(f"job {body.unique_job_id!r} already exists")
    job = submit_seed_job(ctx, dag_from_seed_body(body.dag), body.node_addr, body.video_id, body.user_constraint,
                          uid=body.unique_job_id)
    return seed_ok(msg="submitted to the scheduler", job_uid=job.uid)


@bp.post("/get_plan")
def node_get_plan():
    """The seed's "please schedule this job": re-plan now; answers the current plan if any."""
    ctx = tracker_context()
    body = parse_body(GetPlan)
    job = job_or_404(ctx, body.job_uid)
    if body.user_constraint:
        ctx.control.change_constraint(job.uid, constraint_from_seed(body.user_constraint))
    else:
        ctx.control.request_plan(job.uid)
    current = ctx.store.current_plan(job.uid)
    return seed_ok(msg="scheduling requested", plan=plan_to_seed(current[1]) if current else None)


def _node_for(stage: str, m) -> str:
    """A seed flow_mapping entry names an ip and a role; we route to a node by name."""
    ctx = tracker_context()
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


@bp.post("/update_plan")
def node_update_plan():
    ctx = tracker_context()
    body = parse_body(UpdatePlan)
    job = job_or_404(ctx, body.job_uid)
    plan = plan_from_seed(body.video_conf, body.flow_mapping, _node_for, body.planner, body.reason)
    check_plan(plan, job.dag, field="flow_mapping")
    plan_id = ctx.control.apply_plan(job.uid, plan)  # JobEnded -> 409
    return seed_ok(msg="plan updated", plan_id=plan_id)


@bp.get("/get_video_info")
def node_get_video_info():
    """{node_addr: {video_id: {"type"}}}: a bare map (a page lists its keys as nodes)."""
    nodes = tracker_context().store.list_nodes(alive_only=True)
    return jsonify({n.address: video_map(n.video_sources) for n in nodes})


@bp.post("/register")
def node_register():
    ctx = tracker_context()
    body = parse_body(RegisterNode)
    address = body.address or (f"{body.ip}:{body.port}" if body.port else None)
    if not address:
        raise BadRequest("address: give address (\"ip:port\") or port")
    node = ctx.store.upsert_node(
        body.name, body.role, body.ip, address,
        video_sources=[v.model_dump() for v in body.video_sources],
        services=body.services, resources=body.resources,
    )
    return seed_ok(msg="registered", node=node.name)


@bp.post("/heartbeat")
def node_heartbeat():
    ctx = tracker_context()
    body = parse_body(Heartbeat)
    if not ctx.store.heartbeat(body.name, body.resources):
        raise NotFound(f"unknown node {body.name!r}; register first")
    for uid, stats in body.jobs.items():
        job = ctx.store.find_job(uid) if is_job_uid(uid) else None
        if job is not None and job.node == body.name and not job.state.ended:
            ctx.store.update_stats(uid, {k: v for k, v in stats.items() if isinstance(v, (int, float))})
    return seed_ok(msg="ok")
