"""Are profiling segments an unbiased reading of what a plan shows live?

    .venv/bin/python -m bench.segment_bias            # ~2 min on a 2-core host
    .venv/bin/python -m bench.segment_bias --resolution 360p --every 5

The planner learns a job's accuracy from 10-frame segments scored in the worker
(services/profiling.score_segment, against golden boxes detected on the segment's own frames);
the benches measure a plan on every source frame against golden boxes of the raw frames. This
runs both on the same vtest.avi frames, offline, in the worker's runtime: one plan (a resolution,
every source frame kept, ntracking 4) as a live chain over 60 s, and segments every 5 s scored
the way a worker scores them. It prints, per segment, the segment's track-4 and detect-only F1
beside the live chain's F1 on the same frames, and the means: a segment mean far from the
live-same mean would be a bias of the segments; their spread is what one segment can tell.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.adaptive_videos import golden_for, person_detector, read_video
from bench.common import RESULTS_DIR, VTEST, machine, print_table, write_json
from services.profiling import SEGMENT_QUALITY, frame_level_f1, score_segment
from services.tracking import to_gray, track_detections
from services.video_conf import decode_jpeg, encode_jpeg, resize_to

NTRACKING = 4
QUALITY = 90
SEGMENT_FRAMES = 10


def live_chain(frames, detect, resolution: str) -> list[list[dict]]:
    """The boxes shown on every frame: detected on every (NTRACKING+1)th, tracked on the rest."""
    coded = [decode_jpeg(encode_jpeg(resize_to(f, resolution), QUALITY)) for f in frames]
    shown, boxes, prev = [], [], None
    for i, frame in enumerate(coded):
        gray = to_gray(frame)
        boxes = detect(frame) if i % (NTRACKING + 1) == 0 else track_detections(prev, gray, boxes)
        shown.append(boxes)
        prev = gray
    return shown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", default="480p")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--every", type=float, default=5.0, help="a segment every this many seconds of video")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "segment_bias.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    frames, fps = read_video(VTEST, args.seconds + 2)
    frames = frames[: int(args.seconds * fps)]
    golden = golden_for(VTEST, args.seconds, None, frames)[: len(frames)]
    detect = person_detector("auto")  # the worker's runtime
    live = [frame_level_f1([s], [g]) for s, g in zip(live_chain(frames, detect, args.resolution), golden)]
    rows = []
    for start in range(int(fps), len(frames) - SEGMENT_FRAMES, int(args.every * fps)):
        segment = [decode_jpeg(encode_jpeg(f, SEGMENT_QUALITY)) for f in frames[start:start + SEGMENT_FRAMES]]
        seg_golden = [detect(f) for f in segment]
        scored = score_segment(segment, detect, seg_golden, [args.resolution], [1], qualities=(QUALITY,))
        f1 = {r["ntracking"]: r["f1"] for r in scored}
        same = slice(start, start + SEGMENT_FRAMES)
        rows.append({"start_s": round(start / fps, 1), "segment_track4": f1[NTRACKING], "segment_detect": f1[0],
                     "live_same_frames": round(float(np.mean(live[same])), 4),
                     "segment_golden_vs_raw_golden": round(frame_level_f1(seg_golden, golden[same]), 4)})
    seg4 = [r["segment_track4"] for r in rows]
    result = {
        "machine": machine(),
        "setup": f"vtest.avi {args.seconds:g} s, {args.resolution}, every frame kept, ntracking {NTRACKING}, "
                 f"q{QUALITY}; a {SEGMENT_FRAMES}-frame segment every {args.every:g} s",
        "live_f1": round(float(np.mean(live)), 4),
        "segment_track4_mean": round(float(np.mean(seg4)), 4),
        "segment_track4_sd": round(float(np.std(seg4, ddof=1)), 4),
        "live_same_frames_mean": round(float(np.mean([r["live_same_frames"] for r in rows])), 4),
        "segment_detect_mean": round(float(np.mean([r["segment_detect"] for r in rows])), 4),
        "segments": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print_table("segments against the live chain", [(f"segment at {r['start_s']} s", f"{r['segment_track4']:.3f} "
                f"(detect {r['segment_detect']:.3f}) vs live {r['live_same_frames']:.3f}") for r in rows]
                + [(k, result[k]) for k in ("live_f1", "segment_track4_mean", "segment_track4_sd",
                                            "live_same_frames_mean", "segment_detect_mean", "wall_s")])
    print(f"wrote {write_json('segment_bias.json', result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
