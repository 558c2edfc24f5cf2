"""The seed's :5500 service API on a real tracker: its HTTP server, the node table, and
/execute_task running our services on a worker through the node queue."""
from __future__ import annotations

import base64
from pathlib import Path

import cv2
import pytest
import requests

from tests.support.pipeline import settings_for
from tracker.server import TrackerServer
from tracker.web.service_api import ServiceRequestError, read_bytes, write_bytes

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")


def _frame_jpeg(index: int) -> bytes:
    cap = cv2.VideoCapture(str(MEGAMIND))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    assert ok, f"cannot read frame {index} of {MEGAMIND}"
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service-api")
    srv = TrackerServer(settings_for(tmp, "memory://"), in_process_workers=1, pace=0.0,
                        scheduler_interval_s=None, node_timeout_s=None).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_bytes_literals_are_parsed_never_evaluated():
    data = bytes(range(256))
    assert read_bytes(repr(data), "image") == (data, "literal")
    assert read_bytes(base64.b64encode(data).decode(), "image") == (data, "base64")
    for bad in ("__import__('os').system('touch /tmp/vdag-pwned')", "b'abc' + b'def'", "not base64!", 42,
                "b'\\x'"):
        with pytest.raises(ServiceRequestError):
            read_bytes(bad, "image")
    assert not Path("/tmp/vdag-pwned").exists()
    assert write_bytes({"image": b"\xff\xd8", "n": [b"a"]}, "literal") == {"image": "b'\\xff\\xd8'", "n": ["b'a'"]}


def test_service_list_cluster_and_resource_info(server):
    url = server.service_url
    services = requests.get(f"{url}/get_service_list", timeout=10).json()
    assert isinstance(services, list) and {"face_detection", "face_alignment", "car_detection"} <= set(services)
    cluster = requests.get(f"{url}/get_cluster_info", timeout=10).json()
    node = cluster[server.settings.cloud_ip]  # keyed by ip, live from the node table
    assert set(node) == {"node_role", "n_cpu", "cpu_ratio", "mem", "mem_ratio"} and node["node_role"] == "cloud"
    assert isinstance(node["n_cpu"], int) and 0 <= node["cpu_ratio"] <= node["n_cpu"] and node["mem"] > 0
    resources = requests.get(f"{url}/get_resource_info", timeout=10).json()
    stats = resources["cloud"][server.settings.cloud_ip]["face_detection"]
    assert set(stats) == {"n_process", "cpu_ratio", "mem_ratio"}


@pytest.mark.skipif(not MEGAMIND.exists(), reason="apt-get install opencv-doc provides Megamind.avi")
def test_execute_task_finds_faces_through_a_worker(server):
    url = server.service_url
    jpeg = _frame_jpeg(50)
    seed = requests.post(f"{url}/execute_task/face_detection", json={"image": repr(jpeg)}, timeout=60)
    assert seed.status_code == 200, seed.text
    faces = seed.json()
    assert set(faces) == {"bbox", "prob"} and len(faces["bbox"]) >= 1 and len(faces["prob"]) == len(faces["bbox"])
    assert all(len(b) == 4 and 0 <= b[0] < b[2] <= 720 for b in faces["bbox"])
    # base64 spelling and the README's /service/<name> path: the same answer
    b64 = requests.post(f"{url}/service/face_detection", json={"image": base64.b64encode(jpeg).decode()}, timeout=60)
    assert b64.json() == faces
    # the second seed stage takes the first one's outputs; its image comes back as a bytes literal
    aligned = requests.post(f"{url}/execute_task/face_alignment", json={"image": repr(jpeg), **faces}, timeout=60)
    body = aligned.json()
    assert set(body) == {"image", "count_result"} and body["count_result"]["total"] == len(faces["bbox"])
    image = read_bytes(body["image"], "image")[0]
    assert cv2.imdecode(__import__("numpy").frombuffer(image, "uint8"), cv2.IMREAD_COLOR).shape == (528, 720, 3)


def test_execute_task_errors_are_seed_json(server):
    url = server.service_url
    unknown = requests.post(f"{url}/execute_task/helmet_detection", json={"clip": []}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["status"] == 1 and "unregistered" in unknown.json()["error"]
    missing = requests.post(f"{url}/execute_task/face_alignment", json={"image": "b''"}, timeout=10)
    assert missing.status_code == 400 and "bbox" in missing.json()["error"]
    garbage = requests.post(f"{url}/execute_task/face_detection", json={"image": repr(b"not a jpeg")}, timeout=10)
    assert garbage.status_code == 400 and "image" in garbage.json()["error"]
    not_json = requests.post(f"{url}/execute_task/face_detection", data="x", timeout=10)
    assert not_json.status_code == 400 and not_json.json()["status"] == 1
    wrong_method = requests.get(f"{url}/execute_task/face_detection", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.json()["status"] == 1
    no_node = requests.post(f"{url}/execute_task/face_detection?node=nowhere", json={"image": "b''"}, timeout=10)
    assert no_node.status_code == 404 and "nowhere" in no_node.json()["error"]
