"""Planner, simulator and scheduling-loop behaviour without compiling the Bayesian model (that is
tests/integration/test_planner_sim.py)."""
from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from scheduler import knobs, sim_scenarios
from scheduler.baselines import GoldenPlanner, GreedyPlanner, PIDPlanner, measured_delay
from scheduler.bayes import BayesModel
from scheduler.bayes_planner import BayesPlanner
from scheduler.plan_reason import plan_basis
from scheduler.interface import NodeInfo, Observation, Plan, PlanningInput, SourceInfo
from scheduler.loop import SchedulerLoop
from scheduler.seed_api import SeedScheduler
from services.dag import dag_from_pipeline
from tests.support.planning import person_input


def test_candidates_capped_at_source_and_enumerate_live_nodes():
    nodes = [NodeInfo(name="a"), NodeInfo(name="b", alive=False), NodeInfo(name="c", services=["object_count"])]
    inp = PlanningInput(job_uid="j", dag=dag_from_pipeline(["yolo_detection", "object_count"]), nodes=nodes,
                        source=SourceInfo(width=1280, height=720, fps=10))
    c = knobs.build_candidates(inp)
    assert [r[0] for r in c.res] == ["360p", "480p", "720p"]
    assert set(c.fps) == {1, 2, 5, 10}
    assert c.nodes == ("a", "c")
    assert set(c.mapping[:, 0]) == {0}  # only "a" runs yolo_detection
    assert c.tunable.tolist() == [True, False]
    assert c.golden_compute() == pytest.approx(c.compute().max())


def test_light_stage_follows_the_stage_before_it_unless_that_node_cannot_run_it():
    nodes = [NodeInfo(name="a"), NodeInfo(name="b"), NodeInfo(name="c", gpu=True)]
    dag = dag_from_pipeline(["yolo_detection", "object_count"])
    c = knobs.build_candidates(PlanningInput(job_uid="j", dag=dag, nodes=nodes))
    assert sorted(map(tuple, c.mapping[: c.n_map].tolist())) == [(0, 0), (1, 1), (2, 2)]
    # The GPU node cannot count: counting then goes to any node that can.
    nodes[2] = NodeInfo(name="c", gpu=True, services=["yolo_detection"])
    c = knobs.build_candidates(PlanningInput(job_uid="j", dag=dag, nodes=nodes))
    assert sorted(map(tuple, c.mapping[: c.n_map].tolist())) == [(0, 0), (1, 1), (2, 0), (2, 1)]


def test_simulator_drops_what_an_overloaded_node_cannot_serve():
    sim = sim_scenarios.scenarios(4)[0].build()
    job = sim.jobs[0]
    c = knobs.build_candidates(sim.planning_input(job, {}))
    edge = c.nodes.index("edge-1")
    golden_on_edge = next(i for i in range(len(c)) if c.fps[i] == c.src_fps and c.grade_idx[i] == 4
                          and c.res_idx[i] == len(c.res) - 1 and c.quality[i] == max(knobs.QUALITY_LEVELS)
                          and set(c.mapping[i]) == {edge})
    light = np.zeros(len(c.nodes))
    idle = sim._evaluate(job, c, np.array([golden_on_edge]), light)
    assert idle.served[0] < 0.1                     # YOLO11x at 1080p/30 fps on a 2-core CPU
    assert idle.f1[0] < 0.8                         # served frames are far apart
    assert np.isfinite(idle.delay[0])               # the generator's window bounds the delay
    assert idle.cost[0] == pytest.approx(1.0)       # compute is what the plan asks for
    # Another job's work on the node cuts this job's frames too (processor sharing).
    busy = sim._evaluate(job, c, np.array([golden_on_edge]), light + 0.5, base=light)
    assert busy.served[0] < idle.served[0]


