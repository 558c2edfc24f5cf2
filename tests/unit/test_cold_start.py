"""A job's first seconds: the first segment is scored beside the frames and slows them where
nothing shows it. Until that segment is scored or enough frames are measured
(scheduler.bayes_planner.COLD_FRAMES), the planner does not load the node more than the running
plan does; until it is scored, a running plan whose frames are all in time stays
(COLD_HOLD_FRAMES)."""
from __future__ import annotations

import numpy as np

from scheduler import bayes_planner, job_accuracy, knobs
from scheduler.bayes import BayesModel
from scheduler.bayes_planner import BayesPlanner
from scheduler.interface import Observation, UserConstraint
from tests.support.planning import person_input, slow_node_profile_rows, source_segment


def _frames_480p_5fps_track2(n: int) -> list[Observation]:
    out = []
    for i in range(n):
        ts = 10.0 + 0.6 * i
        out += [Observation(stage="person_detection", node="cpu", width=640, height=480, fps=5, ntracking=2,
                            quality=90, service_s=0.30, queue_s=0.005, ts=ts, seq=i),
                Observation(stage="object_count", node="cpu", width=640, height=480, fps=5, ntracking=2,
                            quality=90, service_s=4e-5, queue_s=0.001, ts=ts, seq=i)]
    return out


def _chosen_after(frames: list[Observation]):
    """The plan after 480p@5fps track 2 has run these frames on a slow node, D = 0.5 s."""
    inp = person_input().model_copy(update={"constraint": UserConstraint(delay=0.5)})
    c = knobs.build_candidates(inp)
    running = int(np.flatnonzero((c.height == 480) & np.isclose(c.fps, 5) & (c.ntrack == 2) & (c.quality == 90))[0])
    plan = knobs.to_plan(c, running, inp.nodes, "bayes", "running")
    p = BayesPlanner(BayesModel(), background=False, seed=3)
    m = inp.model_copy(update={"observations": slow_node_profile_rows() + frames, "last_plan": plan})
    p.plan(m)
    p.refresh_gaussian()
    return p.plan(m)


def _next_plan_detections_per_s(n_frames: int) -> tuple[float, float]:
    """(running, chosen) detected frames per second on a slow node at D = 0.5 s."""
    chosen = _chosen_after(_frames_480p_5fps_track2(n_frames)).video_conf
    return 5.0 / 3, chosen.fps / (1 + chosen.ntracking)


def test_three_frames_in_no_heavier_plan(monkeypatch):
    running, chosen = _next_plan_detections_per_s(3)
    assert chosen <= running + 1e-9
    monkeypatch.setattr(bayes_planner, "COLD_FRAMES", 0)  # the premise: without the guard it would
    running, unguarded = _next_plan_detections_per_s(3)
    assert unguarded > running


def _slowed(frames: list[Observation], service_s: float) -> list[Observation]:
    return [o.model_copy(update={"service_s": service_s}) if o.stage == "person_detection" else o for o in frames]


def test_before_its_first_segment_a_plan_whose_frames_are_in_time_holds(monkeypatch):
    """25 frames of 480p@5fps track 2 slowed to 0.47 s by the first segment scored beside them,
    none over D = 0.5 s, no accuracy measured yet: the plan stays."""
    frames = _slowed(_frames_480p_5fps_track2(25), 0.47)
    held = _chosen_after(frames)
    assert (held.video_conf.resolution, held.video_conf.fps, held.video_conf.ntracking) == ("480p", 5, 2), held.reason
    monkeypatch.setattr(bayes_planner, "COLD_HOLD_FRAMES", 10**6)  # the premise: the model alone would leave it
    left = _chosen_after(frames).video_conf
    assert (left.resolution, left.fps, left.ntracking) != ("480p", 5, 2)
    monkeypatch.setattr(bayes_planner, "COLD_HOLD_FRAMES", 5)
    late = _chosen_after(_slowed(_frames_480p_5fps_track2(25), 0.47)[:-2] + _slowed(_frames_480p_5fps_track2(25), 0.6)[-2:])
    assert (late.video_conf.resolution, late.video_conf.fps, late.video_conf.ntracking) != ("480p", 5, 2)  # one late frame ends the hold


def _fast_frames(n: int) -> list[Observation]:
    """Every source frame detected at 576p on a fast node: 0.06 s each, nothing queued."""
    return [Observation(stage=stage, node="cpu", width=768, height=576, fps=0, ntracking=0, quality=90,
                        service_s=svc, queue_s=0.005, ts=10.0 + 0.1 * i, seq=i)
            for i in range(n) for stage, svc in (("person_detection", 0.06), ("object_count", 4e-5))]


def _detections_per_s_after(segments: list[Observation]) -> float:
    inp = person_input().model_copy(update={"constraint": UserConstraint(delay=1.0)})
    c = knobs.build_candidates(inp)
    running = int(np.flatnonzero((c.res_idx == len(c.res) - 1) & (c.fps == c.src_fps) & (c.ntrack == 0)
                                 & (c.quality == 90))[0])
    p = BayesPlanner(BayesModel(), background=False, seed=3)
    m = inp.model_copy(update={"observations": _fast_frames(40) + segments,
                               "last_plan": knobs.to_plan(c, running, inp.nodes, "bayes", "running")})
    p.plan(m)
    p.refresh_gaussian()
    chosen = p.plan(m).video_conf
    return (chosen.fps or c.src_fps) / (1 + chosen.ntracking)


def test_one_noisy_segment_does_not_trade_detections_away(monkeypatch):
    """A fast node, vtest.avi: six frames scored detecting 5 a second (0.88) above detecting all
    10 (0.83), and the job detected half its frames for 10 s. A cell's own scores do not narrow
    the gap the job's model sees between keeping fewer frames and more."""
    segment = source_segment(11.0, every=0.83, track1=0.88, half=0.88)
    assert _detections_per_s_after(segment) == 10
    plain = job_accuracy.more_detection_never_worse
    # The premise: capped only at equal, both read 0.83 and the cheaper one runs.
    monkeypatch.setattr(job_accuracy, "more_detection_never_worse", lambda f1, c, fitted=None: plain(f1, c))
    assert _detections_per_s_after(segment) < 10
