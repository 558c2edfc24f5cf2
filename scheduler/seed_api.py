"""The seed-003 scheduler function shape, over any native Planner.

    scheduler_func(job_uid, dag, resource_info, last_plan_result, user_constraint)
        -> (video_conf, flow_mapping)

dicts in the seed's JSON shapes: `dag` = {generator, flow, input}; `resource_info` =
{node_ip: {service: {n_process, cpu_ratio, mem_ratio}}}; `last_plan_result` =
{"delay": {stage: seconds}} (other keys ignored); `user_constraint` = {"delay", "accuracy"}
(the seed's `delay: [lo, hi]` and `acc_level` 0..5 are accepted too). Returns the seed's
flat `video_conf` ({resolution, fps, nskip, ntracking, encoder} plus `quality`) and
`flow_mapping` ({stage: {model_id, node_ip, node_role}} plus `node` and `grade`).
"""
from __future__ import annotations

from typing import Any

from scheduler.interface import NodeInfo, Observation, Plan, Planner, PlanningInput, SourceInfo, UserConstraint
from services.dag import dag_from_seed
from services.video_conf import target_size


def constraint_from_seed(uc: dict[str, Any] | None) -> UserConstraint:
    uc = uc or {}
    delay = uc.get("delay", 1.0)
    if isinstance(delay, (list, tuple)):  # seed: "delay": [-1, 50] = [lo, hi]
        delay = delay[-1]
    delay = float(delay)
    if delay > 60:  # the seed's example of 50 reads as milliseconds
        delay = delay / 1000.0
    accuracy = uc.get("accuracy")
    if accuracy is None and "acc_level" in uc:
        accuracy = min(max(float(uc["acc_level"]), 0.0), 5.0) / 5.0 * 0.99
    accuracy = float(accuracy or 0.0)
    if accuracy > 1:  # the seed's "accuracy level" examples (e.g. 10) are not a ratio
        accuracy = 0.0
    return UserConstraint(delay=min(max(delay, 0.01), 60.0), accuracy=accuracy)


def nodes_from_resource_info(resource_info: dict[str, Any] | None, cloud_ip: str | None = None) -> list[NodeInfo]:
    nodes = []
    for ip, services in (resource_info or {}).items():
        services = services or {}
        stats = [v for v in services.values() if isinstance(v, dict)]
        cpu = max((float(v.get("cpu_ratio", 0.0)) for v in stats), default=0.0)
        mem = max((float(v.get("mem_ratio", 0.0)) for v in stats), default=0.0)
        nproc = max((int(v.get("n_process", 1)) for v in stats), default=1)
        role = "cloud" if ip == cloud_ip else "edge"
        nodes.append(NodeInfo(name=ip, ip=ip.split(":")[0], role=role, services=sorted(services),
                              cpu_ratio=min(cpu, 1.0), mem_ratio=min(mem, 1.0), n_process=nproc))
    return nodes


def observations_from_seed(last_plan_result: dict[str, Any] | None, plan: Plan | None,
                           source: SourceInfo | None = None) -> list[Observation]:
    """The seed reports only mean per-stage delay: one observation per stage, if we know where it ran."""
    if not last_plan_result or plan is None:
        return []
    source = source or SourceInfo()
    w, h = target_size(plan.video_conf.resolution, source.width, source.height)
    delays = last_plan_result.get("delay") or {}
    out = []
    for stage, d in delays.items():
        m = plan.flow_mapping.get(stage)
        if m is None or not isinstance(d, (int, float)) or d <= 0:
            continue
        out.append(Observation(stage=stage, node=m.node, grade=m.grade, width=w, height=h,
                               fps=plan.video_conf.fps, quality=plan.video_conf.quality, service_s=float(d)))
    return out


def plan_to_seed(plan: Plan) -> tuple[dict[str, Any], dict[str, Any]]:
    vc = plan.video_conf.model_dump()
    fm = {stage: m.model_dump() for stage, m in plan.flow_mapping.items()}
    return vc, fm


class SeedScheduler:
    """Callable with the seed's scheduler function shape; remembers each job's last plan."""

    def __init__(self, planner: Planner, source: SourceInfo | None = None, cloud_ip: str | None = None) -> None:
        self.planner = planner
        self.source = source or SourceInfo()
        self.cloud_ip = cloud_ip
        self._last: dict[str, Plan] = {}

    def __call__(self, job_uid: str, dag: dict, resource_info: dict, last_plan_result: dict | None,
                 user_constraint: dict | None) -> tuple[dict, dict]:
        last = self._last.get(job_uid)
        inp = PlanningInput(
            job_uid=job_uid, dag=dag_from_seed(dag), nodes=nodes_from_resource_info(resource_info, self.cloud_ip),
            source=self.source, constraint=constraint_from_seed(user_constraint),
            observations=observations_from_seed(last_plan_result, last, self.source),
            last_plan=last,
        )
        plan = self.planner.plan(inp)
        self._last[job_uid] = plan
        return plan_to_seed(plan)
