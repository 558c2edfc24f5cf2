"""A plan's own recent frames outweigh the model's reading of other plans' frames
(scheduler/plan_memory.py): proven plans stay within reach, late ones out of it."""
from __future__ import annotations

import numpy as np

from scheduler import knobs
from scheduler.bayes import BayesModel
from scheduler.bayes_planner import BayesPlanner
from scheduler.delay import PlanShape
from scheduler.interface import Observation, UserConstraint
from scheduler.plan_memory import LATE, LATE_FRAMES, MEMORY_S, PROVEN, PlanMemory
from tests.support.planning import person_input, source_segment

KEY = (576, 10.0, 0, 4, (0, 0, 0))


def _delays(*delays: float, first: int = 0) -> dict:
    return {first + i: (0.0, d) for i, d in enumerate(delays)}


def test_verdicts_from_a_plans_frames():
    m = PlanMemory()
    m.record(KEY, _delays(*[0.1] * 9), newest_ts=100.0)
    assert m.verdict(KEY, 1.0, 100.0) is None, "too few frames"
    m.record(KEY, _delays(0.1, first=9), newest_ts=101.0)
    assert m.verdict(KEY, 1.0, 101.0) == PROVEN
    assert m.verdict(KEY, 0.15, 101.0) is None, "within the bound but not with room to spare"
    m.record(KEY, _delays(*[1.5] * (LATE_FRAMES - 1), first=10), newest_ts=102.0)
    assert m.verdict(KEY, 1.0, 102.0) is None, "one or two late frames are a hiccup, and not proof either"
    m.record(KEY, _delays(1.5, first=20), newest_ts=103.0)
    assert m.verdict(KEY, 1.0, 103.0) == LATE
    assert m.verdict(KEY, 1.0, 103.0 + MEMORY_S + 1) is None and not m.records, "forgotten after a while"


def test_a_window_without_frame_numbers_is_not_read_as_one_frame():
    """The simulator's observations carry no sequence number: grouped by time stamp, a window's
    frames would sum to one 'frame' far over the bound."""
    m = PlanMemory()
    for ts in (2.0, 4.0, 6.0):
        m.record(KEY, {ts: (0.5, 3.0)}, newest_ts=ts)
    assert m.verdict(KEY, 1.0, 6.0) is None and not m.records


def test_the_same_frame_read_in_two_rounds_counts_once():
    m = PlanMemory()
    for _ in range(3):
        m.record(KEY, _delays(1.5, 1.5), newest_ts=100.0)
    assert m.verdict(KEY, 1.0, 100.0) is None


def _frames(first_seq: int, n: int, t0: float, svc_s: float, wait_s: float, ntracking: int) -> list[Observation]:
    """Detected frames of the source resolution at the 10-fps source's rate, `ntracking` tracked after each."""
    rng = np.random.default_rng(first_seq)
    out = []
    for i in range(n):
        ts = t0 + i * (1 + ntracking) / 10.0
        for stage, svc in (("person_detection", svc_s), ("object_count", 4e-5), ("render", 0.004)):
            out.append(Observation(stage=stage, node="cpu", width=768, height=576, fps=0, ntracking=ntracking,
                                   quality=90, service_s=float(svc * np.exp(rng.normal(0, 0.05))),
                                   queue_s=wait_s / 3, ts=ts, seq=first_seq + i))
    return out


def _source_plan(c: knobs.Candidates, ntracking: int) -> int:
    return int(np.flatnonzero((c.res_idx == len(c.res) - 1) & (c.fps == c.src_fps) & (c.ntrack == ntracking)
                              & (c.quality == 90))[0])


def _decide(p: BayesPlanner, inp, c, observations, running: int) -> int:
    measured = inp.model_copy(update={"observations": observations,
                                      "last_plan": knobs.to_plan(c, running, inp.nodes, p.name, "running")})
    p.plan(measured)
    p.refresh_gaussian()
    return c.index_of_plan(p.plan(measured))


