"""scheduler.seed_format: the one reading of every seed field, on the seed documents' own examples."""
from __future__ import annotations

import pytest

from scheduler.interface import NodeInfo, Plan, StageMapping, UserConstraint
from scheduler.seed_format import (
    SeedFormatError,
    agg_entry,
    cluster_info,
    constraint_from_seed,
    constraint_update_from_seed,
    plan_from_seed,
    plan_to_seed,
    resource_info,
    runtime_summary,
)
from services.records import FrameRecord
from services.video_conf import VideoConf


@pytest.mark.parametrize("raw, expected", [
    ({"delay": 0.8, "accuracy": 0.9}, (0.8, 0.9)),  # seed 003 /query/submit_query
    ({"delay": 0.3, "accuracy": 10}, (0.3, 0.1)),  # seed 003 constraint update: accuracy 10 -> 10 %
    ({"delay": [-1, 50], "acc_level": 5}, (50.0, 1.0)),  # seed 003 scheduler: [low, high] seconds, level 0..5
    (None, (0.8, 0.8)),  # /user/submit_job without user_constraint: the seed's default
    ({"delay": None, "accuracy": None}, (0.8, 0.8)),  # a submit's empty fields take the default
    ({"delay": "0.5"}, (0.5, 0.8)),
])
def test_constraints_from_the_seed_examples(raw, expected):
    c = constraint_from_seed(raw)
    assert (c.delay, c.accuracy) == pytest.approx(expected)


@pytest.mark.parametrize("raw, field", [
    ({"delay": "soon"}, "user_constraint.delay"),
    ({"delay": 0}, "user_constraint.delay"),
    ({"delay": 61}, "user_constraint.delay"),
    ({"delay": float("nan")}, "user_constraint.delay"),
    ({"delay": True}, "user_constraint.delay"),
    ({"delay": []}, "user_constraint.delay"),
    ({"delay": 1, "accuracy": 101}, "user_constraint.accuracy"),
    ({"delay": 1, "acc_level": 6}, "user_constraint.acc_level"),
    ("fast", "user_constraint"),
])
def test_bad_constraints_name_the_field(raw, field):
    with pytest.raises(SeedFormatError) as err:
        constraint_from_seed(raw)
    assert err.value.field == field


def test_constraint_updates_are_strict_about_delay_and_keep_accuracy():
    current = UserConstraint(delay=2.0, accuracy=0.7)
    for raw in ({"delay": None, "accuracy": None}, {"accuracy": 0.5}, None, {}):
        with pytest.raises(SeedFormatError) as err:
            constraint_update_from_seed(raw, current)
        assert err.value.field.startswith("user_constraint")
    assert constraint_update_from_seed({"delay": 0.4, "accuracy": None}, current) == UserConstraint(delay=0.4,
                                                                                                   accuracy=0.7)
    assert constraint_update_from_seed({"delay": 0.4}, current).accuracy == 0.7
    assert constraint_update_from_seed({"delay": 0.4, "accuracy": 90}, current).accuracy == pytest.approx(0.9)


SEED_PLAN = {
    "flow_mapping": {
        "face_detection": {"model_id": 0, "node_ip": "192.168.56.102", "node_role": "host"},
        "face_alignment": {"model_id": 0, "node_ip": "192.168.56.102", "node_role": "cloud"},
    },
    "video_conf": {"encoder": "H264", "fps": 24, "nskip": 0, "ntracking": 5, "resolution": "360p"},
}


def test_a_seed_plan_round_trips():
    plan = plan_from_seed(SEED_PLAN["video_conf"], SEED_PLAN["flow_mapping"], lambda stage, m: "edge-1", "p", "r")
    assert plan.flow_mapping["face_detection"].node == "edge-1" and plan.video_conf.ntracking == 5
    assert plan_to_seed(plan) == SEED_PLAN
    # get_agg_info's plan: encoder, fps, resolution only
    assert plan_to_seed(plan, with_tracking=False)["video_conf"] == {"encoder": "H264", "fps": 24,
                                                                     "resolution": "360p"}
    with pytest.raises(SeedFormatError) as err:
        plan_from_seed({"resolution": "999p"}, SEED_PLAN["flow_mapping"], lambda s, m: "x", "p", "r")
    assert err.value.field.startswith("video_conf")


