"""`vdag profile`: how long each DNN service takes on this node, per grade and resolution.

The planner's latency priors are published figures for a reference CPU; a node can be 35 %
slower than that or a GPU. A profile is real measurements on this node's hardware with the
worker's own model loading and thread settings, stored as JSON; the tracker hands it to the
planner as latency observations older than any job's (so a job's own measurements win as
they come), and the first plan of the first job already reflects this node.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from services.registry import ServiceContext, get_service
from services.video_conf import resize_to, resolutions_below

PROFILE_VERSION = 1
MAX_TRIAL_CALLS = 16  # a runtime trial takes (rounds + 1) calls per runtime: 10 for two
DEFAULT_SERVICES: tuple[tuple[str, str | None], ...] = (
    ("person_detection", None), ("yolo_detection", "n"), ("yolo_detection", "s"),
)


def cases(src_h: int, services: Iterable[tuple[str, str | None]] = DEFAULT_SERVICES) -> list[dict[str, Any]]:
    return [{"service": s, "grade": g, "resolution": r} for s, g in services for r in resolutions_below(src_h)]


def time_case(frames: list[np.ndarray], case: dict[str, Any], ctx: ServiceContext, repeats: int) -> dict[str, Any]:
    """Median service time of one (service, grade, resolution) over `repeats` frames, after a
    warm-up call (model load and the first predictor setup are not service time)."""
    service = get_service(case["service"])
    params = service.validate_params({"grade": case["grade"]} if case["grade"] else {})
    small = [resize_to(f, case["resolution"]) for f in frames]
    service.run(small[0], {"image": b""}, params, ctx)
    if ctx.models is not None:
        ctx.models.wait_for_exports()  # time the runtime a worker serves with, not PyTorch meanwhile
        service.run(small[0], {"image": b""}, params, ctx)
        # With runtime "auto" the export and PyTorch take turns at a new size until one has
        # measured faster there (services/runtime_trial.py, once per host): time the winner.
        for i in range(MAX_TRIAL_CALLS):
            if not ctx.models.trials_in_progress():
                break
            service.run(small[i % len(small)], {"image": b""}, params, ctx)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        service.run(small[i % len(small)], {"image": b""}, params, ctx)
        times.append(time.perf_counter() - t0)
    h, w = small[0].shape[:2]
    return {**case, "width": int(w), "height": int(h), "service_s": round(statistics.median(times), 5),
            "repeats": repeats}


def profile_node(frames: list[np.ndarray], ctx: ServiceContext, node: str, *, repeats: int = 5,
                 services: Iterable[tuple[str, str | None]] = DEFAULT_SERVICES,
                 progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    rows = []
    for case in cases(frames[0].shape[0], services):
        rows.append(time_case(frames, case, ctx, repeats))
        if progress:
            progress(rows[-1])
    return {"version": PROFILE_VERSION, "node": node, "device": ctx.device, "measured_at": time.time(), "rows": rows}


def save(profile: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{profile['node']}.json"
    path.write_text(json.dumps(profile, indent=1))
    return path


def load_all(directory: Path) -> dict[str, dict[str, Any]]:
    """node -> profile, for every readable profile in the directory (bad files are skipped)."""
    out: dict[str, dict[str, Any]] = {}
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("version") == PROFILE_VERSION and isinstance(data.get("rows"), list):
            out[str(data.get("node", path.stem))] = data
    return out


__all__ = ["cases", "load_all", "profile_node", "save", "time_case"]