def _every_frame_then_tracked(every_frames, tracked_frames) -> tuple[int, int, int, int]:
    """A job ran detecting every source frame (every_frames), then tracking every other one
    (tracked_frames after them), D = 1 s: (the every-frame plan, the first decision, the next
    decision, the next decision of a planner that saw only the second run)."""
    inp = person_input().model_copy(update={"constraint": UserConstraint(delay=1.0)})
    c = knobs.build_candidates(inp)
    every, tracked = _source_plan(c, 0), _source_plan(c, 1)
    p = BayesPlanner(BayesModel(), background=False, seed=3)
    first = _decide(p, inp, c, every_frames, every)
    then = _decide(p, inp, c, every_frames + tracked_frames, tracked)
    fresh = _decide(BayesPlanner(BayesModel(), background=False, seed=3), inp, c, every_frames + tracked_frames, tracked)
    return every, first, then, fresh


def test_a_plan_whose_frames_met_the_bound_comes_back_though_slower_frames_since_say_it_cannot():
    """vtest.avi, D = 1 s: every frame detected took 0.063-0.073 s with no frame late; tracking
    every other frame, the detector took 0.09-0.14 s, and from those the model ruled detecting
    every frame out (P(delay <= D) 0.00) for the rest of the run."""
    every, first, then, fresh = _every_frame_then_tracked(_frames(0, 60, 10.0, 0.068, 0.01, 0),
                                                          _frames(60, 40, 16.0, 0.13, 0.01, 1))
    assert first == every and then == every
    assert fresh != every, "without the memory, the slower frames rule it out (the test's premise)"


def test_a_plan_whose_frames_were_late_is_not_chosen_again_soon():
    """Megamind.avi, D = 0.5 s: 720p@10fps queued 13 frames past D, and 30 s later the model,
    reading cheaper plans' frames, sent the job back to it for 13 more."""
    every, _, then, fresh = _every_frame_then_tracked(_frames(0, 10, 10.0, 0.07, 1.2, 0),
                                                      _frames(10, 40, 11.5, 0.04, 0.005, 1))
    assert then != every
    assert fresh == every, "without the memory, the fast frames since make it look safe (the test's premise)"


def test_a_late_plan_rules_out_the_plans_that_detect_as_often_or_more_at_its_resolution():
    """A slow node, D = 0.5 s: 720p@5fps track 2 had 6 frames late; 720p@10fps track 4 detects
    2 frames a second to its 1.7 and must not be tried next, nor 720p@2fps (2 a second); 480p,
    720p@1fps and 720p@5fps track 4 (1 a second) stay open."""
    from scheduler.plan_memory import plan_key, remembered_candidates

    inp = person_input().model_copy(update={"constraint": UserConstraint(delay=0.5)})
    c = knobs.build_candidates(inp)
    src = len(c.res) - 1

    def index(res_idx: int, fps: float, ntracking: int) -> int:
        return int(np.flatnonzero((c.res_idx == res_idx) & np.isclose(c.fps, fps) & (c.ntrack == ntracking)
                                  & (c.quality == 90))[0])

    late = index(src, 5, 2)
    m = PlanMemory()
    m.record(plan_key(c, late), _delays(*[0.6] * LATE_FRAMES), newest_ts=100.0)
    ruled_out = set(remembered_candidates(m, c, 0.5, 100.0)[LATE].tolist())
    assert {late, index(src, 10, 4), index(src, 10, 0), index(src, 5, 0), index(src, 2, 0)} <= ruled_out
    assert not {index(src, 1, 0), index(src, 5, 4), index(src - 1, 10, 4)} & ruled_out


def _detected(seq: int, height: int, rate: float, ntracking: int, delay: float, ts: float,
              node: str = "cpu") -> Observation:
    return Observation(stage="person_detection", node=node, width=height * 4 // 3, height=height, fps=rate,
                       ntracking=ntracking, quality=90, service_s=delay, queue_s=0.0, ts=ts, seq=seq)


def test_a_plans_frames_that_land_after_the_switch_still_count():
    """Left on its second late frame, a plan whose third arrives after the switch is ruled out."""
    m = PlanMemory()
    old, new = (720, 10.0, 4, 0, (0,)), (360, 15.0, 4, 0, (0,))
    obs = [_detected(i, 720, 10.0, 4, 0.6, 20.0 + i) for i in range(2)]
    m.record_ran(obs, {"person_detection"}, 24.0, old, PlanShape(720, 10.0, 4))
    assert m.verdict(old, 0.5, 21.0) is None  # two late frames: a hiccup so far
    obs += [_detected(2, 720, 10.0, 4, 0.6, 22.0), _detected(3, 360, 15.0, 4, 0.2, 22.5)]
    running = m.record_ran(obs, {"person_detection"}, 24.0, new, PlanShape(360, 15.0, 4))
    assert list(running) == [3]
    assert m.verdict(old, 0.5, 22.5) == LATE


