"""The seed documents' examples, verbatim, and helpers for the seed-route tests (their client
fixture is in tests/unit/conftest.py)."""
from __future__ import annotations

# --- the seed's examples, verbatim ------------------------------------------------------------
SEED_ALL_STATUS = {
    "data": {
        "192.168.56.102:7000": {"video": {"0": {"type": "traffic flow"}, "1": {"type": "people indoor"}}},
        "192.168.56.102:8000": {"video": {"0": {"type": "traffic flow"}, "1": {"type": "people indoor"}}},
    },
    "status": 0,
}
SEED_SUBMIT_QUERY = {
    "node_addr": "192.168.56.102:7000",
    "video_id": 1,
    "pipeline": ["face_detection", "face_alignment"],
    "user_constraint": {"delay": 0.8, "accuracy": 0.9},
}
SEED_JOB_CONSTRAINT = {"job_uid": "GLOBAL_ID_1.SUB_ID", "user_constraint": {"delay": 0.3, "accuracy": 10}}
SEED_DAG = {
    "generator": "SingleFrameGenerator",
    "flow": ["SingleFrameGenerator", "face_detection", "face_alignment"],
    "input": {
        "face_detection": {"image": "SingleFrameGenerator.image"},
        "face_alignment": {
            "image": "SingleFrameGenerator.image",
            "bbox": "face_detection.bbox",
            "prob": "face_detection.prob",
        },
    },
}
SEED_NODE_SUBMIT = {"unique_job_id": "GLOBAL_ID_1.SUB_ID_1", "node_addr": "192.168.56.102:7000", "video_id": 1,
                    "dag": SEED_DAG}
SEED_PLAN = {
    "flow_mapping": {
        "face_detection": {"model_id": 0, "node_ip": "192.168.56.102", "node_role": "host"},
        "face_alignment": {"model_id": 0, "node_ip": "192.168.56.102", "node_role": "cloud"},
    },
    "video_conf": {"encoder": "H264", "fps": 24, "nskip": 0, "ntracking": 5, "resolution": "360p"},
}
SEED_APPENDED = [{"#no_helmet": 1, "n_loop": 11}, {"#no_helmet": 1, "n_loop": 12}, {"#no_helmet": 1, "n_loop": 13}]
SEED_SCHEDULER_CONSTRAINT = {"delay": [-1, 50], "acc_level": 5}


def register_seed_nodes(client) -> None:
    videos = [{"id": 0, "url": "synthetic://64x48@10/20", "type": "traffic flow"},
              {"id": 1, "url": "rtsp://192.168.56.102/people", "type": "people indoor", "width": 1280, "height": 720,
               "fps": 25}]
    for name, port in (("edge-7000", 7000), ("edge-8000", 8000)):
        r = client.post("/node/register", json={"name": name, "role": "edge", "ip": "192.168.56.102", "port": port,
                                                "video_sources": videos, "resources": {"cpu_count": 4}})
        assert r.status_code == 200 and r.get_json() == {"status": 0, "msg": "registered", "node": name}


def seed_error(resp, status: int) -> str:
    assert resp.status_code == status, resp.get_json()
    body = resp.get_json()
    # the seed's "error" key, and seed 003 README's "msg", with the same text
    assert body["status"] == 1 and isinstance(body["error"], str) and set(body) == {"status", "msg", "error"}, body
    assert body["msg"] == body["error"]
    return body["error"]