def _frame(seq: int, n_faces: int, latency: float = 0.2) -> FrameRecord:
    boxes = [[10 * i, 0, 10 * i + 20, 30] for i in range(n_faces)]  # 600 px each
    return FrameRecord("q", seq, 1, seq / 5.0, 640, 360, latency,
                       {"face_detection": {"bbox": boxes, "prob": [0.9] * n_faces},
                        "face_alignment": {"count_result": {"up": n_faces - 1, "total": n_faces}}})


def test_agg_entries_and_runtime_as_the_query_manager_showed_them():
    entry = agg_entry(_frame(30, 8, 0.21), ["face_detection", "face_alignment"], source_fps=5.0)
    assert entry == {"count_result": {"total": 8, "up": 7}, "delay": 0.21, "frame_id": 30.0, "n_loop": 31}
    assert isinstance(entry["frame_id"], float) and isinstance(entry["n_loop"], int)

    steady = runtime_summary([_frame(i, 8) for i in range(5)])
    assert steady == {"delay": 0.2, "obj_n": 8.0, "obj_size": 600.0, "obj_stable": True}
    changing = runtime_summary([_frame(i, n) for i, n in enumerate((2, 8, 3, 9))])
    assert changing["obj_n"] == 5.5 and changing["obj_stable"] is False
    assert runtime_summary([FrameRecord("q", 0, 1, 0.0, 0, 0, 0.0, {}, lost=True)]) is None
    # detectors' normalised boxes count as objects too
    det = FrameRecord("q", 0, 1, 0.0, 100, 100, 0.1, {"d": {"detections": [{"box": [0, 0, 0.5, 0.5]}]}})
    assert runtime_summary([det])["obj_size"] == 2500.0


def test_cluster_and_resource_info_shapes():
    nodes = [NodeInfo(name="cloud", role="cloud", ip="10.0.0.1", cpu_count=8, cpu_ratio=0.25, mem_ratio=0.5),
             NodeInfo(name="edge-1", role="edge", ip="10.0.0.2", cpu_count=4, cpu_ratio=0.5, services=["face_detection"])]
    info = cluster_info(nodes, {"cloud": 131072})
    assert info == {"10.0.0.1": {"cpu_ratio": 6.0, "mem": 131072, "mem_ratio": 0.5, "n_cpu": 8, "node_role": "cloud"},
                    "10.0.0.2": {"cpu_ratio": 2.0, "mem_ratio": 0.0, "n_cpu": 4, "node_role": "edge"}}
    res = resource_info(nodes, ["face_alignment", "face_detection"])
    assert set(res) == {"cloud", "edge"}
    assert set(res["cloud"]["10.0.0.1"]) == {"face_alignment", "face_detection"}
    assert res["edge"]["10.0.0.2"] == {"face_detection": {"cpu_ratio": 0.5, "mem_ratio": 0.0, "n_process": 1}}


def test_the_seed_scheduler_function_reads_constraints_the_same_way():
    from scheduler.seed_api import SeedScheduler

    seen = {}

    class Recorder:
        name = "recorder"

        def plan(self, inp):
            seen["constraint"] = inp.constraint
            return Plan(video_conf=VideoConf(), flow_mapping={"face_detection": StageMapping(node="cloud")},
                        planner="recorder", reason="test")

    dag = {"generator": "SingleFrameGenerator", "flow": ["SingleFrameGenerator", "face_detection"],
           "input": {"face_detection": {"image": "SingleFrameGenerator.image"}}}
    SeedScheduler(Recorder())("GLOBAL_ID_1", dag, {}, None, {"delay": 0.3, "accuracy": 10})
    assert (seen["constraint"].delay, seen["constraint"].accuracy) == pytest.approx((0.3, 0.1))