def test_a_plan_on_another_node_is_not_judged_by_the_frames_of_the_one_it_replaced():
    """Same resolution, rate and tracking, detector moved from the edge to the cloud: the edge
    plan's late frames rule out the edge plan, not the cloud plan that replaced it."""
    m = PlanMemory()
    edge, cloud = (720, 10.0, 4, 0, (0,)), (720, 10.0, 4, 0, (1,))
    on_edge = PlanShape(720, 10.0, 4, (("person_detection", "edge", None),))
    on_cloud = PlanShape(720, 10.0, 4, (("person_detection", "cloud", None),))
    obs = [_detected(i, 720, 10.0, 4, 0.6, 20.0 + 0.2 * i, node="edge") for i in range(LATE_FRAMES)]
    m.record_ran(obs, {"person_detection"}, 24.0, edge, on_edge)
    obs += [_detected(LATE_FRAMES + i, 720, 10.0, 4, 0.1, 21.0 + 0.2 * i, node="cloud") for i in range(3)]
    running = m.record_ran(obs, {"person_detection"}, 24.0, cloud, on_cloud)
    assert sorted(running) == [LATE_FRAMES, LATE_FRAMES + 1, LATE_FRAMES + 2]
    assert m.verdict(edge, 0.5, 21.5) == LATE
    assert m.verdict(cloud, 0.5, 21.5) is None
    # The premise: without the placement both plans are one shape and the cloud plan inherits the late frames.
    blind = PlanMemory()
    blind.record_ran(obs[:LATE_FRAMES], {"person_detection"}, 24.0, edge, PlanShape(720, 10.0, 4))
    blind.record_ran(obs, {"person_detection"}, 24.0, cloud, PlanShape(720, 10.0, 4))
    assert blind.verdict(cloud, 0.5, 21.5) == LATE


def test_frames_that_ran_beside_the_first_scored_segment_are_forgotten_once_it_is_scored():
    """The first segment is scored unstopped beside the frames: a plan late while it ran is
    not ruled out by those frames once it is scored; frames that start after it still count,
    and a later segment (stopped while frames run) forgets nothing."""
    m = PlanMemory()
    late = (720, 10.0, 4, 0, (0,))
    shape = PlanShape(720, 10.0, 4)
    obs = [_detected(i, 720, 10.0, 4, 1.2, 3.0 + 0.2 * i) for i in range(LATE_FRAMES)]
    m.record_ran(obs, {"person_detection"}, 24.0, late, shape)
    assert m.verdict(late, 1.0, 4.0) == LATE
    m.first_segment_scored(3.5)
    m.record_ran(obs, {"person_detection"}, 24.0, late, shape)
    assert m.verdict(late, 1.0, 4.0) is None, "started before the segment was scored: not read again"
    obs += [_detected(LATE_FRAMES + i, 720, 10.0, 4, 1.2, 5.0 + 0.2 * i) for i in range(LATE_FRAMES)]
    m.first_segment_scored(5.5)
    m.record_ran(obs, {"person_detection"}, 24.0, late, shape)
    assert m.verdict(late, 1.0, 6.0) == LATE, "started after it: late on their own"


def test_a_plan_late_beside_the_first_segment_is_chosen_again_once_it_is_scored():
    """Megamind.avi on a slow node, D = 1 s: frames late while the first segment was scored
    ruled out 480p and 720p, and the job ran 360p from 12 s to 34 s. The same late frames
    with the segment scored before they started still rule the plan out."""
    inp = person_input().model_copy(update={"constraint": UserConstraint(delay=1.0)})
    c = knobs.build_candidates(inp)
    every, tracked = _source_plan(c, 0), _source_plan(c, 1)
    late_frames = _frames(0, 10, 10.0, 0.07, 1.2, 0)
    fast_frames = _frames(10, 40, 11.5, 0.04, 0.005, 1)
    chosen = {}
    for scored_at in (11.2, 5.0):
        segment = source_segment(scored_at)
        p = BayesPlanner(BayesModel(), background=False, seed=3)
        _decide(p, inp, c, late_frames + segment, every)
        chosen[scored_at] = _decide(p, inp, c, late_frames + segment + fast_frames, tracked)
    assert chosen[11.2] == every
    assert chosen[5.0] != every, "late after the segment was scored: ruled out (the test's premise)"

