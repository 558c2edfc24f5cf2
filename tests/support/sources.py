"""A video source made of numbered flat frames: frame i is filled with the value i."""
from __future__ import annotations

import numpy as np

from services.sources import SourceFrame, SourceInfo


class ListSource:
    def __init__(self, n: int, fps: float = 10.0, size: tuple[int, int] = (64, 48)):
        self.info = SourceInfo(size[0], size[1], fps, n, live=False)
        self.n = n
        self.fps = fps
        self.size = size

    def frames(self, start_ts: float = 0.0):
        w, h = self.size
        for i in range(self.n):
            yield SourceFrame(i, i / self.fps, np.full((h, w, 3), i, np.uint8))

    def close(self):
        pass
