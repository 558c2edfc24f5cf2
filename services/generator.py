"""The generator: reads a source, applies the current plan, enqueues one message per kept
frame. After each detected frame, the next `ntracking` kept frames are marked for tracking
(their detector stage tracks the boxes of the frame before; services/tracking.py).

It never buffers without bound. A window counts frames in flight (enqueued, not yet
acknowledged by the aggregator); when it is full the frame is dropped and counted
(live sources) or the generator waits (offline `backpressure="block"`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Literal

from services.codec import Envelope, Hop
from services.profiling import SEGMENT_QUALITY, golden_stride
from services.read_ahead import ReadAhead
from services.sources import SourceError, VideoSource
from services.video_conf import FrameSkipper, VideoConf, encode_jpeg, resize_to

log = logging.getLogger(__name__)

# Detectors whose accuracy a profiling segment scores (the others have no golden config).
SEGMENT_SERVICES = frozenset({"person_detection", "yolo_detection", "car_detection"})
FAST_SEGMENTS = 3   # the first segments come 3x as often
# The first is shorter: scored beside the frames (a job's first `urgent_segments` are, see
# tasks/profiler.py), it slows them while it lasts (a slow 2-core node's detector at 480p:
# 0.31-0.35 s a frame before it, 0.36-0.56 s for the 15 s it took) and the planner reads that as
# the node being slow. Six frames still hold a group of every 10 and 5 fps plan the planner
# weighs first (ntracking up to 4 at 10 fps, 2 at 5 fps).
URGENT_SEGMENT_FRAMES = 6
MAX_SEGMENT_FRAMES = 64  # source frames in one segment message (services.codec.Envelope)


class DispatchUnavailable(RuntimeError):
    """The transport cannot take frames right now (the broker is restarting, a link is down).
    The generator drops the frame, counts it, and goes on: a transient outage never ends a job."""


@dataclass(frozen=True)
class ActivePlan:
    """What the generator needs of a plan: its id, the video knobs and the stage route."""

    plan_id: int
    video_conf: VideoConf
    route: tuple[Hop, ...]
    profile_every: int = 0  # mark every Nth detected frame for golden-config profiling; 0 = never
    golden_grade: str = "m"
    # Chameleon-style profiling: every segment_every_s of video, send consecutive source frames
    # on which the worker scores candidate configs against the golden one, run on segment_frames of them.
    segment_every_s: float = 0.0
    segment_frames: int = 10
    # The job's first segments are scored ahead of the frames, not on idle capacity only; the
    # tracker sets it from Settings.profile_urgent_segments (3, which says why), 1 = the first only.
    urgent_segments: int = 1


def _sees_what_golden_sees(plan: ActivePlan, shape, source_shape) -> bool:
    """The frame goes out at the source resolution to detectors at the golden grade (or with no
    grades): its own detection is the golden one, so a second, golden run on the frame path
    would measure nothing and double this frame's service time (vtest.avi at D = 0.5 s on a
    2-core node: 4 % of frames late, every profiled one and the one behind it). What JPEG
    coding costs at the source resolution is what the profiling segments measure."""
    return tuple(shape) == tuple(source_shape) and all(
        h.params.get("grade") in (None, plan.golden_grade) for h in plan.route)


class InFlightWindow:
    """Frames sent but not yet acknowledged. Entries older than `expire_s` count as lost
    and free their slot, so a dead worker cannot wedge the generator forever."""

    def __init__(self, size: int, expire_s: float = 30.0) -> None:
        self.size = size
        self.expire_s = expire_s
        self._sent: dict[int, float] = {}
        self._cond = threading.Condition()
        self.expired = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._sent)

    def _expire_locked(self, now: float) -> None:
        stale = [seq for seq, t in self._sent.items() if now - t > self.expire_s]
        for seq in stale:
            del self._sent[seq]
        self.expired += len(stale)

    def try_add(self, seq: int) -> bool:
        with self._cond:
            now = time.monotonic()
            if len(self._sent) >= self.size:
                self._expire_locked(now)
            if len(self._sent) >= self.size:
                return False
            self._sent[seq] = now
            return True

    def wait_for_room(self, stop: threading.Event, timeout: float = 0.5) -> bool:
        with self._cond:
            if len(self._sent) < self.size:
                return True
            self._cond.wait(timeout)
            self._expire_locked(time.monotonic())
            return len(self._sent) < self.size and not stop.is_set()

    def release(self, seq: int) -> None:
        with self._cond:
            if self._sent.pop(seq, None) is not None:
                self._cond.notify()

    def release_through(self, seq: int) -> None:
        """Everything up to seq is settled (stored or declared lost)."""
        with self._cond:
            for s in [s for s in self._sent if s <= seq]:
                del self._sent[s]
            self._cond.notify_all()


@dataclass
class GeneratorStats:
    read: int = 0  # source frames read
    skipped: int = 0  # not kept by the fps / nskip knob
    sent: int = 0
    dropped: int = 0  # kept, but not sent: the window was full or the broker away
    unavailable: int = 0  # of those, dropped because the broker could not take them
    unreserved: int = 0  # of those, dropped because no sequence number could be reserved
    tracked: int = 0  # kept frames whose boxes come from the tracker (ntracking)
    segments: int = 0  # profiling segments sent
    peak_in_flight: int = 0
    started_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        elapsed = max(time.time() - self.started_at, 1e-6)
        return {
            "frames_read": self.read,
            "frames_skipped": self.skipped,
            "frames_sent": self.sent,
            "frames_dropped": self.dropped,
            "frames_dropped_broker": self.unavailable,
            "frames_unreserved": self.unreserved,
            "frames_tracked": self.tracked,
            "profile_segments": self.segments,
            "peak_in_flight": self.peak_in_flight,
            "fps_in": round(self.sent / elapsed, 2),
        }


Dispatch = Callable[[Envelope], None]


class FrameGenerator:
    """Runs one job's source loop. `run()` returns at end of file or when `stop` is set;
    it raises SourceError when the source cannot be read (the job then fails)."""

    def __init__(
        self,
        job_uid: str,
        source: VideoSource,
        current_plan: Callable[[], ActivePlan],
        dispatch: Dispatch,
        window: InFlightWindow,
        stop: threading.Event,
        *,
        origin_node: str = "cloud",
        results_queue: str = "vdag.results",
        pace: float = 1.0,
        backpressure: Literal["drop", "block"] = "drop",
        first_seq: int = 0,
        start_ts: float = 0.0,
        clip_len: int = 0,
        reserve: Callable[[int], bool] | None = None,
    ) -> None:
        self.job_uid = job_uid
        self.source = source
        self.current_plan = current_plan
        self.dispatch = dispatch
        self.window = window
        self.stop = stop
        self.origin_node = origin_node
        self.results_queue = results_queue
        self.pace = pace  # 1.0 = real time for files, 0 = as fast as possible
        self.backpressure = backpressure
        self.seq = first_seq
        self.reserve = reserve  # whether a sequence number may be used (tracker.runtime.resume)
        self.start_ts = start_ts
        self.last_sent_ts = start_ts  # source time of the newest frame sent (where a restart continues)
        self.stats = GeneratorStats()
        self._skipper = FrameSkipper()
        # ClipGenerator: each message also carries the previous kept frames, oldest first.
        self._clip: deque[bytes] = deque(maxlen=clip_len) if clip_len else deque(maxlen=0)
        self._last_kept: int | None = None  # seq of the last frame sent, for tracking
        self._tracked_run = 0  # frames tracked since the last detected one
        self._detected = 0
        self._segment: list[bytes] | None = None
        self._next_segment_ts: float | None = None

    def run(self) -> None:
        wall0 = time.monotonic()
        frames = self.source.frames(self.start_ts)
        reader = None if self.source.info.live else ReadAhead(frames, name=f"vdag-read-{self.job_uid}")
        try:
            for frame in reader or frames:
                if self.stop.is_set():
                    return
                if self.start_ts and frame.ts <= self.start_ts:
                    continue  # resuming after a restart: this frame was handled before it
                self.stats.read += 1
                if self.pace > 0 and not self.source.info.live:
                    ahead = (frame.ts - self.start_ts) / self.pace - (time.monotonic() - wall0)
                    if ahead > 0 and self.stop.wait(ahead):
                        return
                plan = self.current_plan()
                self._collect_segment(frame.image, frame.ts, plan)
                if not self._skipper.keep(plan.video_conf, frame.ts):
                    self.stats.skipped += 1
                    continue
                if self.reserve is not None and not self.reserve(self.seq):
                    self.stats.dropped += 1
                    self.stats.unreserved += 1
                    self._last_kept = None
                    continue
                if not self._admit():
                    if self.stop.is_set():
                        return
                    self.stats.dropped += 1
                    self._last_kept = None  # the tracking chain is broken: detect next
                    continue
                try:
                    self._send(frame.image, frame.ts, plan)
                except DispatchUnavailable:
                    self.stats.dropped += 1
                    self.stats.unavailable += 1
        finally:
            # The reader first: it may be inside a read, and a capture closed under a read crashes.
            if reader is None or reader.close():
                self.source.close()

    def _admit(self) -> bool:
        if self.window.try_add(self.seq):
            return True
        if self.backpressure == "drop":
            return False
        while not self.stop.is_set():
            if self.window.wait_for_room(self.stop) and self.window.try_add(self.seq):
                return True
        return False

    def _track_from(self, plan: ActivePlan) -> int:
        """The kept frame this one tracks from, or -1 to detect (and start a new run)."""
        k = plan.video_conf.ntracking
        if k and self._last_kept is not None and self._tracked_run < k:
            self._tracked_run += 1
            return self._last_kept
        self._tracked_run = 0
        return -1

    def _send(self, image, ts: float, plan: ActivePlan) -> None:
        resized = resize_to(image, plan.video_conf.resolution)
        jpeg = encode_jpeg(resized, plan.video_conf.quality)
        track_from = self._track_from(plan)
        profile = (track_from < 0 and bool(plan.profile_every) and self._detected % plan.profile_every == 0
                   and not _sees_what_golden_sees(plan, resized.shape, image.shape))
        # The golden config sees the source frame at high quality, not the planned one.
        golden = encode_jpeg(image, 95) if profile else None
        if self._clip.maxlen:
            self._clip.append(jpeg)
        now = time.time()
        env = Envelope(
            job=self.job_uid,
            seq=self.seq,
            plan=plan.plan_id,
            capture_ts=ts,
            sent_at=now,
            enqueued_at=now,
            width=resized.shape[1],
            height=resized.shape[0],
            image=jpeg,
            frame_bytes=len(jpeg),
            clip=list(self._clip),
            route=list(plan.route),
            origin=self.origin_node,
            results_queue=self.results_queue,
            profile=profile,
            golden_image=golden,
            golden_grade=plan.golden_grade,
            track_from=track_from,
        )
        try:
            self.dispatch(env)
        except Exception:
            self.window.release(self.seq)
            self._last_kept = None
            raise
        self._last_kept = self.seq
        self.seq += 1
        self.last_sent_ts = ts
        self.stats.sent += 1
        if track_from >= 0:
            self.stats.tracked += 1
        else:
            self._detected += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, len(self.window))

    # -- profiling segments ---------------------------------------------------------------------
    def _collect_segment(self, image, ts: float, plan: ActivePlan) -> None:
        """Every segment_every_s of video, the next consecutive source frames (all of them, kept
        or not: tracking runs through them) go to a worker: enough for segment_frames of them to
        be golden-scored at the source's golden stride (services/profiling.golden_stride)."""
        if not plan.segment_every_s or plan.segment_frames < 2:
            return
        if self._segment is None:
            if self._next_segment_ts is None:
                self._next_segment_ts = ts + min(1.0, plan.segment_every_s)
            if ts < self._next_segment_ts:
                return
            self._segment = []
        self._segment.append(encode_jpeg(image, SEGMENT_QUALITY))
        first = self.stats.segments == 0
        golden = min(URGENT_SEGMENT_FRAMES, plan.segment_frames) if first else plan.segment_frames
        golden_every = golden_stride(self.source.info.fps or 10.0)
        if len(self._segment) >= min(MAX_SEGMENT_FRAMES, (golden - 1) * golden_every + 1):
            frames, self._segment = self._segment, None
            # The first few come faster: the planner learns the content's accuracy in seconds.
            every = plan.segment_every_s / (3 if self.stats.segments < FAST_SEGMENTS else 1)
            self._next_segment_ts = ts + every
            self._send_segment(frames, ts, plan, image.shape, golden_every)

    def _send_segment(self, frames: list[bytes], ts: float, plan: ActivePlan, shape, golden_every: int) -> None:
        detector = [h for h in plan.route if h.service in SEGMENT_SERVICES][:1]
        if not detector:
            return
        now = time.time()
        h, w = shape[:2]
        env = Envelope(job=self.job_uid, seq=0, plan=plan.plan_id, capture_ts=ts, sent_at=now, read_at=now,
                       enqueued_at=now, width=w, height=h, route=detector, origin=self.origin_node,
                       results_queue=self.results_queue, kind="profile", segment=frames,
                       segment_fps=self.source.info.fps or 10.0, segment_golden_every=golden_every,
                       golden_grade=plan.golden_grade,
                       frame_bytes=sum(map(len, frames)), urgent=self.stats.segments < plan.urgent_segments)
        try:
            self.dispatch(env)
            self.stats.segments += 1
        except Exception:
            log.warning("profiling segment of job %s not sent", self.job_uid, exc_info=True)


__all__ = ["ActivePlan", "FrameGenerator", "GeneratorStats", "InFlightWindow", "SourceError"]
