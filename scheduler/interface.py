"""The planner contract shared by the tracker, the simulator and every planner."""
from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from services.dag import DagSpec
from services.video_conf import VideoConf

NodeRole = Literal["host", "edge", "cloud"]


class UserConstraint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delay: float = Field(1.0, gt=0, le=60, description="max seconds from capture to result per frame")
    accuracy: float = Field(0.0, ge=0, le=1, description="min relative F1 against the golden config")


class StageMapping(BaseModel):
    """Seed-003 flow_mapping entry plus our explicit node name and grade."""

    model_config = ConfigDict(extra="forbid")

    model_id: int = Field(0, ge=0, description="seed: index of the grade in GRADES")
    node: str = Field(..., description="node name; its queue is vdag.node.<node>")
    node_ip: str = "127.0.0.1"
    node_role: NodeRole = "cloud"
    grade: str | None = Field(None, description="YOLO grade n/s/m/l/x for tunable stages")


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    video_conf: VideoConf
    flow_mapping: dict[str, StageMapping]
    planner: str = "static"
    reason: str = ""


class NodeInfo(BaseModel):
    """Live view of a node, from its registration and heartbeats."""

    name: str
    role: NodeRole = "edge"
    ip: str = "127.0.0.1"
    alive: bool = True
    services: list[str] = Field(default_factory=list, description="empty = every service")
    cpu_count: int = 1
    cpu_ratio: float = Field(0.0, ge=0, le=1, description="CPU utilisation 0..1")
    own_load: float | None = Field(None, ge=0, le=1, description="the planned job's own share of cpu_ratio, where "
                                   "the reporter measures it per job (the tracker does); None: the planner estimates it")
    mem_ratio: float = Field(0.0, ge=0, le=1)
    gpu: bool = False
    n_process: int = 1
    queue_depth: int = 0
    # Measured or configured link bandwidth from this node to each other node, bytes/s.
    bandwidth_bps: dict[str, float] = Field(default_factory=dict)

    def can_run(self, service: str) -> bool:
        return self.alive and (not self.services or service in self.services)


class SourceInfo(BaseModel):
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    # Node whose generator reads the source; frames travel from here to the first stage.
    node: str | None = Field(None, description="node running the generator; None = no transfer cost")
    paced: bool = Field(True, description="frames leave evenly at the kept rate (a camera, a file played in "
                                          "real time); False: as fast as the window of frames in flight allows")


class Observation(BaseModel):
    """One stage of one processed frame, as measured by the data plane."""

    stage: str
    node: str
    grade: str | None = None
    width: int
    height: int
    fps: float = 0.0
    ntracking: int = Field(0, ge=0, description="kept frames tracked after each detected one")
    quality: int = 85
    frame_bytes: int = 0
    service_s: float = Field(..., ge=0, description="time inside the DNN service")
    queue_s: float = Field(0.0, ge=0, description="time waiting in the node queue")
    transfer_s: float = Field(0.0, ge=0, description="time on the wire before this stage")
    accuracy: float | None = Field(
        None, ge=0, le=1,
        description="frame-level F1 vs golden: on a detected frame (fps 0, i.e. every frame) or over a profiled segment",
    )
    source: str = Field("frame", description="frame: a processed frame; segment: a profiling segment's score")
    ts: float = 0.0
    seq: int | None = Field(None, description="the processed frame's sequence number: its stages share it")
    node_load: float | None = Field(None, ge=0, le=1, description="node cpu_ratio when served, if known")


class PlanningInput(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    job_uid: str
    dag: DagSpec
    nodes: list[NodeInfo]
    source: SourceInfo = SourceInfo()
    constraint: UserConstraint = UserConstraint()
    observations: list[Observation] = Field(default_factory=list)
    last_plan: Plan | None = None
    now: float = 0.0


class Planner(Protocol):
    name: str

    def plan(self, inp: PlanningInput) -> Plan: ...


class JobSource(Protocol):
    """What the scheduling loop needs from the job store (the tracker implements it).

    `running_jobs` returns one PlanningInput per job to (re)plan: its DAG, the live nodes,
    the constraint, its last plan and its recent observations (a sliding window, e.g. the
    last 60 s, oldest first; the planner replaces a job's window each call, it does not
    accumulate).
    Both methods are called from the scheduler thread only.
    """

    def running_jobs(self) -> list[PlanningInput]: ...

    def save_plan(self, job_uid: str, plan: Plan) -> None: ...


class PlanningError(RuntimeError):
    """The planner could not produce a plan (e.g. no live node can run a stage)."""
