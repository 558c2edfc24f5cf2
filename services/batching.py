"""Cross-job batching: frames for the same model, from any job, run in one predict call.

A worker process that runs several stage tasks at once (a threads pool) sends each task's
detector call here. The first caller for a key (model, frame shape, predict arguments) leads
the batch: it waits until the batch is full, or every task this process is running has
joined, or the window has passed and the model is free, then predicts the whole batch and
hands each caller its own result. While the model is busy with one batch the next one keeps
gathering, so a backlog batches itself without any window at all.

Only the predict call is shared: each frame stays its own Celery message with its own
envelope, timings, route and late ack, so a killed worker redelivers every frame of a batch.
A process that runs one task at a time (a prefork child) never waits: its leader is alone.

Same shapes only: ultralytics letterboxes a batch of mixed shapes to a square, which would
change the boxes against a frame predicted alone (tests/integration/test_batching_inference.py
checks batched boxes against single-frame ones, tests/unit/test_batching.py the keys).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Protocol, Sequence


class BatchPredictor(Protocol):
    def predict_batch(self, frames: Sequence[Any], **kwargs: Any) -> list[Any]: ...


@dataclass
class _Batch:
    frames: list[Any] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    results: list[Any] | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class BatchStats:
    calls: int  # predict calls made
    frames: int  # frames they carried
    largest: int


def _frozen(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set)):
        return tuple(_frozen(v) for v in value)
    return value


class PredictBatcher:
    """`window_s` bounds what a frame waits for others; `peers` says how many tasks this
    process is running now (the most that could join a batch)."""

    def __init__(self, window_s: float, max_batch: int, peers: Callable[[], int] = lambda: 1 << 30) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError("window_s must be >= 0 and max_batch >= 1")
        self.window_s, self.max_batch, self._peers = window_s, max_batch, peers
        self._cond = threading.Condition()
        self._open: dict[Hashable, _Batch] = {}
        self._busy: dict[int, int] = {}  # model -> batches of it in predict (a full one need not wait)
        self._freed_at: dict[int, float] = {}  # model -> when its last batch finished
        self._predicting = 0  # frames in batches being predicted: their tasks cannot join another
        self._calls = self._frames = self._largest = 0

    def predict(self, model: BatchPredictor, frame: Any, **kwargs: Any) -> tuple[Any, int]:
        """This frame's result and the size of the batch it ran in."""
        key = (id(model), getattr(frame, "shape", None), _frozen(kwargs))
        with self._cond:
            batch = self._open.get(key)
            lead = batch is None
            if lead:
                batch = self._open[key] = _Batch()
            index = len(batch.frames)
            batch.frames.append(frame)
            if len(batch.frames) >= self.max_batch:  # full: whoever comes next starts another
                del self._open[key]
            self._cond.notify_all()
            if lead:
                self._gather(key, batch, id(model))
        if lead:
            self._run(model, batch, kwargs)
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        assert batch.results is not None
        return batch.results[index], len(batch.frames)

    def _gather(self, key: Hashable, batch: _Batch, model_id: int) -> None:
        """Under the condition: wait until the batch should run, then close it. The window
        counts from the leader's arrival or from the model becoming free, whichever is later:
        the tasks of the batch that just finished are the ones about to bring the next frames."""
        arrived = time.monotonic()
        while len(batch.frames) < self.max_batch:
            joinable = self._peers() - self._predicting
            everyone = len(batch.frames) >= max(1, min(self.max_batch, joinable))
            remaining = max(arrived, self._freed_at.get(model_id, 0.0)) + self.window_s - time.monotonic()
            if model_id not in self._busy and (everyone or remaining <= 0):
                break
            # Woken by every arrival and by every batch that finishes.
            self._cond.wait(remaining if remaining > 0 and model_id not in self._busy else 0.5)
        if self._open.get(key) is batch:
            del self._open[key]
        self._busy[model_id] = self._busy.get(model_id, 0) + 1
        self._predicting += len(batch.frames)
        self._calls += 1
        self._frames += len(batch.frames)
        self._largest = max(self._largest, len(batch.frames))

    def _run(self, model: BatchPredictor, batch: _Batch, kwargs: dict) -> None:
        try:
            batch.results = model.predict_batch(batch.frames, **kwargs)
            if len(batch.results) != len(batch.frames):
                raise RuntimeError(f"predict returned {len(batch.results)} results for {len(batch.frames)} frames")
        except BaseException as exc:  # every frame of the batch fails as its own task, with this error
            batch.error = exc
        finally:
            with self._cond:
                left = self._busy.pop(id(model)) - 1
                if left:
                    self._busy[id(model)] = left
                self._freed_at[id(model)] = time.monotonic()
                self._predicting -= len(batch.frames)
                self._cond.notify_all()
            batch.done.set()

    def stats(self) -> BatchStats:
        with self._cond:
            return BatchStats(self._calls, self._frames, self._largest)
