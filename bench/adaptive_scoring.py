"""How bench/adaptive_real.py scores a run: frame-level F1 over every source frame (the boxes
shown for it: the newest stored result at or before it), late frames, 2-s windows, the
calibration of the planner's predicted E[F1] against them, and the time to its first
posterior from real observations.

Beside it, `frame_f1_live`: what a viewer that plays the stream D seconds behind the source
sees. Source frame i is shown at t_i + D with the newest result of a frame at or before it
that had arrived by then; a late result is not shown for its own frame, only carried to
frames after it. `frame_f1` counts a late result as if it had come in time, so a config that
is late on most frames (golden on a node too slow for it) keeps the F1 of its detections;
the live figure charges it what its viewer loses."""
from __future__ import annotations

import re

import numpy as np

from bench.common import pct
from scheduler.plan_reason import plan_basis
from services.profiling import frame_level_f1

WINDOW_S = 2.0
CALIBRATION_AFTER_S = 20.0
E_F1 = re.compile(r"E\[F1\]=([0-9.]+)")


def score(run: dict, golden: list[list[dict]], src_fps: float, delay: float, golden_detect_s: float) -> dict:
    frames = sorted((r for r in run["results"] if not r["lost"]), key=lambda r: r["capture_ts"])
    if not frames:
        return {"frame_f1": 0.0, "late_share": 1.0, "fps_out": 0.0, "compute_ratio": None}
    last_idx = min(len(golden) - 1, int(round(frames[-1]["capture_ts"] * src_fps)))
    n = last_idx + 1
    per_frame = [frame_level_f1([s], [g]) for s, g in zip(shown_per_source_frame(frames, n, src_fps), golden)]
    live = [frame_level_f1([s], [g]) for s, g in zip(shown_per_source_frame(frames, n, src_fps, delay), golden)]
    lat = [r["latency_s"] for r in frames]
    video_s = (last_idx + 1) / src_fps
    detect_s = sum(s["service_s"] for r in frames for s in r["stages"] if s["stage"] == "detect")
    tracked = sum(1 for r in frames if (r["outputs"].get("detect") or {}).get("tracked"))
    windows = []
    for w0 in np.arange(0, video_s, WINDOW_S):
        lo, hi = int(w0 * src_fps), int(min(video_s, w0 + WINDOW_S) * src_fps)
        if hi > lo:
            windows.append((float(w0), float(np.mean(per_frame[lo:hi]))))
    return {
        "frame_f1": round(float(np.mean(per_frame)), 4),
        "frame_f1_live": round(float(np.mean(live)), 4),
        "late_share": round(sum(x > delay for x in lat) / len(lat), 4),
        "fps_out": round(len(frames) / video_s, 2),
        "compute_ratio": round(golden_detect_s * src_fps / (detect_s / video_s), 2) if detect_s else None,
        "frames_out": len(frames),
        "frames_tracked": tracked,
        "frames_dropped": run["stats"].get("frames_dropped", 0),
        "delay_p50_s": round(pct(lat, 50), 3),
        "delay_p95_s": round(pct(lat, 95), 3),
        # When and how late the late frames were (capture s, delay s, detected or tracked):
        # where the late share comes from (start-up, a plan switch, a profiled frame).
        "late_frames": [(round(r["capture_ts"], 1), round(r["latency_s"], 2),
                         "tracked" if (r["outputs"].get("detect") or {}).get("tracked") else "detected")
                        for r in frames if r["latency_s"] > delay],
        "windows": windows,
        "plans": [{"t_s": round(_ts(p["created_at"]) - run["t_submit"], 1), **p["video_conf"],
                   "reason": p["reason"]} for p in run["plans"]],
    }


