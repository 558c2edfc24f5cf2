"""Segment scores and node profiles become planner observations with the right covariates."""
from __future__ import annotations

from scheduler.observations import profile_observations, segment_observations
from services.dag import DagSpec


def test_segment_rows_become_accuracy_observations_of_their_config():
    rows = [{"resolution": "480p", "height": 480, "quality": 60, "step": 2, "ntracking": 4, "f1": 0.86},
            {"resolution": "source", "height": 576, "step": 1, "ntracking": 0, "f1": 1.0},
            {"resolution": "360p", "height": 360, "step": 1, "ntracking": 0, "f1": 1.7}]  # not an F1: dropped
    obs = segment_observations("detect", "edge-1", None, rows, 768, 576, 10.0, ts=5.0)
    assert [(o.width, o.height, o.fps, o.ntracking, o.quality, o.accuracy) for o in obs] == [
        (640, 480, 5.0, 4, 60, 0.86), (768, 576, 0.0, 0, 100, 1.0)]  # no quality: the segment's own
    assert all(o.service_s == 0 and o.source == "segment" for o in obs)


def test_node_profile_rows_reach_the_stages_that_run_that_service():
    dag = DagSpec(stages=[
        {"name": "people", "service": "person_detection", "inputs": {"image": "generator.image"}},
        {"name": "things", "service": "yolo_detection", "params": {"grade": "s"}, "inputs": {"image": "generator.image"}},
    ])
    profiles = {"edge-1": {"rows": [
        {"service": "person_detection", "grade": None, "width": 640, "height": 480, "service_s": 0.13},
        {"service": "yolo_detection", "grade": "n", "width": 640, "height": 480, "service_s": 0.04},
        {"service": "yolo_detection", "grade": "s", "width": 640, "height": 480, "service_s": 0.11}]},
        "gone": {"rows": [{"service": "person_detection", "grade": None, "width": 1, "height": 1, "service_s": 1}]}}
    obs = profile_observations(profiles, dag, {"edge-1"})
    assert [(o.stage, o.grade, o.service_s, o.ts) for o in obs] == [("people", None, 0.13, 0.0), ("things", "s", 0.11, 0.0)]
