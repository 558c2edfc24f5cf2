"""Reading a file ahead of the generator: the same frames in the same order, errors reach the
generator, and closing stops the reader before the source is closed."""
from __future__ import annotations

import threading
import time

import pytest

from services.read_ahead import ReadAhead
from services.sources import SourceError, open_source


def test_every_frame_in_order_then_the_end():
    source = open_source("synthetic://64x48@10/25")
    frames = list(ReadAhead(source.frames()))
    assert [round(f.ts * 10) for f in frames] == list(range(25))
    source.close()


def test_a_source_error_is_raised_in_the_generator_after_the_frames_before_it():
    def frames():
        yield 1
        yield 2
        raise SourceError("camera gone")

    reader = ReadAhead(frames())
    assert next(reader) == 1 and next(reader) == 2
    with pytest.raises(SourceError, match="camera gone"):
        next(reader)


def test_close_stops_the_reader_while_it_waits_for_room():
    reading = threading.Event()

    def endless():
        while True:
            reading.set()
            yield time.monotonic()

    reader = ReadAhead(endless(), depth=2)
    assert reading.wait(5)
    next(reader)
    assert reader.close(timeout=2) is True
    assert not any(t.name == "vdag-read-ahead" and t.is_alive() for t in threading.enumerate())
