"""Every conversion between the seed's JSON (seed 003 and its later routes) and our models.

One reading of each seed field, used by the tracker's seed routes, the :5500 service API
and the seed-shaped scheduler function (scheduler.seed_api):

- user_constraint: `delay` in seconds ("时延，以秒为单位"), or a `[low, high]` range whose high
  end counts; `accuracy` a fraction 0..1, or a percentage above 1 (the seed's 10 -> 0.10);
  `acc_level` the seed scheduler's 0..5 grade (-> level / 5). Anything else is a
  SeedFormatError naming the field.
- plans: flow_mapping {stage: {model_id, node_ip, node_role}} and video_conf
  {encoder, fps, nskip, ntracking, resolution} (the scheduler form adds node, grade, quality).
- results: `appended_result` entries of /user/sync_job_result (every stage's counts merged,
  `n_loop`) and of /query/get_agg_info (the last stage's `count_result`, `frame_id`, `n_loop`,
  `delay`), and `runtime` = {delay, obj_n, obj_size, obj_stable}.
- nodes: /get_cluster_info, /get_resource_info and the scheduler's resource_info.
"""
from __future__ import annotations

from statistics import fmean, pstdev
from typing import Any, Callable, Iterable, Mapping

from pydantic import ValidationError

from scheduler.interface import NodeInfo, Observation, Plan, SourceInfo, StageMapping, UserConstraint
from services.records import FrameRecord
from services.video_conf import GRADES, VideoConf, target_size

# /user/submit_job without a user_constraint key: the seed's default.
SEED_DEFAULT_CONSTRAINT = {"delay": 0.8, "accuracy": 0.8}
COUNT_KEYS = ("counts", "count_result")
OBJ_STABLE_STD = 0.3  # the seed: obj_stable when std(obj_n) < 0.3


class SeedFormatError(ValueError):
    """A seed field that cannot be read; `field` is its dotted path in the request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# -- constraints -----------------------------------------------------------------------------


def _number(raw: Any, field: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise SeedFormatError(field, "must be a number")
    try:
        value = float(raw)
    except ValueError:
        raise SeedFormatError(field, "must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SeedFormatError(field, "must be a finite number")
    return value


def seed_delay(raw: Any, field: str = "user_constraint.delay") -> float:
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise SeedFormatError(field, "a range needs [low, high]")
        raw = raw[-1]  # [low, high]: the high end is the bound
    return _number(raw, field)


def seed_accuracy(raw: Mapping[str, Any], prefix: str = "user_constraint") -> float | None:
    """accuracy (fraction or percentage) or acc_level (0..5); None when neither is given."""
    if raw.get("accuracy") is not None:
        acc = _number(raw["accuracy"], f"{prefix}.accuracy")
        return acc / 100.0 if 1.0 < acc <= 100.0 else acc
    if raw.get("acc_level") is not None:
        level = _number(raw["acc_level"], f"{prefix}.acc_level")
        if not 0.0 <= level <= 5.0:
            raise SeedFormatError(f"{prefix}.acc_level", "must be 0..5")
        return level / 5.0
    return None


def _checked(delay: float, accuracy: float, prefix: str) -> UserConstraint:
    try:
        return UserConstraint(delay=delay, accuracy=accuracy)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise SeedFormatError(f"{prefix}.{first['loc'][0]}", first["msg"]) from None


def constraint_from_seed(raw: Mapping[str, Any] | None, prefix: str = "user_constraint") -> UserConstraint:
    """A submitted job's constraint: no constraint at all is the seed's default; a field
    left out or null takes the default's value."""
    if raw is None:
        raw = SEED_DEFAULT_CONSTRAINT
    if not isinstance(raw, Mapping):
        raise SeedFormatError(prefix, "must be an object")
    delay = raw.get("delay")
    accuracy = seed_accuracy(raw, prefix)
    return _checked(SEED_DEFAULT_CONSTRAINT["delay"] if delay is None else seed_delay(delay, f"{prefix}.delay"),
                    SEED_DEFAULT_CONSTRAINT["accuracy"] if accuracy is None else accuracy, prefix)


def constraint_update_from_seed(raw: Any, current: UserConstraint, prefix: str = "user_constraint") -> UserConstraint:
    """A constraint update: `delay` must be given (an empty form field sends null, which
    must not silently reset the job); a null or missing accuracy keeps the current one."""
    if not isinstance(raw, Mapping):
        raise SeedFormatError(prefix, "must be an object with delay (seconds) and accuracy")
    if raw.get("delay") is None:
        raise SeedFormatError(f"{prefix}.delay", "is required (seconds per frame); nothing was changed")
    accuracy = seed_accuracy(raw, prefix)
    return _checked(seed_delay(raw["delay"], f"{prefix}.delay"),
                    current.accuracy if accuracy is None else accuracy, prefix)


