"""The knob space a planner searches, and the device-independent cost and utility of a plan.

Candidates are held as parallel numpy arrays so a planner can score thousands at once.
Compute cost is DNN GFLOPs per second of *video* (fps x per-frame GFLOPs), so skipping
frames, shrinking frames and a smaller grade all count; it does not depend on the node.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from scheduler.interface import NodeInfo, Plan, PlanningError, PlanningInput, StageMapping
from services.dag import DagSpec
from services.video_conf import FPS_LEVELS, GRADES, QUALITY_LEVELS, RESOLUTION_HEIGHTS, VideoConf, target_size

log = logging.getLogger(__name__)

RES_LABELS: tuple[str, ...] = tuple(RESOLUTION_HEIGHTS)  # 360p .. 1080p, cheapest first
# Seed ntracking: kept frames after each detected frame whose boxes come from the tracker.
NTRACKING_LEVELS: tuple[int, ...] = (0, 1, 2, 4)
# Optical-flow tracking of one frame's boxes (services/tracking.py): ~1-3 ms at 360p-576p on
# 2 CPU cores, plus the JPEG decode of the tracked frame.
TRACK_S_PER_FRAME = 0.006
GOLDEN_QUALITY = 90

# Published YOLO11 figures (Ultralytics docs, 640x640): COCO mAP50-95 and GFLOPs per grade.
COCO_MAP: dict[str, float] = {"n": 39.5, "s": 47.0, "m": 51.5, "l": 53.4, "x": 54.7}
GFLOPS_640: dict[str, float] = {"n": 6.5, "s": 21.5, "m": 68.0, "l": 86.9, "x": 194.9}
# DESIGN.md section 5: YOLO11 on 2 CPU cores, seconds per frame at imgsz 320/480/640.
CPU_TIMINGS_S: dict[str, tuple[float, float, float]] = {
    "n": (0.018, 0.031, 0.052), "s": (0.040, 0.076, 0.130), "m": (0.101, 0.201, 0.364),
}
REF_PIXELS = 640 * 384  # a 640-wide 16:9 frame letterboxed to a multiple of 32
# Services whose grade the planner may choose, if the registry cannot be imported.
_TUNABLE_FALLBACK = frozenset({"yolo_detection", "car_detection"})
NON_DNN_GFLOPS = 0.05  # counting, tracking, rendering: small fixed work per frame
# A fixed-model detector (one trained checkpoint, no grade knob: person_detection's YOLOv8
# person model). DESIGN.md s.5 on vtest.avi: ~58-71 ms at imgsz 320 (320x240) and ~200-250 ms
# at 640 (640x480); YOLO11 s/m scaled to the same pixels take ~48/120 and ~157/440 ms, so the
# checkpoint costs ~1.4x YOLO11 s per pixel: between s and m (near YOLOv8s's 28.6 GFLOPs).
FIXED_VS_S = 1.4
FIXED_GFLOPS_640 = GFLOPS_640["s"] * FIXED_VS_S
MAX_MAPPINGS = 96


def grade_latency_ratio() -> np.ndarray:
    """Latency of each grade relative to n at 640 px: measured for n/s/m, FLOPs-scaled for l/x."""
    n, s, m = (CPU_TIMINGS_S[g][2] for g in "nsm")
    r = [1.0, s / n, m / n]
    r.append(r[2] * GFLOPS_640["l"] / GFLOPS_640["m"])
    r.append(r[2] * GFLOPS_640["x"] / GFLOPS_640["m"])
    return np.array(r)


def pixel_exponent() -> float:
    """Least-squares slope of log latency on log pixels over the measured table (~0.8)."""
    px = np.log(np.array([320 * 192, 480 * 288, 640 * 384], float))
    slopes = [np.polyfit(px, np.log(CPU_TIMINGS_S[g]), 1)[0] for g in "nsm"]
    return float(np.mean(slopes))


def fixed_latency_ratio() -> float:
    """Latency of the fixed-model detector relative to YOLO11 n at the same pixels."""
    return float(grade_latency_ratio()[1] * FIXED_VS_S)


GRADED, FIXED, LIGHT = "graded", "fixed", "light"
_FIXED_FALLBACK = frozenset({"person_detection"})


@lru_cache(maxsize=256)
def stage_kind(service: str) -> str:
    """graded: a DNN whose grade the planner picks; fixed: a detector with one trained model
    (a DNN whose cost and accuracy follow the frame's pixels, not a grade: the planner tunes
    its resolution, fps, quality and node); light: counting, tracking, rendering."""
    try:
        from services.registry import UnknownService, get_service
    except ImportError:  # registry's built-ins not importable: fall back to the known names
        return GRADED if service in _TUNABLE_FALLBACK else FIXED if service in _FIXED_FALLBACK else LIGHT
    try:
        svc = get_service(service)
    except UnknownService:
        return GRADED if service in _TUNABLE_FALLBACK else FIXED if service in _FIXED_FALLBACK else LIGHT
    if svc.tunable_grade:
        return GRADED
    return FIXED if "detections" in svc.outputs else LIGHT


def is_tunable(service: str) -> bool:
    return stage_kind(service) == GRADED


def is_fixed(service: str) -> bool:
    return stage_kind(service) == FIXED


def is_dnn(service: str) -> bool:
    return stage_kind(service) != LIGHT


def frame_bytes(width: np.ndarray | int, height: np.ndarray | int, quality: np.ndarray | int) -> np.ndarray:
    """Rough JPEG size: bytes per pixel grows with quality (~0.1 B/px at q85)."""
    q = np.asarray(quality, float) / 100.0
    return np.asarray(width, float) * np.asarray(height, float) * (0.03 + 0.12 * q**3)


def stage_gflops(tunable: bool, pixels: np.ndarray, grade_idx: np.ndarray, fixed: bool = False) -> np.ndarray:
    if fixed:
        return FIXED_GFLOPS_640 * np.asarray(pixels, float) / (640 * 640)
    if not tunable:
        return np.full(np.shape(pixels), NON_DNN_GFLOPS)
    g = np.array([GFLOPS_640[x] for x in GRADES])[grade_idx]
    return g * np.asarray(pixels, float) / (640 * 640)


def resolution_options(src_w: int, src_h: int) -> list[tuple[str, int, int]]:
    """(label, width, height) per resolution class, capped at the source, duplicates dropped."""
    out: list[tuple[str, int, int]] = []
    seen: set[tuple[int, int]] = set()
    for label in RES_LABELS:
        w, h = target_size(label, src_w, src_h)
        if (w, h) not in seen:
            seen.add((w, h))
            out.append((label, w, h))
    return out


def fps_options(src_fps: float) -> list[float]:
    src = max(1.0, float(src_fps))
    levels = sorted({f for f in FPS_LEVELS if f < src} | {src})
    return levels


@dataclass(frozen=True)
class Candidates:
    """Every plan a planner may choose for one job, as parallel arrays (C candidates, K stages)."""

    stages: tuple[str, ...]          # topological order
    services: tuple[str, ...]
    tunable: np.ndarray              # [K] bool
    nodes: tuple[str, ...]           # live nodes, index space of `mapping`
    res: tuple[tuple[str, int, int], ...]
    res_idx: np.ndarray              # [C]
    fps: np.ndarray                  # [C]
    grade_idx: np.ndarray            # [C] one grade for every tunable stage
    quality: np.ndarray              # [C]
    mapping: np.ndarray              # [C, K] node index per stage
    src_fps: float
    src_height: int
    source_node: int                 # index in nodes, -1 = unknown / not live
    n_map: int                       # candidates are grid rows x mappings: c = row * n_map + map
    fixed: np.ndarray | None = None  # [K] bool: fixed-model detector (a DNN without a grade knob)
    ntracking: np.ndarray | None = None  # [C] kept frames tracked after each detected one
    n_track: int = 1                 # ntracking levels in the grid (its innermost dimension)

    @property
    def ntrack(self) -> np.ndarray:
        return np.zeros(len(self.fps), np.int64) if self.ntracking is None else self.ntracking

    @property
    def msg_rate(self) -> np.ndarray:
        """Detected frames per second of video: each is followed by ntracking tracked ones."""
        return self.fps / (1 + self.ntrack)

    @property
    def dnn_k(self) -> np.ndarray:
        return self.tunable | self.fixed_k

    def per_message(self, idx: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Per-frame stage times [M, K, D] -> the work of one detected frame and the ntracking
        frames tracked after it (each its own message): the DNN runs once and tracks the others;
        every other stage runs on each of the 1 + ntracking frames."""
        k = self.ntrack[idx].astype(float)[:, None]
        dnn = self.dnn_k[None, :]
        mult = np.where(dnn, 1.0, 1.0 + k)
        extra = np.where(dnn, k * TRACK_S_PER_FRAME, 0.0)
        return t * mult[:, :, None] + extra[:, :, None]

    @property
    def fixed_k(self) -> np.ndarray:
        return np.zeros(len(self.stages), bool) if self.fixed is None else self.fixed

    @property
    def has_detector(self) -> bool:
        """Some stage is a DNN detector (graded or fixed): accuracy depends on the knobs."""
        return bool(self.tunable.any() or self.fixed_k.any())

    @property
    def grid_idx(self) -> np.ndarray:
        return np.arange(len(self.fps)) // self.n_map

    def __len__(self) -> int:
        return len(self.fps)

    @property
    def width(self) -> np.ndarray:
        return np.array([r[1] for r in self.res])[self.res_idx]

    @property
    def height(self) -> np.ndarray:
        return np.array([r[2] for r in self.res])[self.res_idx]

    def compute(self, idx: np.ndarray | None = None) -> np.ndarray:
        """GFLOPs per second of video for candidates idx (all if None)."""
        sel = slice(None) if idx is None else idx
        w, h = self.width[sel], self.height[sel]
        total = np.zeros(np.shape(w))
        rate = self.msg_rate[sel]
        for k in range(len(self.stages)):
            per = stage_gflops(bool(self.tunable[k]), w * h, self.grade_idx[sel], bool(self.fixed_k[k]))
            total = total + per * (rate if self.dnn_k[k] else self.fps[sel])
        return total

    def golden_compute(self) -> float:
        w, h = self.res[-1][1], self.res[-1][2]
        per_frame = sum(float(stage_gflops(bool(t), np.array(w * h), np.array(len(GRADES) - 1), bool(f)))
                        for t, f in zip(self.tunable, self.fixed_k))
        return per_frame * self.src_fps

    def find(self, res: str, fps: float, grade_idx: int, quality: int, mapping: tuple[int, ...],
             ntracking: int = 0) -> int | None:
        """Index of one candidate, by arithmetic on the grid's layout (res x fps x grade x quality
        x ntracking rows, each repeated over the n_map mappings): no scan over every candidate."""
        labels = [r[0] for r in self.res]
        if res not in labels:
            return None
        n_q = len(QUALITY_LEVELS)
        n_g = len(GRADES) if self.tunable.any() else 1
        n_t = self.n_track
        levels = NTRACKING_LEVELS[:n_t]
        if ntracking not in levels:
            return None
        per_fps = n_g * n_q * n_t * self.n_map
        fpss = self.fps[: per_fps * (len(self.fps) // (per_fps * len(labels))): per_fps]
        fi = np.flatnonzero(np.isclose(fpss, fps))
        gi = grade_idx if n_g > 1 else (0 if grade_idx == len(GRADES) - 1 else -1)
        if not len(fi) or not 0 <= gi < n_g or quality not in QUALITY_LEVELS:
            return None
        mi = np.flatnonzero(np.all(self.mapping[: self.n_map] == np.asarray(mapping), axis=1))
        if not len(mi):
            return None
        row = ((labels.index(res) * len(fpss) + int(fi[0])) * n_g + gi) * n_q + QUALITY_LEVELS.index(quality)
        row = row * n_t + levels.index(ntracking)
        return row * self.n_map + int(mi[0])

    def index_of_plan(self, plan: Plan | None) -> int | None:
        if plan is None:
            return None
        try:
            mapping = tuple(self.nodes.index(plan.flow_mapping[s].node) for s in self.stages)
        except (KeyError, ValueError):
            return None
        grade = next((plan.flow_mapping[s].grade for s in self.stages if plan.flow_mapping[s].grade), "x")
        gi = GRADES.index(grade) if grade in GRADES else len(GRADES) - 1
        fps = plan.video_conf.fps or self.src_fps
        return self.find(plan.video_conf.resolution, fps, gi, plan.video_conf.quality, mapping,
                         plan.video_conf.ntracking)


def _mappings(options: list[list[int]]) -> list[tuple[int, ...]]:
    """Every stage->node assignment, or (when too many) co-located ones plus one-stage moves."""
    total = int(np.prod([len(o) for o in options]))
    if total <= MAX_MAPPINGS:
        return list(itertools.product(*options))
    common = sorted(set.intersection(*(set(o) for o in options)))
    base = [tuple([n] * len(options)) for n in common] or [tuple(o[0] for o in options)]
    out = list(base)
    for b in base:
        for k, opts in enumerate(options):
            for n in opts:
                m = list(b)
                m[k] = n
                out.append(tuple(m))
    return list(dict.fromkeys(out))[: MAX_MAPPINGS * 4]


MAX_NODES_PER_JOB = 4


def _candidate_nodes(inp: PlanningInput) -> list[NodeInfo]:
    """Live nodes a job may use; on a large cluster, the source node plus the fastest on paper."""
    live = [n for n in inp.nodes if n.alive]
    if len(live) <= MAX_NODES_PER_JOB:
        return live

    def speed(n: NodeInfo) -> float:
        return -1e3 if n.gpu else -float(n.cpu_count)

    keep = {n.name for n in sorted(live, key=lambda n: (speed(n), n.name))[: MAX_NODES_PER_JOB - 1]}
    keep.add(inp.source.node or "")
    return [n for n in live if n.name in keep]


def build_candidates(inp: PlanningInput, dag: DagSpec | None = None, tracking: bool = True) -> Candidates:
    """Every plan for the job; `tracking=False` leaves ntracking out (always 0)."""
    dag = dag or inp.dag
    order = dag.topological_order()
    services = tuple(dag.stage(s).service for s in order)
    live = _candidate_nodes(inp)
    names = tuple(n.name for n in live)
    options = []
    for stage, service in zip(order, services):
        opts = [i for i, n in enumerate(live) if n.can_run(service)]
        if not opts:
            raise PlanningError(f"no live node can run stage {stage!r} (service {service!r})")
        options.append(opts)
    mappings = np.array(_mappings(options), dtype=np.int64)
    # A light stage on another node than the stage before it only adds a hop (the frame travels
    # on; the stage's few ms of work save nothing): such mappings are dominated, and are kept
    # only where the previous stage's node cannot run the light stage.
    keep = np.ones(len(mappings), bool)
    for k in range(1, len(services)):
        if not is_dnn(services[k]):
            prev_can = np.isin(mappings[:, k - 1], options[k])
            keep &= ~prev_can | (mappings[:, k] == mappings[:, k - 1])
    mappings = mappings[keep]
    tunable = np.array([is_tunable(s) for s in services])
    fixed = np.array([is_fixed(s) for s in services])
    res = tuple(resolution_options(inp.source.width, inp.source.height))
    fpss = fps_options(inp.source.fps)
    grades = range(len(GRADES)) if tunable.any() else [len(GRADES) - 1]
    # Tracking needs a detector to track from; without one, ntracking only delays frames.
    tracks = NTRACKING_LEVELS if tracking and (tunable.any() or fixed.any()) else (0,)
    grid = np.array(list(itertools.product(range(len(res)), fpss, grades, QUALITY_LEVELS, tracks)), float)
    n_conf, n_map = len(grid), len(mappings)
    src_node = names.index(inp.source.node) if inp.source.node in names else -1
    return Candidates(
        stages=tuple(order), services=services, tunable=tunable, nodes=names, res=res,
        res_idx=np.repeat(grid[:, 0].astype(np.int64), n_map),
        fps=np.repeat(grid[:, 1], n_map),
        grade_idx=np.repeat(grid[:, 2].astype(np.int64), n_map),
        quality=np.repeat(grid[:, 3].astype(np.int64), n_map),
        mapping=np.tile(mappings, (n_conf, 1)),
        src_fps=float(max(1.0, inp.source.fps)), src_height=int(res[-1][2]), source_node=src_node,
        n_map=n_map, fixed=fixed, ntracking=np.repeat(grid[:, 4].astype(np.int64), n_map), n_track=len(tracks),
    )


def candidates_key(inp: PlanningInput) -> tuple:
    """What the candidate set depends on (cache key)."""
    live = tuple((n.name, tuple(n.services)) for n in inp.nodes if n.alive)
    s = inp.source
    return (inp.dag.model_dump_json(), live, s.width, s.height, s.fps, s.node)


def to_plan(c: Candidates, i: int, nodes: list[NodeInfo], planner: str, reason: str) -> Plan:
    by_name = {n.name: n for n in nodes}
    grade = GRADES[int(c.grade_idx[i])]
    fps = float(c.fps[i])
    conf = VideoConf(
        resolution=c.res[int(c.res_idx[i])][0],  # type: ignore[arg-type]
        fps=0 if fps >= c.src_fps else fps,
        quality=int(c.quality[i]),
        ntracking=int(c.ntrack[i]),
    )
    mapping = {}
    for k, stage in enumerate(c.stages):
        node = by_name[c.nodes[int(c.mapping[i, k])]]
        tunable = bool(c.tunable[k])
        mapping[stage] = StageMapping(
            model_id=GRADES.index(grade) if tunable else 0, node=node.name, node_ip=node.ip,
            node_role=node.role, grade=grade if tunable else None,
        )
    return Plan(video_conf=conf, flow_mapping=mapping, planner=planner, reason=reason)


def describe(c: Candidates, i: int) -> str:
    grade = f" grade {GRADES[int(c.grade_idx[i])]}" if c.tunable.any() else ""
    where = list(dict.fromkeys(c.nodes[int(n)] for n in c.mapping[i]))
    fps = float(c.fps[i])
    track = f" track {int(c.ntrack[i])}" if c.ntrack[i] else ""
    return f"{c.res[int(c.res_idx[i])][0]}@{fps:g}fps{track}{grade} q{int(c.quality[i])} on {'+'.join(where)}"


# ---- utility -----------------------------------------------------------------------------
# With no accuracy goal from the user, as accurate as the delay bound allows: compute only breaks
# ties near the top. (0.95 let a planner stop at 0.93-0.95 measured while the golden config fit
# D: on vtest.avi with OpenVINO, static 0.977 vs bayes 0.932.)
ACCURACY_TARGET = 0.99
ABOVE_TARGET_SLOPE = 0.02
# Compute breaks ties, below the target only near-exact ones: at 0.05 the planner tracked every
# other frame where the golden config fit D (vtest.avi: 0.934 vs static 0.977); at 0.01 halving
# compute was worth 0.005 F1, less than segments tell apart (a fast node: half of vtest's frames
# detected for 10 s, 0.971 vs 0.977; Megamind.avi at 480p for 26 s, 0.910 vs notrack 0.923).
COST_WEIGHT = 0.01
COST_WEIGHT_BELOW_TARGET = 0.001


def utility(f1: np.ndarray, cost_share: np.ndarray, delay_ok: np.ndarray, target: float = ACCURACY_TARGET) -> np.ndarray:
    """Per-window utility: F1 counts fully up to the target and little beyond it; compute costs
    a little once the target is reached, next to nothing before; a window that misses the delay
    SLO is worth nothing (its frames arrive late)."""
    f1 = np.asarray(f1, float)
    weight = np.where(f1 >= target, COST_WEIGHT, COST_WEIGHT_BELOW_TARGET)
    u = np.minimum(f1, target) + ABOVE_TARGET_SLOPE * np.maximum(f1 - target, 0) - weight * np.asarray(cost_share)
    return np.where(delay_ok, u, 0.0)
