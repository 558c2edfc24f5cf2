"""The seed-003 scheduler function shape, over any native Planner.

    scheduler_func(job_uid, dag, resource_info, last_plan_result, user_constraint)
        -> (video_conf, flow_mapping)

dicts in the seed's JSON shapes: `dag` = {generator, flow, input}; `resource_info` =
{node_ip: {service: {n_process, cpu_ratio, mem_ratio}}}; `last_plan_result` =
{"delay": {stage: seconds}} (other keys ignored); `user_constraint` = {"delay", "accuracy"}
(read by scheduler.seed_format, like every seed field). Returns the seed's
flat `video_conf` ({resolution, fps, nskip, ntracking, encoder} plus `quality`) and
`flow_mapping` ({stage: {model_id, node_ip, node_role}} plus `node` and `grade`).
"""
from __future__ import annotations

from scheduler.interface import Plan, Planner, PlanningInput, SourceInfo
from scheduler.seed_format import (
    constraint_from_seed,
    nodes_from_resource_info,
    observations_from_seed,
    plan_to_scheduler_seed,
)
from services.dag import dag_from_seed


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
        return plan_to_scheduler_seed(plan)
