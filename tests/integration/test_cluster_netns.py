"""Cluster mode across two network namespaces on one machine.

The cloud tracker and its worker stay in the root namespace on a veth address; the edge
tracker and its worker run in their own namespace (`ip netns exec`) and reach the cloud
only through the veth pair: the cloud API by IP, and RabbitMQ through a small TCP
proxy (bench/tcp_proxy.py) on the veth address (RabbitMQ itself listens on 127.0.0.1 only, and its
configuration is left alone). Needs root."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from bench.tcp_proxy import TcpProxy
from tests.support.cluster import CONF_ENV, PIN_ENV, delete_queues, node_queues
from tests.support.pipeline import AMQP_URL, ROOT, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.netns]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root for ip netns")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"vdag{tag}", f"vh{tag}", f"ve{tag}"
    subnet = random.randint(1, 250)
    cloud_ip, edge_ip = f"10.254.{subnet}.1", f"10.254.{subnet}.2"
    try:
        _ip("netns", "add", ns)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot create a network namespace: {getattr(exc, 'stderr', exc)}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{cloud_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{edge_ip}/30", "dev", ns_if)
        _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield {"ns": ns, "cloud_ip": cloud_ip, "edge_ip": edge_ip}
    finally:
        _ip("netns", "del", ns, check=False)
        _ip("link", "del", host_if, check=False)


def _spawn(argv: list[str], log: Path, env: dict, ns: str | None = None) -> subprocess.Popen:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.Popen(prefix + [sys.executable, "-m", "tracker.cli", *argv], cwd=ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def test_edge_in_its_own_namespace_registers_by_ip_and_frames_flow(netns, tmp_path):
    tag = uuid.uuid4().hex[:6]
    cloud, edge = f"n{tag}-cloud", f"n{tag}-edge"
    results_queue = f"vdag.results.{cloud}"
    fwd = TcpProxy(("127.0.0.1", 5672), host=netns["cloud_ip"])
    with socket.socket() as s:
        s.bind((netns["cloud_ip"], 0))
        api_port = s.getsockname()[1]
    edge_broker = f"amqp://guest:guest@{netns['cloud_ip']}:{fwd.port}//"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VDAG_RESULTS_QUEUE": results_queue,
           PIN_ENV: json.dumps({"face_detection": [edge], "face_alignment": [cloud]}),
           CONF_ENV: json.dumps({"resolution": "360p", "fps": 5})}
    procs = []
    try:
        procs.append(_spawn(["tracker", "--side=c", "--mode=cluster", "--node", cloud, "--cloud_ip", netns["cloud_ip"],
                             "--host", netns["cloud_ip"], "--api-port", str(api_port), "--video-port", str(api_port),
                             "--broker", AMQP_URL, "--db", f"sqlite:///{tmp_path}/cloud.db", "--data-dir", str(tmp_path),
                             "--planner", "tests.support.cluster:PinnedPlanner", "--scheduler-interval", "1",
                             "--no-elastic"], tmp_path / "cloud.log", env))
        procs.append(_spawn(["worker", "--node", cloud, "--broker", AMQP_URL], tmp_path / "cloud-worker.log", env))
        # The edge side knows only the cloud's IP: seed flags, no --advertise-ip.
        procs.append(_spawn(["tracker", "--side=e", "--mode=cluster", "--node", edge,
                             f"--serv_cloud_addr={netns['cloud_ip']}:{api_port}", "--broker", edge_broker,
                             "--data-dir", str(tmp_path)], tmp_path / "edge.log", env, ns=netns["ns"]))
        procs.append(_spawn(["worker", "--node", edge, "--broker", edge_broker], tmp_path / "edge-worker.log", env,
                            ns=netns["ns"]))
        url = f"http://{netns['cloud_ip']}:{api_port}"

        def logs() -> str:
            return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in tmp_path.glob("*.log"))

        deadline = time.monotonic() + 90
        nodes: dict = {}
        while time.monotonic() < deadline:
            try:
                nodes = {n["name"]: n for n in requests.get(url + "/api/v1/nodes", timeout=3).json()["items"]}
            except (requests.RequestException, ValueError):
                pass
            if nodes.get(edge, {}).get("alive"):
                break
            time.sleep(0.5)
        assert nodes.get(edge, {}).get("alive"), logs()
        assert nodes[edge]["ip"] == netns["edge_ip"], "the edge registered with its own namespace's address"
        assert nodes[edge]["address"].startswith(netns["edge_ip"] + ":")
        assert nodes[edge]["video_sources"] and nodes[edge]["video_sources"][0]["width"] > 0

        # A seed client submits through the edge's address, as /user/get_all_status lists it.
        status = requests.get(url + "/user/get_all_status", timeout=5).json()
        assert nodes[edge]["address"] in status["data"]
        resp = requests.post(url + "/query/submit_query", timeout=10, json={
            "node_addr": nodes[edge]["address"], "video_id": 0,
            "pipeline": ["face_detection", "face_alignment"], "user_constraint": {"delay": 5}})
        assert resp.status_code == 200 and resp.json()["status"] == 0, resp.text
        uid = resp.json()["job_uid"]

        deadline = time.monotonic() + 90
        items: list = []
        while time.monotonic() < deadline:
            items = requests.get(f"{url}/api/v1/jobs/{uid}/results", params={"limit": 1000}, timeout=5).json()["items"]
            if len([r for r in items if not r["lost"]]) >= 10:
                break
            time.sleep(0.5)
        done = [r for r in items if not r["lost"]]
        assert len(done) >= 10, logs()
        for r in done:
            assert {s["stage"]: s["node"] for s in r["stages"]} == {"face_detection": edge, "face_alignment": cloud}
        deadline = time.monotonic() + 5  # generator stats come with the edge's next heartbeat
        while True:
            job = requests.get(f"{url}/api/v1/jobs/{uid}", timeout=5).json()
            if job["stats"].get("frames_sent", 0) >= len(done) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert job["node"] == edge and job["stats"].get("frames_sent", 0) >= len(done), job["stats"]
        lat = sorted(r["latency_s"] for r in done)
        print(f"\n{len(done)} frames through the namespace boundary; latency p50 {lat[len(lat) // 2] * 1000:.0f} ms, "
              f"max {lat[-1] * 1000:.0f} ms; generator {job['stats']}")
    finally:
        for p in reversed(procs):
            stop_process(p)
        fwd.close()
        delete_queues(results_queue, *node_queues(cloud, edge))
