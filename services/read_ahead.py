"""Reading a file source ahead of the generator, on a thread of its own.

A generator's per-frame work is decode, resize, JPEG-encode and publish, one after the other
(bench/pipeline.py: 236 frames/s from vtest.avi against 301 with the frames already decoded).
OpenCV releases the GIL while it decodes, so a reader thread that decodes the next frames
while the generator encodes and sends this one makes the per-frame time the larger of the
two instead of their sum. Only for files: a live source is read as it comes, and frames
queued ahead of a slow generator would only be older when they are sent.

The reader owns the source while it runs: `close()` stops it and waits for it before the
caller closes the source (a capture closed under a running read can crash OpenCV).

Measured (bench/pipeline.py --quick, frame_probe from vtest.avi at 480p, interleaved pairs):
184 -> 196 and 181 -> 213 frames/s.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
DEPTH = 4
_END = object()


class ReadAhead(Iterator[T]):
    def __init__(self, items: Iterator[T], depth: int = DEPTH, name: str = "vdag-read-ahead") -> None:
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)

    def __next__(self) -> T:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # a later next() ends too
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, timeout: float = 5.0) -> bool:
        """Stop reading. True once the reader thread no longer touches the source; False if
        it is still stuck in a read after `timeout` (then the source must be left open)."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("read-ahead thread still inside a read after %.0f s; its source is left open", timeout)
            return False
        return True