# -- plans -----------------------------------------------------------------------------------


def _plain(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def seed_video_conf(vc: VideoConf, *, with_tracking: bool = True) -> dict[str, Any]:
    out = {"encoder": vc.encoder, "fps": _plain(vc.fps), "resolution": vc.resolution}
    if with_tracking:
        out |= {"nskip": vc.nskip, "ntracking": vc.ntracking}
    return dict(sorted(out.items()))


def seed_flow_mapping(plan: Plan) -> dict[str, dict[str, Any]]:
    return {stage: {"model_id": m.model_id, "node_ip": m.node_ip, "node_role": m.node_role}
            for stage, m in plan.flow_mapping.items()}


def plan_to_seed(plan: Plan, *, with_tracking: bool = True) -> dict[str, Any]:
    """The plan as /user/sync_job_result shows it (`with_tracking=False`: as get_agg_info does)."""
    return {"flow_mapping": seed_flow_mapping(plan), "video_conf": seed_video_conf(plan.video_conf,
                                                                                   with_tracking=with_tracking)}


def plan_to_scheduler_seed(plan: Plan) -> tuple[dict[str, Any], dict[str, Any]]:
    """The seed scheduler function's (video_conf, flow_mapping), with our node and grade kept."""
    return plan.video_conf.model_dump(), {stage: m.model_dump() for stage, m in plan.flow_mapping.items()}


NodeResolver = Callable[[str, Mapping[str, Any]], str]


def plan_from_seed(video_conf: Mapping[str, Any], flow_mapping: Mapping[str, Mapping[str, Any]],
                   node_for: NodeResolver, planner: str, reason: str) -> Plan:
    """A pushed seed plan; `node_for(stage, entry)` names the node an entry's ip/role means."""
    if video_conf and all(isinstance(v, Mapping) for v in video_conf.values()):
        video_conf = next(iter(video_conf.values()))  # the seed's per-stage form: one conf per job here
    try:
        vc = VideoConf.model_validate(video_conf)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise SeedFormatError(".".join(["video_conf", *map(str, first["loc"])]), first["msg"]) from None
    mapping: dict[str, StageMapping] = {}
    for stage, m in flow_mapping.items():
        where = f"flow_mapping.{stage}"
        try:
            model_id = int(m.get("model_id", 0))
            grade = m.get("grade") or (GRADES[model_id] if 0 <= model_id < len(GRADES) else None)
            mapping[stage] = StageMapping(model_id=model_id, node=node_for(stage, m),
                                          node_ip=m.get("node_ip") or "127.0.0.1",
                                          node_role=m.get("node_role") or "cloud", grade=grade)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise SeedFormatError(".".join([where, *map(str, first["loc"])]), first["msg"]) from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SeedFormatError):
                raise
            raise SeedFormatError(where, str(exc)) from None
    return Plan(video_conf=vc, flow_mapping=mapping, planner=planner, reason=reason)


# -- results ---------------------------------------------------------------------------------


def _stage_order(outputs: Mapping[str, Any], order: Iterable[str]) -> list[str]:
    order = list(order)
    return [*order, *(s for s in outputs if s not in order)]


def appended_entry(outputs: Mapping[str, Mapping[str, Any]], order: Iterable[str], seq: int) -> dict[str, Any]:
    """One frame as /user/sync_job_result shows it: every stage's count dicts merged, plus n_loop."""
    entry: dict[str, Any] = {}
    for stage in _stage_order(outputs, order):
        out = outputs.get(stage) or {}
        for key in COUNT_KEYS:
            if isinstance(out.get(key), dict):
                entry.update(out[key])
    entry["n_loop"] = seq
    return entry


def agg_entry(frame: FrameRecord, order: Iterable[str], source_fps: float | None) -> dict[str, Any]:
    """One frame as /query/get_agg_info shows it: the last counting stage's count_result (the
    seed's last stage), the camera frame index, n_loop from 1, the pipeline delay."""
    counts: dict[str, Any] = {}
    for stage in reversed(_stage_order(frame.outputs, order)):
        out = frame.outputs.get(stage) or {}
        found = next((out[k] for k in ("count_result", "counts") if isinstance(out.get(k), dict)), None)
        if found is not None:
            counts = found
            break
    fps = source_fps if source_fps and source_fps > 0 else 1.0
    return {"count_result": counts, "delay": round(frame.latency_s, 4),
            "frame_id": float(round(frame.capture_ts * fps)), "n_loop": frame.seq + 1}


def _objects(frame: FrameRecord) -> list[list[float]] | None:
    """Pixel boxes of the first stage that found objects (detections or the seed's bbox)."""
    for out in frame.outputs.values():
        if isinstance(out.get("detections"), list):
            return [[d["box"][0] * frame.width, d["box"][1] * frame.height,
                     d["box"][2] * frame.width, d["box"][3] * frame.height]
                    for d in out["detections"] if isinstance(d, dict) and len(d.get("box") or ()) == 4]
        if isinstance(out.get("bbox"), list):
            return [list(map(float, b)) for b in out["bbox"] if isinstance(b, (list, tuple)) and len(b) == 4]
    return None


