"""The processes that keep heavy work off the frame path: the niced segment profiler, the
niced nutpie sampler, and `vdag profile`'s per-node speeds reaching the planner."""
from __future__ import annotations

import os
import threading
import time

import cv2
import numpy as np
import pytest

from services import node_profile
from services.codec import Envelope, Hop
from services.settings import Settings
from services.video_conf import encode_jpeg
from tests.support.pipeline import VTEST

pytestmark = pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc provides vtest.avi")


def _frames(n: int, start: int = 120) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(VTEST))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    return [cap.read()[1] for _ in range(n)]


def _nices(pid: int) -> set[int]:
    return {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def _state(pid: int) -> str:
    """The process's state letter (T: stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_segment_profiler_scores_in_a_niced_child_and_never_blocks(tmp_path):
    from tasks.profiler import SegmentProfiler

    done: list[Envelope] = []
    arrived = threading.Event()

    def publish(env):
        done.append(env)
        arrived.set()

    profiler = SegmentProfiler(Settings(data_dir=tmp_path), publish, nice=19, urgent_nice=5)
    env = Envelope(job="j", seq=0, plan=1, capture_ts=0, sent_at=0, width=768, height=576, kind="profile",
                   segment=[encode_jpeg(f, 90) for f in _frames(4)], segment_fps=10.0,
                   route=[Hop(stage="detect", service="person_detection", node="cloud",
                              inputs={"image": "generator.image"})])
    try:
        t0 = time.monotonic()
        assert profiler.submit(env) and time.monotonic() - t0 < 1.0  # hands over, does not score here
        assert not profiler.submit(env) and profiler.skipped == 1    # one segment at a time
        assert _nices(profiler._proc.pid) == {19}
        assert arrived.wait(240), "no scored segment from the profiler process"
        rows = done[0].outputs["detect"]["profile"]
        assert {r["resolution"] for r in rows} == {"360p", "480p", "source"} and done[0].segment == []
        assert profiler.start(wait_s=1.0)  # it said it was ready before its first answer
        # A job's first segments are scored at the worker's own priority, every thread of the
        # child (this test runs as root where CI runs; without privilege it would stay at 19).
        arrived.clear()
        assert profiler.submit(env.model_copy(update={"urgent": True}))  # free again once the answer came back
        if os.geteuid() == 0:
            assert _nices(profiler._proc.pid) == {5}
        profiler.frame_started()  # a job's first segment is scored beside the frames, not after them
        assert _state(profiler._proc.pid) != "T"
        profiler.frame_done()
        assert arrived.wait(120) and len(done) == 2
        assert profiler.submit(env) and _nices(profiler._proc.pid) == {19}
        # Any later one only on idle capacity: stopped while a frame runs in the worker process.
        profiler.frame_started()
        profiler.frame_started()
        assert _state(profiler._proc.pid) == "T" and profiler.stops == 1
        profiler.frame_done()
        assert _state(profiler._proc.pid) == "T", "another frame still runs"
        profiler.frame_done()
        assert _state(profiler._proc.pid) != "T"
        # Urgent segments are not skipped behind a busy child: they are scored next, in order
        # (a newer one does not replace an older one that waits).
        for job in ("k", "m"):
            assert profiler.submit(env.model_copy(update={"urgent": True, "job": job}))
        assert profiler.skipped == 1
        deadline = time.monotonic() + 240
        while len(done) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [e.job for e in done[2:]] == ["j", "k", "m"]
    finally:
        profiler.close()


def test_sampler_process_compiles_off_this_process_and_samples_a_posterior():
    from scheduler import bayes
    from scheduler.sampler_process import ProcessBayesModel, SamplerError

    model = ProcessBayesModel(max_services=2, max_nodes=2)
    try:
        with pytest.raises(SamplerError, match="not ready"):
            model.sample(bayes.empty_data(model.layout, np.zeros(2), np.zeros(2)))
        model.compile()
        assert model.compiled and model.compile_s > 0
        snap = model.sample(bayes.empty_data(model.layout, np.zeros(2), np.zeros(2)), draws=50, tune=50)
        assert snap.source == "posterior" and snap.n > 0 and "tau" in snap.draws and "psi" in snap.draws
    finally:
        model.close()
    assert not model.compiled


def test_node_profile_times_each_resolution_and_round_trips(tmp_path):
    from services.models import ModelCache
    from services.weights import trained_person_weights
    from services.registry import ServiceContext

    ctx = ServiceContext(device="cpu", models=ModelCache(), person_weights=trained_person_weights())
    seen = []
    profile = node_profile.profile_node(_frames(3), ctx, "edge-9", repeats=2, services=(("person_detection", None),),
                                        progress=seen.append)
    rows = profile["rows"]
    assert [r["height"] for r in rows] == [360, 480, 576] and len(seen) == 3
    assert rows[0]["service_s"] < rows[-1]["service_s"]  # more pixels, more time
    node_profile.save(profile, tmp_path)
    (tmp_path / "junk.json").write_text("{not json")
    assert node_profile.load_all(tmp_path)["edge-9"]["rows"] == rows


def test_node_profile_times_the_runtime_each_size_settled_on(tmp_path):
    pytest.importorskip("openvino")
    from services.models import ModelCache
    from services.registry import ServiceContext
    from services.runtime_trial import CHOICES_FILE

    models = ModelCache(runtime="auto", exports_dir=tmp_path)  # yolo11n.yaml exports here, not beside shared weights
    ctx = ServiceContext(device="cpu", models=models, person_weights=None)
    profile = node_profile.profile_node(_frames(3), ctx, "edge-9", repeats=2, services=(("yolo_detection", "n"),))
    assert [r["height"] for r in profile["rows"]] == [360, 480, 576]
    assert not models.trials_in_progress()  # each size was timed on its winner only
    model = models.get("yolo11n.pt")
    assert len(model.trial.decided()) == 3 and (tmp_path / CHOICES_FILE).is_file()