def test_gaussian_refresh_learns_before_any_compile():
    """Until nutpie has compiled (~25 s after start), refreshes use the Gaussian posterior:
    a node measured 5x slower than its prior says is planned as slow at once."""
    p = BayesPlanner(BayesModel(), background=False, seed=2)  # a model never compiled
    sim = sim_scenarios.Scenario("g", rounds=1, delay=2.0, n_jobs=1).build()
    job = sim.jobs[0]
    inp = sim.planning_input(job, {})
    plan = p.plan(inp)
    node = plan.flow_mapping["yolo_detection"].node
    o = Observation(stage="yolo_detection", node=node, grade=plan.flow_mapping["yolo_detection"].grade,
                    width=640, height=360, fps=5, service_s=1.0, ts=1.0)
    predicted = lambda: float(np.exp(p.times.at_observation(p.snapshot.draws, p.snapshot, "yolo_detection", o)).mean())
    before = predicted()
    measured = [o.model_copy(update={"service_s": float(s), "ts": 1.0 + i // 10})
                for i, s in enumerate(5 * before * np.exp(np.random.default_rng(0).normal(0, 0.1, 40)))]
    p.plan(inp.model_copy(update={"observations": measured, "last_plan": plan}))
    snap = p.refresh_gaussian()
    assert snap.source == "gaussian" and snap.n_lat == 40 and not p.model.compiled
    assert predicted() == pytest.approx(5 * before, rel=0.25)


def test_first_plan_with_measurements_is_not_made_on_the_prior():
    """A job whose node was profiled arrives with measurements: its first plan already reads
    them (a Gaussian posterior, milliseconds), not the prior."""
    p = BayesPlanner(BayesModel(), background=False, seed=2)
    sim = sim_scenarios.Scenario("first", rounds=1, delay=2.0, n_jobs=1).build()
    inp = sim.planning_input(sim.jobs[0], {})
    node = inp.nodes[0].name
    profiled = [Observation(stage="yolo_detection", node=node, grade="n", width=w, height=h, service_s=s, ts=0.0,
                            source="profile") for w, h, s in ((640, 360, 0.4), (854, 480, 0.7), (1280, 720, 1.5))]
    plan = p.plan(inp.model_copy(update={"observations": profiled}))
    assert p.snapshot.source == "gaussian" and p.snapshot.n_lat == 3
    assert plan_basis(plan.reason) == ("gaussian", 3, 0), plan.reason  # what `vdag up` and the benches read
    fresh = BayesPlanner(BayesModel(), background=False, seed=2)
    assert plan_basis(fresh.plan(inp).reason) == ("prior", 0, 0)  # nothing measured yet: the prior it is


def test_seed_function_shape_returns_seed_dicts():
    seed_dag = {
        "generator": "SingleFrameGenerator",
        "flow": ["SingleFrameGenerator", "face_detection", "face_alignment"],
        "input": {
            "face_detection": {"image": "SingleFrameGenerator.image"},
            "face_alignment": {"image": "SingleFrameGenerator.image", "bbox": "face_detection.bbox",
                               "prob": "face_detection.prob"},
        },
    }
    resource_info = {
        "192.168.56.102": {"face_detection": {"n_process": 1, "cpu_ratio": 0.8, "mem_ratio": 0.4},
                           "face_alignment": {"n_process": 1, "cpu_ratio": 0.8, "mem_ratio": 0.4}},
        "114.212.81.11": {"face_detection": {"n_process": 1, "cpu_ratio": 0.2, "mem_ratio": 0.4},
                          "face_alignment": {"n_process": 1, "cpu_ratio": 0.2, "mem_ratio": 0.4}},
    }
    sched = SeedScheduler(PIDPlanner(), cloud_ip="114.212.81.11")
    video_conf, flow_mapping = sched("GLOBAL_ID_1.SUB_ID", seed_dag, resource_info, None, {"delay": 0.3, "accuracy": 0.9})
    assert {"resolution", "fps", "nskip", "ntracking", "encoder"} <= set(video_conf)
    assert set(flow_mapping) == {"face_detection", "face_alignment"}
    for m in flow_mapping.values():
        assert {"model_id", "node_ip", "node_role"} <= set(m)
        assert m["node_ip"] in resource_info and m["node_role"] in ("host", "edge", "cloud")
    # Second call with the seed's last_plan_result shape and its odd constraint forms.
    vc2, fm2 = sched("GLOBAL_ID_1.SUB_ID", seed_dag, resource_info,
                     {"delay": {"face_detection": 0.9, "face_alignment": 0.2}}, {"delay": [-1, 50], "acc_level": 5})
    assert set(fm2) == set(flow_mapping)
    Plan.model_validate({"video_conf": vc2, "flow_mapping": fm2})


class _Source:
    def __init__(self, inputs):
        self.inputs = inputs
        self.saved: dict[str, list[Plan]] = {}
        self.calls = 0

    def running_jobs(self):
        self.calls += 1
        return list(self.inputs)

    def save_plan(self, job_uid, plan):
        self.saved.setdefault(job_uid, []).append(plan)


class _FlakyPlanner:
    name = "flaky"

    def __init__(self):
        self.golden = GoldenPlanner()
        self.calls = 0

    def plan(self, inp):
        self.calls += 1
        if inp.job_uid == "bad" or self.calls == 2:
            raise RuntimeError("boom")
        return self.golden.plan(inp)


def _inputs():
    sim = sim_scenarios.Scenario("l", rounds=1, delay=0.5, n_jobs=1).build()
    good = sim.planning_input(sim.jobs[0], {})
    return [good, good.model_copy(update={"job_uid": "bad"})]


def test_loop_survives_planner_errors_and_wakes(caplog):
    source = _Source(_inputs())
    loop = SchedulerLoop(_FlakyPlanner, source, interval_s=0.05)
    with caplog.at_level(logging.INFO, logger="scheduler.loop"):
        loop.start()
        deadline = time.time() + 5
        while len(source.saved.get("job-0", [])) < 3 and time.time() < deadline:
            time.sleep(0.01)
        assert loop.alive
        assert "bad" not in source.saved and loop.errors >= 2
        loop.stop()
    assert not loop.alive
    assert loop._thread.name == "vdag-scheduler"
    assert any("stopped" in r.message for r in caplog.records)
    assert any("keeping its last plan" in r.message for r in caplog.records)


def test_loop_wake_replans_one_job_at_once():
    source = _Source(_inputs()[:1])
    loop = SchedulerLoop(GoldenPlanner, source, interval_s=30)
    loop.start()
    try:
        deadline = time.time() + 5
        while not source.saved and time.time() < deadline:
            time.sleep(0.01)
        n = len(source.saved["job-0"])
        loop.wake("job-0")
        deadline = time.time() + 5
        while len(source.saved["job-0"]) == n and time.time() < deadline:
            time.sleep(0.01)
        assert len(source.saved["job-0"]) == n + 1
    finally:
        loop.stop()


def test_loop_survives_a_failing_job_source():
    class Broken:
        def running_jobs(self):
            raise ConnectionError("db down")

        def save_plan(self, job_uid, plan):
            pass

    loop = SchedulerLoop(GoldenPlanner, Broken(), interval_s=0.02)
    loop.start()
    time.sleep(0.2)
    assert loop.alive and loop.errors >= 2
    loop.stop()


def _obs(stage_delays: dict[str, float], ts: float = 1.0) -> list[Observation]:
    return [Observation(stage=s, node="edge-1", width=640, height=360, service_s=d, ts=ts) for s, d in stage_delays.items()]


def test_pid_steps_down_when_late_and_up_with_headroom():
    sim = sim_scenarios.Scenario("p", rounds=1, delay=0.5, n_jobs=1).build()
    inp = sim.planning_input(sim.jobs[0], {})
    pid = PIDPlanner()
    start = pid.plan(inp)
    late = pid.plan(inp.model_copy(update={"observations": _obs({"yolo_detection": 2.0}, 1)}))
    px = lambda p: knobs.RESOLUTION_HEIGHTS[p.video_conf.resolution] * (p.video_conf.fps or 30)  # noqa: E731
    assert px(late) < px(start)
    lower = late
    for t in range(2, 12):
        lower = pid.plan(inp.model_copy(update={"observations": _obs({"yolo_detection": 2.0}, t)}))
    assert px(lower) == min(knobs.RESOLUTION_HEIGHTS[r] for r in ("360p",)) * 1  # bottom of the ladder
    assert abs(pid._integral) <= pid.i_max  # anti-windup: clamped, and not growing while saturated
    up = pid.plan(inp.model_copy(update={"observations": _obs({"yolo_detection": 0.01}, 20)}))
    assert px(up) > px(lower)


def test_greedy_changes_one_knob_at_a_time():
    sim = sim_scenarios.Scenario("g", rounds=1, delay=0.5, n_jobs=1).build()
    inp = sim.planning_input(sim.jobs[0], {})
    g = GreedyPlanner()
    p0 = g.plan(inp)
    p1 = g.plan(inp.model_copy(update={"observations": _obs({"yolo_detection": 3.0}, 1)}))
    changed = [p0.video_conf.resolution != p1.video_conf.resolution, p0.video_conf.fps != p1.video_conf.fps,
               p0.flow_mapping["yolo_detection"].grade != p1.flow_mapping["yolo_detection"].grade]
    assert sum(changed) == 1
    p2 = g.plan(inp.model_copy(update={"observations": _obs({"yolo_detection": 0.35}, 2)}))
    assert p2 == p1.model_copy(update={"reason": p2.reason})  # inside the band: hold


def test_measured_delay_uses_latest_window():
    obs = _obs({"a": 1.0, "b": 1.0}, ts=1) + _obs({"a": 0.1, "b": 0.2}, ts=2)
    assert measured_delay(obs) == pytest.approx(0.3)
    assert measured_delay([]) is None


def test_person_detection_is_a_fixed_model_dnn_stage():
    assert knobs.stage_kind("person_detection") == knobs.FIXED
    assert knobs.stage_kind("yolo_detection") == knobs.GRADED
    assert knobs.stage_kind("object_count") == knobs.LIGHT == knobs.stage_kind("render")
    assert not knobs.is_tunable("person_detection") and knobs.is_dnn("person_detection")
    c = knobs.build_candidates(person_input())
    assert c.tunable.tolist() == [False, False, False] and c.fixed_k.tolist() == [True, False, False]
    assert [r[0] for r in c.res] == ["360p", "480p", "720p"]  # 720p is the 576-line source
    assert len(set(c.grade_idx)) == 1  # no grade knob: one grid row per (res, fps, quality)
    # Compute follows the pixels (a DNN), not a light stage's fixed few MFLOPs.
    per_frame = c.compute() / c.fps
    lo, hi = per_frame[c.res_idx == 0].max(), per_frame[c.res_idx == 2].max()
    assert lo > 20 * knobs.NON_DNN_GFLOPS and hi / lo == pytest.approx((768 * 576 + 0.0) / (480 * 360), rel=0.05)
    assert c.golden_compute() == pytest.approx(c.compute().max())
    # Its latency prior sits between YOLO11 s and m on the same pixels (DESIGN.md s.5).
    r = knobs.grade_latency_ratio()
    assert r[1] < knobs.fixed_latency_ratio() < r[2]
    plan = knobs.to_plan(c, 0, person_input().nodes, "t", "")
    assert plan.flow_mapping["person_detection"].grade is None


def test_cold_plan_for_a_person_job_is_sensible():
    p = BayesPlanner(background=False)
    inp = person_input()
    plan = p.plan(inp)
    vc = plan.video_conf
    assert not (vc.resolution == "360p" and vc.fps == 1), plan.reason
    assert plan.flow_mapping["person_detection"].grade is None
    # The prior knows detection is the heavy stage: ~0.2 s at 640x480 on a 2-core CPU.
    c, _ = p._candidates(inp)
    d = p._draws(p.snapshot, 64)
    t = np.exp(np.median(p.times.candidate_draws(d, p.snapshot, c), axis=-1))   # [K, J, R, G]
    assert 0.1 < t[0, 0, 1, 0] < 0.4
    assert t[1, 0, 1, 0] < 0.02 and t[2, 0, 1, 0] < 0.02
    # A 4-core node with two workers affords a higher resolution and/or rate.
    big = p.plan(person_input([NodeInfo(name="cpu", cpu_count=4, n_process=2)], uid="p2"))
    px = lambda pl: knobs.RESOLUTION_HEIGHTS[pl.video_conf.resolution] * (pl.video_conf.fps or 10)  # noqa: E731
    assert px(big) >= px(plan)


def test_loop_makes_the_planner_forget_a_job_that_ended():
    sim = sim_scenarios.Scenario("forget", rounds=1, delay=0.5, n_jobs=2).build()
    source = _Source([sim.planning_input(job, {}) for job in sim.jobs])
    planners: list[BayesPlanner] = []

    def factory():
        planners.append(BayesPlanner(background=False))
        return planners[-1]

    loop = SchedulerLoop(factory, source, interval_s=0.02)
    loop.start()
    try:
        deadline = time.time() + 20
        while len(source.saved) < 2 and time.time() < deadline:
            time.sleep(0.01)
        p = planners[0]
        assert set(p._jobs) == {"job-0", "job-1"}
        source.inputs = source.inputs[:1]  # job-1 ended
        while "job-1" in p._jobs and time.time() < deadline:
            time.sleep(0.01)
        assert set(p._jobs) == {"job-0"} and "job-1" not in p.posterior._obs
        calls = source.calls
        while source.calls < calls + 2 and time.time() < deadline:
            time.sleep(0.01)
        assert set(p._jobs) == {"job-0"}  # the running job is kept
    finally:
        loop.stop()


def test_a_paced_source_queues_less_than_poisson_arrivals_and_no_plan_runs_a_node_past_the_ceiling():
    from scheduler.delay import PACED_CV2, PLAN_OWN_MARGIN, node_arrays, plan_delay

    inp = PlanningInput(job_uid="j", dag=dag_from_pipeline(["yolo_detection"]), nodes=[NodeInfo(name="a")],
                        source=SourceInfo(width=1280, height=720, fps=10))
    c = knobs.build_candidates(inp)
    bg, cap, qdepth, _ = node_arrays(c, inp.nodes)
    idx = np.flatnonzero((c.fps == 5) & (c.ntrack == 0))[:1]
    svc = np.full((1, 1, 1), 0.16)  # one worker, rho = 5 x 0.16 = 0.8
    no_wire = np.zeros(1)
    poisson = plan_delay(c, idx, svc, svc, bg, cap, qdepth, no_wire)[0][0, 0]
    paced = plan_delay(c, idx, svc, svc, bg, cap, qdepth, no_wire, own_cv2=PACED_CV2)[0][0, 0]
    assert poisson == pytest.approx(0.16 + 0.8 / (2 * 0.2) * 0.16)  # M/D/1: 0.48 s
    assert paced == pytest.approx(0.16 + 0.8 / 0.2 * PACED_CV2 / 2 * 0.16)  # 0.19 s
    # Other jobs' frames on the node arrive Poisson-like: the paced job's advantage shrinks.
    busy = plan_delay(c, idx, svc, svc, bg + 0.1, cap, qdepth, no_wire, own_cv2=PACED_CV2)[0][0, 0]
    assert paced < busy < plan_delay(c, idx, svc, svc, bg + 0.1, cap, qdepth, no_wire)[0][0, 0]
    # Past the planner's ceiling a plan never fits, whatever the arrivals: on an idle node its
    # own work read 15 % higher must stay under 0.97, i.e. rho under 0.84...
    heavy = np.full((1, 1, 1), 0.18)  # rho 0.9
    assert np.isfinite(plan_delay(c, idx, heavy, heavy, bg, cap, qdepth, no_wire, own_cv2=PACED_CV2)[0][0, 0])
    assert np.isinf(plan_delay(c, idx, heavy, heavy, bg, cap, qdepth, no_wire, own_cv2=PACED_CV2,
                               own_margin=PLAN_OWN_MARGIN)[0][0, 0])
    # ...while on a node others keep 75 % busy (measured, not hedged) a small plan fits up to ~0.94.
    small = np.full((1, 1, 1), 0.036)  # own 0.18: rho 0.93, which a flat 0.85 ceiling refused
    assert np.isfinite(plan_delay(c, idx, small, small, bg + 0.75, cap, qdepth, no_wire, own_cv2=PACED_CV2,
                                  own_margin=PLAN_OWN_MARGIN)[0][0, 0])
    assert np.isinf(plan_delay(c, idx, small * 1.2, small * 1.2, bg + 0.75, cap, qdepth, no_wire,
                               own_cv2=PACED_CV2, own_margin=PLAN_OWN_MARGIN)[0][0, 0])
