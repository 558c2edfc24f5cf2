"""The predict batcher's gathering rules, with a model that records its calls (a real one is
tests/integration/test_batching_inference.py)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.batching import PredictBatcher


class RecordingModel:
    """Answers each frame with its own first pixel, after `predict_s` per call."""

    def __init__(self, predict_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.predict_s = predict_s
        self.fail = False

    def predict_batch(self, frames, **kwargs):
        self.calls.append(len(frames))
        time.sleep(self.predict_s)
        if self.fail:
            raise RuntimeError("out of memory")
        return [int(f[0, 0]) for f in frames]


def frame(value: int, shape=(4, 4)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def run_together(batcher, model, frames, **kwargs):
    barrier = threading.Barrier(len(frames))

    def one(f):
        barrier.wait()
        return batcher.predict(model, f, **kwargs)

    with ThreadPoolExecutor(len(frames)) as pool:
        return list(pool.map(one, frames))


def test_concurrent_frames_share_one_call_and_each_gets_its_own_result():
    model = RecordingModel()
    batcher = PredictBatcher(window_s=0.5, max_batch=8, peers=lambda: 4)
    out = run_together(batcher, model, [frame(v) for v in (1, 2, 3, 4)], imgsz=320)
    assert [r for r, _ in out] == [1, 2, 3, 4]
    assert model.calls == [4] and {size for _, size in out} == {4}
    assert batcher.stats().largest == 4


def test_a_lone_task_does_not_wait_for_the_window():
    model = RecordingModel()
    batcher = PredictBatcher(window_s=5.0, max_batch=8, peers=lambda: 1)  # a prefork child
    t0 = time.monotonic()
    assert batcher.predict(model, frame(7)) == (7, 1)
    assert time.monotonic() - t0 < 0.5


def test_the_window_bounds_the_wait_for_peers_that_never_come():
    model = RecordingModel()
    batcher = PredictBatcher(window_s=0.05, max_batch=8, peers=lambda: 4)  # the others run other stages
    t0 = time.monotonic()
    assert batcher.predict(model, frame(3)) == (3, 1)
    assert 0.04 <= time.monotonic() - t0 < 1.0


def test_max_batch_splits_a_crowd():
    model = RecordingModel()
    batcher = PredictBatcher(window_s=0.5, max_batch=3, peers=lambda: 6)
    out = run_together(batcher, model, [frame(v) for v in range(6)])
    assert [r for r, _ in out] == list(range(6))
    assert sorted(model.calls) == [3, 3]


@pytest.mark.parametrize("other", [{"shape": (8, 4)}, {"imgsz": 640}])
def test_frames_batch_only_with_the_same_shape_and_arguments(other):
    model = RecordingModel()
    batcher = PredictBatcher(window_s=0.1, max_batch=8, peers=lambda: 2)
    barrier = threading.Barrier(2)

    def one(value, shape, imgsz):
        barrier.wait()
        return batcher.predict(model, frame(value, shape), imgsz=imgsz)

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(one, 1, (4, 4), 320)
        b = pool.submit(one, 2, other.get("shape", (4, 4)), other.get("imgsz", 320))
        assert a.result() == (1, 1) and b.result() == (2, 1)
    assert model.calls == [1, 1]


def test_a_backlog_gathers_while_the_model_is_busy():
    """Frames that arrive during a batch's predict run together next, not one by one."""
    model = RecordingModel(predict_s=0.2)
    batcher = PredictBatcher(window_s=0.01, max_batch=8, peers=lambda: 5)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(batcher.predict, model, frame(0))
        time.sleep(0.05)  # the first batch (alone: its window passed) is predicting now
        rest = [pool.submit(batcher.predict, model, frame(v)) for v in (1, 2, 3, 4)]
        assert first.result()[0] == 0 and [f.result()[0] for f in rest] == [1, 2, 3, 4]
    assert model.calls == [1, 4]


def test_a_failing_predict_fails_every_frame_of_its_batch_and_not_the_next():
    model = RecordingModel()
    batcher = PredictBatcher(window_s=0.5, max_batch=8, peers=lambda: 2)
    model.fail = True
    barrier = threading.Barrier(2)

    def one(v):
        barrier.wait()
        return batcher.predict(model, frame(v))

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(one, v) for v in (1, 2)]
        for f in futures:
            with pytest.raises(RuntimeError, match="out of memory"):
                f.result()
    model.fail = False
    assert batcher.predict(model, frame(5))[0] == 5
