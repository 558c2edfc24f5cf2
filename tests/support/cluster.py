"""Helpers for the cloud/edge tests: a planner that pins stages to preferred nodes, a
pseudo-mode system started through the real CLI, and broker clean-up."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from kombu import Connection

from scheduler.interface import Plan, PlanningInput, StageMapping
from services.video_conf import VideoConf
from tasks.queues import service_reply_queue_name
from tests.support.pipeline import AMQP_URL, ROOT

PIN_ENV = "VDAG_TEST_PIN"  # {"stage": ["first choice", "second choice", ...]}
CONF_ENV = "VDAG_TEST_VIDEO_CONF"


class PinnedPlanner:
    """Each stage on the first node of its preference list that is alive and can run it;
    every stage on the first alive node if none of its preferences is. Fixed video knobs."""

    name = "pinned"

    def __init__(self, prefs: dict[str, list[str]] | None = None, video_conf: dict | None = None) -> None:
        self.prefs = prefs if prefs is not None else json.loads(os.environ.get(PIN_ENV, "{}"))
        self.video_conf = VideoConf(**(video_conf if video_conf is not None
                                       else json.loads(os.environ.get(CONF_ENV, "{}"))))

    def plan(self, inp: PlanningInput) -> Plan:
        alive = {n.name: n for n in inp.nodes if n.alive}
        mapping, why = {}, []
        for stage in inp.dag.stages:
            choice = next((n for n in self.prefs.get(stage.name, []) if n in alive and alive[n].can_run(stage.service)),
                          None)
            if choice is None:
                choice = sorted(alive)[0]
            node = alive[choice]
            mapping[stage.name] = StageMapping(node=choice, node_ip=node.ip, node_role=node.role)
            why.append(f"{stage.name}->{choice}")
        return Plan(video_conf=self.video_conf, flow_mapping=mapping, planner=self.name, reason=", ".join(why))


def delete_queues(*names: str) -> None:
    with Connection(AMQP_URL) as conn:
        for name in names:
            try:
                conn.channel().queue_delete(name)
            except Exception:
                pass


def node_queues(*nodes: str) -> list[str]:
    return [q for n in nodes for q in (f"vdag.node.{n}", f"vdag.acks.{n}", service_reply_queue_name(n))]


class PseudoSystem:
    """`vdag tracker --mode pseudo` as a child process, plus helpers to reach its parts."""

    def __init__(self, tmp_path: Path, prefix: str, extra_args: list[str] = (), env: dict | None = None) -> None:
        self.tmp_path = tmp_path
        self.prefix = prefix
        self.cloud = f"{prefix}cloud"
        self.edges = [f"{prefix}edge-1", f"{prefix}edge-2"]
        self.results_queue = f"vdag.results.{prefix}cloud"
        self.state_file = tmp_path / "pseudo.json"
        self.argv = [sys.executable, "-m", "tracker.cli", "tracker", "--side=c", "--mode=pseudo",
                     "--node", self.cloud, "--prefix", prefix,
                     "--api-port", "0", "--video-port", "0", "--service-port", "0",
                     "--broker", AMQP_URL, "--db", f"sqlite:///{tmp_path}/cloud.db", "--data-dir", str(tmp_path),
                     "--state-file", str(self.state_file), *extra_args]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "VDAG_RESULTS_QUEUE": self.results_queue,
                    "VDAG_ALLOWED_VIDEO_DIRS": f"/usr/share/doc/opencv-doc/examples/data,{tmp_path},/tmp",
                    **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.state: dict = {}

    def start(self, timeout: float = 90.0) -> "PseudoSystem":
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=open(self.tmp_path / "supervisor.log", "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.state_file.exists():
            assert self.proc.poll() is None, self.log("supervisor")
            assert time.monotonic() < deadline, "no state file"
            time.sleep(0.2)
        self.state = json.loads(self.state_file.read_text())
        self.wait_nodes_alive([self.cloud, *self.edges], timeout=max(5.0, deadline - time.monotonic()))
        self.wait_workers_consuming(timeout=max(5.0, deadline - time.monotonic()))
        return self

    def wait_workers_consuming(self, timeout: float = 60.0) -> None:
        """Every node queue has a consumer (its worker is up), as /metrics reports it."""
        deadline = time.monotonic() + timeout
        queues = [f"vdag.node.{n}" for n in (self.cloud, *self.edges)]
        text = ""
        while time.monotonic() < deadline:
            text = self.get("/metrics").text
            lines = [ln for ln in text.splitlines() if ln.startswith("vdag_queue_consumers{")]
            if all(any(f'queue="{q}"' in ln and not ln.endswith(" 0.0") for ln in lines) for q in queues):
                return
            time.sleep(0.5)
        raise AssertionError(f"workers not consuming: {[ln for ln in text.splitlines() if 'consumers{' in ln]}")

    @property
    def url(self) -> str:
        return self.state["api_url"]

    def get(self, path: str, **kw):
        return requests.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw):
        return requests.post(self.url + path, timeout=10, **kw)

    def nodes(self) -> dict[str, dict]:
        try:
            return {n["name"]: n for n in self.get("/api/v1/nodes").json()["items"]}
        except (requests.RequestException, ValueError, KeyError):
            return {}

    def wait_nodes_alive(self, names: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nodes = self.nodes()
            if all(nodes.get(n, {}).get("alive") for n in names):
                return
            time.sleep(0.3)
        raise AssertionError(f"nodes {names} not all alive: {self.nodes()}\n{self.log('supervisor')}")

    def child(self, name: str) -> dict:
        return next(c for c in self.state["children"] if c["name"] == name)

    def kill_child(self, name: str, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.child(name)["pid"], sig)

    def log(self, which: str) -> str:
        path = self.tmp_path / "supervisor.log" if which == "supervisor" else Path(self.child(which)["log"])
        try:
            return f"--- {which} ---\n" + path.read_text(errors="replace")[-4000:]
        except OSError:
            return f"--- {which}: no log"

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Children that outlived the supervisor (they should not) are ended here.
        for c in self.state.get("children", []):
            try:
                os.killpg(c["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        delete_queues(self.results_queue, *node_queues(self.cloud, *self.edges))
        return self.proc.returncode

    def children_alive(self) -> list[str]:
        alive = []
        for c in self.state.get("children", []):
            try:
                os.kill(c["pid"], 0)
                alive.append(c["name"])
            except ProcessLookupError:
                pass
        return alive