def shown_per_source_frame(frames: list[dict], n: int, src_fps: float, delay: float | None = None) -> list[list[dict]]:
    """The detections shown for each of the first n source frames: the newest result at or
    before the frame; with `delay`, the newest one that had also arrived by the frame's
    deadline (capture + delay; a result arrives at its capture + latency_s, both in the
    paced source's time). `frames`: stored results sorted by capture_ts."""
    idx = [int(round(r["capture_ts"] * src_fps)) for r in frames]
    boxes = [(r["outputs"].get("detect") or {}).get("detections") or [] for r in frames]
    arrived = [r["capture_ts"] + r["latency_s"] for r in frames]
    shown: list[list[dict]] = []
    j = 0  # results of frames at or before i: frames[:j]
    for i in range(n):
        while j < len(frames) and idx[j] <= i:
            j += 1
        k = j - 1
        if delay is not None:
            while k >= 0 and arrived[k] > i / src_fps + delay:
                k -= 1
        shown.append(boxes[k] if k >= 0 else [])
    return shown


def _ts(iso: str) -> float:
    from datetime import datetime, timezone

    dt = datetime.fromisoformat(iso)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _conf_key(vc: dict) -> tuple:
    return tuple(vc.get(k) for k in ("resolution", "fps", "nskip", "ntracking", "quality"))


def calibration(run: dict, summary: dict) -> float | None:
    """Mean |E[F1] predicted - measured frame-level F1| over windows after CALIBRATION_AFTER_S;
    each window's (start s, predicted, measured) goes to summary["calibration_windows"], so a
    run's JSON shows whether the error is a bias (the model under- or over-rating the plan) or
    the windows' own spread around it.
    The prediction is the planner's latest for the plan whose frames fill the window: a plan it
    keeps is re-predicted every round (a kept plan is not stored again, so the stored plan's
    reason holds only the prediction made when it was first chosen, before any segment)."""
    frames = sorted((r for r in run["results"] if not r["lost"]), key=lambda r: r["capture_ts"])
    confs = {p["id"]: _conf_key(p["video_conf"]) for p in run["plans"]}
    decided = [(d["t"] - run["t_submit"], _conf_key(d["video_conf"]), float(m.group(1)))
               for d in run["decisions"] if (m := E_F1.search(d["reason"]))]
    errs, pairs = [], []
    for w0, measured in summary["windows"]:
        if w0 < CALIBRATION_AFTER_S:
            continue
        ids = [r["plan_id"] for r in frames if w0 <= r["capture_ts"] < w0 + WINDOW_S and r["plan_id"] in confs]
        if not ids:
            continue
        conf = confs[max(set(ids), key=ids.count)]
        predicted = [e for t, c, e in decided if c == conf and t <= w0 + WINDOW_S]
        if predicted:
            errs.append(abs(predicted[-1] - measured))
            pairs.append((w0, predicted[-1], round(measured, 4)))
    summary["calibration_windows"] = pairs
    summary.update(calibration_split(pairs))
    return round(float(np.mean(errs)), 4) if errs else None


def calibration_split(pairs: list[tuple[float, float, float]]) -> dict:
    """What the mean |error| is made of: `calibration_bias` = mean(predicted - measured), the
    planner under- (< 0) or over-rating its plans; `calibration_spread` = mean |measured - their
    mean|, what even a prediction of the run's exact mean F1 would be off by, window to window."""
    if not pairs:
        return {"calibration_bias": None, "calibration_spread": None}
    predicted, measured = np.array([p[1] for p in pairs]), np.array([p[2] for p in pairs])
    return {"calibration_bias": round(float(np.mean(predicted - measured)), 4),
            "calibration_spread": round(float(np.mean(np.abs(measured - measured.mean()))), 4)}


def first_posterior_s(run: dict) -> float | None:
    """First frame stored -> first decision made from real observations (a Gaussian or sampled
    posterior with at least one latency observation)."""
    if run["t_first"] is None:
        return None
    for d in run["decisions"]:
        basis = plan_basis(d["reason"])
        if basis and basis[0] != "prior" and basis[1] > 0:
            return round(max(d["t"] - run["t_first"], 0.0), 2)
    return None
