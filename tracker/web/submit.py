"""Job submission shared by the native and the seed API: validate, then hand to job control.

Nothing is stored unless every check passed."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from scheduler.interface import Plan, UserConstraint
from services.dag import DagSpec, StageSpec
from services.registry import UnknownService, get_service
from tracker.store.jobs import Job
from tracker.web.context import TrackerContext
from tracker.web.errors import ValidationFailed, pydantic_details, pydantic_message
from tracker.web.security import CheckedSource


def build_dag(generator: str, stages: list[StageSpec] | list[dict[str, Any]], field: str = "stages") -> DagSpec:
    """DagSpec with its graph checks (unknown service, bad reference, cycle) as a 422 naming the field."""
    for i, stage in enumerate(stages):
        service = stage.service if isinstance(stage, StageSpec) else (stage or {}).get("service")
        try:
            get_service(str(service))
        except UnknownService as exc:
            raise ValidationFailed(str(exc), field=f"{field}.{i}.service") from None
    try:
        return DagSpec(generator=generator, stages=stages)
    except ValidationError as exc:
        details = pydantic_details(exc)
        for d in details:
            if not d["loc"]:
                d["loc"] = [field]  # whole-graph checks: the message says which stage
        raise ValidationFailed(pydantic_message(details), details) from None


def check_plan(plan: Plan | None, dag: DagSpec, field: str = "plan.flow_mapping") -> None:
    if plan is None:
        return
    stages, mapped = {s.name for s in dag.stages}, set(plan.flow_mapping)
    if stages != mapped:
        missing, extra = sorted(stages - mapped), sorted(mapped - stages)
        raise ValidationFailed(
            f"must map exactly the DAG's stages (missing {missing}, unknown {extra})", field=field
        )


def check_node(ctx: TrackerContext, node: str | None, field: str = "node") -> str:
    if not node or node == ctx.settings.node:
        return ctx.settings.node
    if ctx.store.get_node(node) is None:
        raise ValidationFailed(f"unknown node {node!r}; see GET /api/v1/nodes", field=field)
    return node


def submit_job(
    ctx: TrackerContext,
    *,
    dag: DagSpec,
    source: CheckedSource,
    constraint: UserConstraint,
    node: str,
    name: str | None = None,
    plan: Plan | None = None,
    seed_node_addr: str | None = None,
    video_id: str | None = None,
    uid: str | None = None,
) -> Job:
    return ctx.control.submit(
        dag=dag,
        source=source.value,
        source_info=source.info,
        constraint=constraint,
        name=name,
        node=node,
        fixed_plan=plan,
        seed_node_addr=seed_node_addr,
        video_id=video_id,
        uid=uid,
    )
