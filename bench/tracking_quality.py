"""How good are tracked boxes? vtest.avi, ntracking = 4, against the golden detections.

    .venv/bin/python -m bench.tracking_quality            # ~10 s once bench/adaptive_real.py cached the golden boxes

Every 5th source frame is "detected" with the golden detections (the detector's own error is
left out: this measures the tracker); its boxes are tracked (services/tracking.py) onto the
next 4 frames at the given resolution. Reported: mean IoU of each tracked box with its best
golden box on the same frame (`mean_iou`), the share of golden boxes matched at IoU >= 0.5
(`recall_at_05`), frame-level F1 of the tracked frames beside that of the detected frame's
boxes held on them (`carried_frame_f1`: what the frames would show without a tracker), and identity switches per 100 frames:
ids assigned by the aggregator's matcher (services/line_count.py) on the tracked stream,
against ids assigned the same way on the golden stream; a switch is a golden track whose
matched stream id changes. Writes bench/results/tracking_quality.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS_DIR, VTEST, machine, write_json
from services.accuracy import box_iou
from services.line_count import LineCounter
from services.profiling import frame_level_f1
from services.tracking import to_gray, track_detections
from services.video_conf import resize_to


def _id_switches(stream: list[dict], golden: list[dict], last: dict[int, int]) -> int:
    """CLEAR-MOT identity switches of one frame: a correspondence that still holds (IoU >= 0.5)
    is kept; the rest are matched by IoU (optimal assignment), and a golden track matched to
    another stream id than before is a switch."""
    from scipy.optimize import linear_sum_assignment

    by_id = {d["id"]: d for d in stream}
    kept_g, kept_s = set(), set()
    for g in golden:
        sid = last.get(g["id"])
        if sid in by_id and sid not in kept_s and box_iou(by_id[sid]["box"], g["box"]) >= 0.5:
            kept_g.add(g["id"])
            kept_s.add(sid)
    rest_g = [g for g in golden if g["id"] not in kept_g]
    rest_s = [d for d in stream if d["id"] not in kept_s]
    if not rest_g or not rest_s:
        return 0
    cost = np.array([[1 - box_iou(d["box"], g["box"]) for d in rest_s] for g in rest_g])
    switches = 0
    for gi, si in zip(*linear_sum_assignment(cost)):
        if cost[gi, si] <= 0.5:
            g, sid = rest_g[gi], rest_s[si]["id"]
            switches += g["id"] in last and last[g["id"]] != sid
            last[g["id"]] = sid
    return switches


def run(frames: list[np.ndarray], golden: list[list[dict]], ntracking: int, resolution: str) -> dict:
    small = [to_gray(resize_to(f, resolution)) for f in frames]
    shown: list[list[dict]] = []
    t0 = time.perf_counter()
    track_s = []
    for i in range(len(frames)):
        if i % (ntracking + 1) == 0:
            shown.append(golden[i])
        else:
            t = time.perf_counter()
            shown.append(track_detections(small[i - 1], small[i], shown[-1]))
            track_s.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    ious, matched, total = [], 0, 0
    tracked_idx = [i for i in range(len(frames)) if i % (ntracking + 1)]
    for i in tracked_idx:
        for d in shown[i]:
            ious.append(max((box_iou(d["box"], g["box"]) for g in golden[i]), default=0.0))
        total += len(golden[i])
        matched += sum(1 for g in golden[i] if any(box_iou(d["box"], g["box"]) >= 0.5 for d in shown[i]))
    ours, ref = LineCounter(), LineCounter()
    switches = 0
    last: dict[int, int] = {}  # golden track id -> the stream id it was matched to
    for i in range(len(frames)):
        a, b = ours.update(shown[i]), ref.update(golden[i])
        switches += _id_switches(a, b, last)
    return {
        "ntracking": ntracking, "resolution": resolution, "frames": len(frames), "tracked_frames": len(tracked_idx),
        "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
        "recall_at_05": round(matched / total, 4) if total else None,
        "tracked_frame_f1": round(frame_level_f1([shown[i] for i in tracked_idx], [golden[i] for i in tracked_idx]), 4),
        # What the same frames would show with no tracker: the detected frame's boxes held.
        "carried_frame_f1": round(frame_level_f1([golden[i - i % (ntracking + 1)] for i in tracked_idx],
                                                 [golden[i] for i in tracked_idx]), 4),
        "id_switches_per_100_frames": round(100 * switches / len(frames), 2),
        "track_ms_p50": round(1000 * float(np.median(track_s)), 2) if track_s else None,
        "wall_s": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    from bench.adaptive_videos import read_video

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "tracking_quality.json")
    args = ap.parse_args(argv)
    frames, _ = read_video(VTEST, args.seconds + 2)
    caches = sorted((RESULTS_DIR / ".cache").glob("golden-vtest-*.json"))
    golden = next((json.loads(c.read_text()) for c in caches if len(json.loads(c.read_text())) >= len(frames)), None)
    if golden is None:
        raise SystemExit("run bench/adaptive_real.py first: it caches the golden detections of vtest.avi")
    golden = golden[: len(frames)]
    rows = [run(frames, golden, k, res) for k in (4, 2) for res in ("480p", "source")]
    data = {"machine": machine(), "source": str(VTEST), "runs": rows}
    write_json(args.out.name, data, args.out)
    print(f"{'ntracking':>9} {'res':>7} {'mean IoU':>9} {'recall@.5':>10} {'F1':>6} {'held F1':>8} {'ID sw/100':>10} {'ms':>6}")
    for r in rows:
        print(f"{r['ntracking']:>9} {r['resolution']:>7} {r['mean_iou']:>9} {r['recall_at_05']:>10} "
              f"{r['tracked_frame_f1']:>6} {r['carried_frame_f1']:>8} {r['id_switches_per_100_frames']:>10} {r['track_ms_p50']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