def runtime_summary(frames: Iterable[FrameRecord]) -> dict[str, Any] | None:
    """get_agg_info's `runtime`: means over the given frames (measured, not estimated);
    None when no frame carries results."""
    frames = [f for f in frames if not f.lost]
    if not frames:
        return None
    out: dict[str, Any] = {"delay": round(fmean(f.latency_s for f in frames), 4)}
    boxes = [b for b in (_objects(f) for f in frames) if b is not None]
    if boxes:
        counts = [len(b) for b in boxes]
        sizes = [(x2 - x1) * (y2 - y1) for b in boxes for x1, y1, x2, y2 in b]
        out["obj_n"] = float(fmean(counts))
        out["obj_size"] = round(fmean(sizes), 1) if sizes else 0.0
        out["obj_stable"] = bool(pstdev(counts) < OBJ_STABLE_STD)
    return out


# -- nodes -----------------------------------------------------------------------------------


def video_map(video_sources: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """A node's sources as the seed lists them: {video_id: {"type"}}."""
    return {str(v["id"]): {"type": v.get("type", "")} for v in video_sources}


def seed_role(node: NodeInfo) -> str:
    return "cloud" if node.role == "cloud" else "edge"


def cluster_info(nodes: Iterable[NodeInfo], mem_mb: Mapping[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """/get_cluster_info: {ip: {node_role, n_cpu, cpu_ratio, mem, mem_ratio}}, cpu_ratio in
    cores free (the seed's round(n_cpu - load, 2)), mem in MB. The first node of an ip wins."""
    out: dict[str, dict[str, Any]] = {}
    for node in nodes:
        if node.ip in out:
            continue
        entry = {"cpu_ratio": round(node.cpu_count * (1.0 - node.cpu_ratio), 2), "mem_ratio": node.mem_ratio,
                 "n_cpu": node.cpu_count, "node_role": seed_role(node)}
        if mem_mb and node.name in mem_mb:
            entry["mem"] = mem_mb[node.name]
        out[node.ip] = dict(sorted(entry.items()))
    return out


def resource_info(nodes: Iterable[NodeInfo], services: Iterable[str]) -> dict[str, dict[str, Any]]:
    """/get_resource_info: {"cloud"|"edge": {ip: {service: {n_process, cpu_ratio, mem_ratio}}}}."""
    services = list(services)
    out: dict[str, dict[str, Any]] = {}
    for node in nodes:
        per_service = {s: {"cpu_ratio": node.cpu_ratio, "mem_ratio": node.mem_ratio, "n_process": node.n_process}
                       for s in services if node.can_run(s)}
        out.setdefault(seed_role(node), {}).setdefault(node.ip, per_service)
    return out


def nodes_from_resource_info(resource_info: Mapping[str, Any] | None, cloud_ip: str | None = None) -> list[NodeInfo]:
    """The seed scheduler's resource_info {ip: {service: stats}} -> NodeInfo per ip."""
    nodes = []
    for ip, services in (resource_info or {}).items():
        services = services or {}
        stats = [v for v in services.values() if isinstance(v, Mapping)]
        cpu = max((float(v.get("cpu_ratio", 0.0)) for v in stats), default=0.0)
        mem = max((float(v.get("mem_ratio", 0.0)) for v in stats), default=0.0)
        nproc = max((int(v.get("n_process", 1)) for v in stats), default=1)
        role = "cloud" if ip == cloud_ip else "edge"
        nodes.append(NodeInfo(name=ip, ip=ip.split(":")[0], role=role, services=sorted(services),
                              cpu_ratio=min(cpu, 1.0), mem_ratio=min(mem, 1.0), n_process=nproc))
    return nodes


def observations_from_seed(last_plan_result: Mapping[str, Any] | None, plan: Plan | None,
                           source: SourceInfo | None = None) -> list[Observation]:
    """The seed reports only mean per-stage delay: one observation per stage, if we know where it ran."""
    if not last_plan_result or plan is None:
        return []
    source = source or SourceInfo()
    w, h = target_size(plan.video_conf.resolution, source.width, source.height)
    out = []
    for stage, d in (last_plan_result.get("delay") or {}).items():
        m = plan.flow_mapping.get(stage)
        if m is None or not isinstance(d, (int, float)) or d <= 0:
            continue
        out.append(Observation(stage=stage, node=m.node, grade=m.grade, width=w, height=h,
                               fps=plan.video_conf.fps, quality=plan.video_conf.quality, service_s=float(d)))
    return out
