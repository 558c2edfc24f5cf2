"""A person-detection job's planning input on a 2-core CPU node, for the planner tests of both tiers."""
from __future__ import annotations

from scheduler.interface import NodeInfo, Observation, PlanningInput, SourceInfo, UserConstraint
from services.dag import dag_from_pipeline

PERSON_DAG = ["person_detection", "object_count", "render"]


def person_input(nodes=None, **kw) -> PlanningInput:
    return PlanningInput(job_uid=kw.pop("uid", "p"), dag=dag_from_pipeline(PERSON_DAG),
                         nodes=nodes or [NodeInfo(name="cpu", cpu_count=2, n_process=1)],
                         source=SourceInfo(width=768, height=576, fps=10, node="cpu"),
                         constraint=UserConstraint(delay=1.0), **kw)


# The person detector on a slow 2-core node (bench.adaptive_real --cpu-share 0.8): 576p costs
# more than its pixels say, measured from 360p and 480p. Height -> (width, seconds a frame).
SLOW_NODE_PROFILE = {360: (480, 0.19), 480: (640, 0.32), 576: (768, 0.50)}


def slow_node_profile_rows() -> list[Observation]:
    """That node's `vdag profile` as the planner receives it (latency rows, ts 0)."""
    return [Observation(stage="person_detection", node="cpu", width=w, height=h, service_s=s, ts=0.0,
                        source="profile") for h, (w, s) in SLOW_NODE_PROFILE.items()]


def source_segment(ts: float, every: float = 0.97, track1: float = 0.93, half: float = 0.92) -> list[Observation]:
    """A scored profiling segment of person_input's source resolution at time stamp ts: F1 of
    detecting every frame, of tracking every other one, and of keeping 5 frames a second (each
    at two JPEG qualities)."""
    return [Observation(stage="person_detection", node="cpu", width=768, height=576, fps=fps, ntracking=k, quality=q,
                        service_s=0.0, ts=ts, accuracy=f1, source="segment")
            for fps, k, f1 in ((0.0, 0, every), (0.0, 1, track1), (5.0, 0, half)) for q in (60, 90)]
