"""A person-detection job's planning input on a 2-core CPU node, for the planner tests of both tiers."""
from __future__ import annotations

from scheduler.interface import NodeInfo, PlanningInput, SourceInfo, UserConstraint
from services.dag import dag_from_pipeline

PERSON_DAG = ["person_detection", "object_count", "render"]


def person_input(nodes=None, **kw) -> PlanningInput:
    return PlanningInput(job_uid=kw.pop("uid", "p"), dag=dag_from_pipeline(PERSON_DAG),
                         nodes=nodes or [NodeInfo(name="cpu", cpu_count=2, n_process=1)],
                         source=SourceInfo(width=768, height=576, fps=10, node="cpu"),
                         constraint=UserConstraint(delay=1.0), **kw)
