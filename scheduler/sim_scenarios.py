"""The simulator's scenarios (scheduler/simulator.py): the clusters, the jobs, the events that
shift load, lose a node or change a constraint, and a run of a scenario against a planner."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from scheduler.interface import Planner, SourceInfo, UserConstraint
from scheduler.simulator import SimJob, SimNode, Simulator
from services.dag import dag_from_pipeline


def default_cluster() -> tuple[list[SimNode], dict[tuple[str, str], float]]:
    nodes = [
        SimNode("edge-1", role="edge", cpu_count=2, n_process=1, speed=1.1, bg_load=0.1),
        SimNode("edge-2", role="edge", cpu_count=4, n_process=2, speed=0.8, bg_load=0.15),
        SimNode("cloud-gpu", role="cloud", gpu=True, cpu_count=16, n_process=2, speed=0.05, bg_load=0.2),
    ]
    bw = {("edge-1", "edge-2"): 12.5e6, ("edge-1", "cloud-gpu"): 2.5e6, ("edge-2", "cloud-gpu"): 2.5e6}
    return nodes, bw


# A grade-tunable detector: person_detection runs one trained checkpoint (no grade knob), so
# the benchmark's jobs use YOLO11 detection, whose grade the planner chooses.
SIM_PIPELINE = ("yolo_detection", "object_count")


def make_job(uid: str, delay: float = 0.5, motion: float = 1.0, source_node: str = "edge-1",
             pipeline: tuple[str, ...] = SIM_PIPELINE) -> SimJob:
    return SimJob(uid=uid, dag=dag_from_pipeline(list(pipeline)),
                  source=SourceInfo(width=1920, height=1080, fps=30, node=source_node),
                  constraint=UserConstraint(delay=delay), motion=motion)


def set_load(node: str, load: float) -> Callable[[Simulator], None]:
    def apply(sim: Simulator) -> None:
        sim.nodes[node].bg_load = load
    return apply


def kill(node: str) -> Callable[[Simulator], None]:
    def apply(sim: Simulator) -> None:
        sim.nodes[node].alive = False
    return apply


def set_delay(delay: float) -> Callable[[Simulator], None]:
    def apply(sim: Simulator) -> None:
        for j in sim.jobs:
            j.constraint = UserConstraint(delay=delay, accuracy=j.constraint.accuracy)
    return apply


# The real jobs' DAG: the trained person checkpoint (a fixed-model detector), counting, drawing.
PERSON_PIPELINE = ("person_detection", "object_count", "render")
PERSON_SOURCE = SourceInfo(width=768, height=576, fps=10, node="edge-1")  # vtest.avi
PERSON_RES_SENS = 0.6  # small, distant people: few are found at low resolution


def person_cluster() -> tuple[list[SimNode], dict[tuple[str, str], float]]:
    """The source's own 2-core CPU node plus a 4-core edge node (no GPU)."""
    nodes = [SimNode("edge-1", role="edge", cpu_count=2, n_process=1, speed=1.1, bg_load=0.1),
             SimNode("edge-2", role="edge", cpu_count=4, n_process=2, speed=0.8, bg_load=0.15)]
    return nodes, {("edge-1", "edge-2"): 12.5e6}


@dataclass
class Scenario:
    name: str
    rounds: int
    delay: float
    events: dict[int, list[Callable[[Simulator], None]]] = field(default_factory=dict)
    n_jobs: int = 2
    person: bool = False  # person_detection jobs on a CPU-only cluster (the real jobs' DAG)

    def shifts(self) -> list[int]:
        return sorted(self.events)

    def build(self, seed: int = 0) -> Simulator:
        if self.person:
            nodes, bw = person_cluster()
            jobs = [SimJob(uid=f"job-{i}", dag=dag_from_pipeline(list(PERSON_PIPELINE)), source=PERSON_SOURCE,
                           constraint=UserConstraint(delay=self.delay), motion=1.0 + 0.5 * i, res_sens=PERSON_RES_SENS)
                    for i in range(self.n_jobs)]
            return Simulator(nodes, jobs, bandwidth=bw, seed=seed)
        nodes, bw = default_cluster()
        jobs = [make_job(f"job-{i}", self.delay, motion=1.0 + 0.5 * i) for i in range(self.n_jobs)]
        return Simulator(nodes, jobs, bandwidth=bw, seed=seed)

    def events_fn(self) -> Callable[[Simulator, int], None]:
        def fn(sim: Simulator, r: int) -> None:
            for e in self.events.get(r, []):
                e(sim)
        return fn


def scenarios(rounds: int = 60) -> list[Scenario]:
    a, b = rounds // 3, 2 * rounds // 3
    return [
        Scenario("steady", rounds, 0.5),
        Scenario("load_shift", rounds, 0.5, {a: [set_load("cloud-gpu", 0.75), set_load("edge-2", 0.6)],
                                             b: [set_load("cloud-gpu", 0.2), set_load("edge-2", 0.15)]}),
        Scenario("node_loss", rounds, 0.5, {a: [kill("cloud-gpu")]}),
        Scenario("constraint_change", rounds, 1.0, {a: [set_delay(0.3)], b: [set_delay(0.8)]}),
    ]


def person_scenario(rounds: int = 60) -> Scenario:
    """Two person_detection jobs (vtest.avi-like source) on CPU nodes; a load shift on the
    4-core node a third of the way in, lifted at two thirds."""
    a, b = rounds // 3, 2 * rounds // 3
    return Scenario("person_cpu", rounds, 1.0, {a: [set_load("edge-2", 0.6)], b: [set_load("edge-2", 0.15)]},
                    person=True)


def run(scn: Scenario, planner_for: Callable[[str], Planner], seed: int = 0,
        on_round: Callable[[Simulator], None] | None = None) -> Simulator:
    sim = scn.build(seed)
    planners = {j.uid: planner_for(j.uid) for j in sim.jobs}
    ev = scn.events_fn()
    for _ in range(scn.rounds):
        sim.step(planners, ev)
        if on_round:
            on_round(sim)
    return sim
