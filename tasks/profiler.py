"""Profiling segments on idle capacity: a niced child process next to each worker process.

Scoring a segment runs the golden config on ten of its frames and the candidates on a few more
(about 3-5 s of detector time on a 2-core node). Run inside the stage task, that blocked the node's frames behind it
for seconds (measured: mean delay 4.2 s with D = 1 s). Here the task only hands the segment
to a child process at nice 19 and returns: the child gets the CPU the frames leave idle,
and its result goes to the results queue like a finished frame. One segment at a time per
worker process; a segment that arrives while one is being scored is skipped (counted).
A job's first segment (`urgent`) is scored next, ahead of whatever else waits, and at nice
`profile_first_nice` (10): at nice 19 on a node the frames keep busy the first one took 15-20 s
for a few seconds of CPU, and until then the planner chooses without any accuracy measured on
the video. Not 0: at the frames' own priority it made every window a delay surprise.

The child is our own program (`python -m tasks.profiler`), fed length-prefixed msgpack
envelopes on stdin and answering on stdout (first with an empty message once its models are
loaded); both ends decode strictly (services/codec.py).
A subprocess rather than multiprocessing, because Celery's prefork children are daemonic
and may not have multiprocessing children.

Nice 19 is not enough on a small host: its two vCPUs share more than the scheduler knows
(caches, memory bandwidth, perhaps one physical core), and the detector took ~40 % longer for
the seconds a segment was being scored (Megamind.avi, 480p at 10 fps: 0.074-0.087 s a frame,
then 0.117 s, and 22 frames past D = 0.5 s; vtest.avi the same at the source resolution). So
while this worker process runs a frame the child is stopped (SIGSTOP), and continues when no
frame runs: it scores on idle capacity only, more slowly the busier the frames keep the node.
A job's first segments (`urgent`: Settings.profile_urgent_segments, three) are not stopped:
accuracy learned in seconds is worth more then (the first is also shorter, services/generator.py:
it still slows the frames while it lasts). With only the first unstopped, the others waited for
idle moments that a busy node rarely has: Megamind.avi (24 fps, 2-core AMD host) had 2 of its 7
segments scored in 60 s, the second 20 s after it was sent, and the planner ran 360p for 30 s
on what two 0.4-s segments showed (F1 0.83-0.84; the one-time profile's 480p 0.87). With three,
three were scored in the first 16 s: F1 0.865-0.889, 0 % late, and vtest.avi unchanged (0.946,
0 % late); on that host at 0.7 of a CPU (bench/slow_node.py) bayes 0.858-0.932 with at most
2.7 % late. (A second unstopped segment once slowed 480p frames from 0.31 to 0.48-0.56 s on a
slow host, but that was while OpenVINO pinned both processes to one core, services/runtimes.py.)
Never stopping any segment, tried after that fix (vtest.avi, worker on PyTorch as a slow node
stand-in): 4 segments scored a minute instead of 2, calibration no better (0.056 / 0.078 vs
0.051-0.084), so later segments stay stopped.
The child dies with the worker (PR_SET_PDEATHSIG), stopped or not.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from typing import BinaryIO, Callable

from services.codec import BadEnvelope, Envelope, decode_envelope, encode_envelope
from services.priority import become_background, set_group_nice
from services.settings import Settings

log = logging.getLogger(__name__)

NICE = 19
_LEN = struct.Struct("!I")
_PR_SET_PDEATHSIG = 1


def _child_setup(nice: int) -> None:
    """In the child before exec: its niceness, in a scheduling group of its own (services/priority.py),
    and its death with the worker that started it (a stopped child would otherwise outlive a
    killed worker, ~1.2 GB)."""
    become_background(nice)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the child still ends at end-of-file on its stdin


def _write(stream: BinaryIO, payload: bytes) -> None:
    stream.write(_LEN.pack(len(payload)) + payload)
    stream.flush()


def _read(stream: BinaryIO) -> bytes | None:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (n,) = _LEN.unpack(head)
    body = stream.read(n)
    return body if len(body) == n else None


class SegmentProfiler:
    """The worker side: submit() never blocks; results reach `publish` from a reader thread."""

    def __init__(self, settings: Settings, publish: Callable[[Envelope], None], nice: int = NICE,
                 urgent_nice: int | None = None) -> None:
        self.settings = settings
        self.publish = publish
        self.nice = nice
        self.urgent_nice = nice if urgent_nice is None else urgent_nice
        self._nice_now = self.urgent_nice  # a new child's first segments are a job's first
        self._renice_refused = False
        # Urgent segments waiting for the busy child, oldest first: at most a job's worth
        # (profile_urgent_segments); past that the oldest is dropped and counted as skipped.
        self._waiting: deque[Envelope] = deque()
        self._proc: subprocess.Popen | None = None
        self._busy = threading.Event()
        self._ready = threading.Event()  # the child has loaded its models (it said so)
        self._lock = threading.Lock()
        self.scored = 0
        self.skipped = 0
        self._since = 0.0  # when the segment being scored was handed over
        self._urgent_now = False  # the segment being scored is a job's first: never stopped
        self._frames = 0          # frames this worker process is running now
        self._stopped = False     # the child is stopped (SIGSTOP) while they run
        self.stops = 0

    def _start_locked(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._ready.clear()
            # One thread: background work must leave the frames' cores alone, not stall them.
            child = self.settings.model_copy(update={"torch_threads": 1})
            nice = self._nice_now = self.urgent_nice
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tasks.profiler", child.model_dump_json()], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, preexec_fn=lambda: _child_setup(nice),
            )
            threading.Thread(target=self._read_results, args=(self._proc,), name="vdag-profiler-results",
                             daemon=True).start()
            log.info("profiler process %d started (nice %d)", self._proc.pid, nice)
        return self._proc

    def _renice_locked(self, proc: subprocess.Popen, nice: int) -> None:
        """Every thread of the child (Linux niceness is per thread; the inference runtime has
        its own pool). Lowering niceness needs privilege: without it the child stays at the higher."""
        if nice == self._nice_now or (self._renice_refused and nice < self._nice_now):
            return
        try:
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            set_group_nice(proc.pid, nice)
            self._nice_now = nice
        except PermissionError:
            self._renice_refused = True
            log.info("profiler process %d stays at nice %d (raising its priority needs privilege)",
                     proc.pid, self._nice_now)
        except (FileNotFoundError, ProcessLookupError):
            pass  # it just ended; the next submit starts a new one

    def start(self, wait_s: float = 0.0) -> bool:
        """Start the child now and wait up to `wait_s` until it has loaded its models; returns
        whether it has. Worker warm-up waits: loading at nice 19 once a job's frames flow took
        20-35 s on a busy 2-core node, and the first profiled accuracy came that much later
        (the first segment was scored 34-43 s after it was sent, the next ones in 9-19 s)."""
        with self._lock:
            self._start_locked()
        return self._ready.wait(wait_s) if wait_s > 0 else self._ready.is_set()

    def submit(self, env: Envelope) -> bool:
        """Hand a segment over and return at once: a writer thread feeds the child's pipe (a
        segment is larger than the pipe's buffer, and a child still loading its models reads
        nothing yet). While one is being scored urgent segments wait, in the order they came, and
        are scored next, whatever job the busy one is from; any other is skipped. Where scoring
        one takes longer than the seconds between a job's first segments (a slow host), keeping
        only the newest lost the second of them to the third."""
        with self._lock:
            if self._busy.is_set():
                if env.urgent:
                    self._wait_locked(env)
                    log.info("segment of job %s waits for the one being scored (%.1f s so far, %d waiting)",
                             env.job, time.monotonic() - self._since, len(self._waiting))
                    return True
                self.skipped += 1
                log.info("segment of job %s skipped: the previous one is still being scored (%.1f s so far)",
                         env.job, time.monotonic() - self._since)
                return False
            if self._waiting:  # left by a child that died while scoring
                if env.urgent:
                    self._wait_locked(env)
                env = self._waiting.popleft()
            proc = self._hand_over_locked(env)
        self._feed(proc, env)
        return True

    def _wait_locked(self, env: Envelope) -> None:
        if len(self._waiting) >= max(1, self.settings.profile_urgent_segments):
            self._waiting.popleft()
            self.skipped += 1
        self._waiting.append(env)

    def _hand_over_locked(self, env: Envelope) -> subprocess.Popen:
        proc = self._start_locked()
        self._renice_locked(proc, self.urgent_nice if env.urgent else self.nice)
        self._busy.set()
        self._urgent_now = bool(env.urgent)
        self._since = time.monotonic()
        self._signal_locked(stop=self._frames > 0 and not self._urgent_now)
        return proc

    def frame_started(self) -> None:
        """A frame runs in this worker process: stop a child scoring a segment that can wait."""
        with self._lock:
            self._frames += 1
            if self._busy.is_set() and not self._urgent_now:
                self._signal_locked(stop=True)

    def frame_done(self) -> None:
        with self._lock:
            self._frames = max(0, self._frames - 1)
            if self._frames == 0:
                self._signal_locked(stop=False)

    def _signal_locked(self, stop: bool) -> None:
        if stop == self._stopped:  # the usual case, every frame: no system call
            return
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._stopped = False
            return
        try:
            os.kill(proc.pid, signal.SIGSTOP if stop else signal.SIGCONT)
            self._stopped = stop
            self.stops += stop
        except ProcessLookupError:
            self._stopped = False

    def _feed(self, proc: subprocess.Popen, env: Envelope) -> None:
        threading.Thread(target=self._write, args=(proc, encode_envelope(env), env.job),
                         name="vdag-profiler-feed", daemon=True).start()

    def _write(self, proc: subprocess.Popen, payload: bytes, job: str) -> None:
        try:
            _write(proc.stdin, payload)
        except (BrokenPipeError, OSError, ValueError):
            self._busy.clear()
            log.warning("profiler process gone; segment of job %s skipped", job)

    def _read_results(self, proc: subprocess.Popen) -> None:
        while True:
            payload = _read(proc.stdout)
            if payload == b"" and not self._ready.is_set():
                self._ready.set()  # the child's first word: models loaded
                continue
            with self._lock:
                took = time.monotonic() - self._since
                self._busy.clear()
                self._signal_locked(stop=False)  # stopped as it answered: it must read the next one
                if self._waiting and payload is not None:
                    waiting = self._waiting.popleft()
                    self._feed(self._hand_over_locked(waiting), waiting)
            if payload is None:
                return
            try:
                env = decode_envelope(payload)
            except BadEnvelope as exc:
                log.warning("profiler process answered a bad envelope: %s", exc)
                continue
            self.scored += 1
            log.info("segment of job %s scored in %.1f s", env.job, took)
            try:
                self.publish(env)
            except Exception:
                log.exception("profiled segment of job %s not published", env.job)

    def close(self) -> None:
        with self._lock:
            self._signal_locked(stop=False)  # a stopped child would never read its end-of-file
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.stdin.close()  # it ends at end-of-file; one still loading models or scoring is killed
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def main() -> int:
    """The child: score each segment it is sent, answer the advanced envelope."""
    from tasks.stage import execute_hop
    from tasks.worker_state import service_context

    # The answers own the real stdout; whatever a library prints (ultralytics announces every
    # OpenVINO load there) goes to stderr instead of into the length-prefixed stream.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = Settings.model_validate_json(sys.argv[1])  # the parent's settings, as they are
    ctx = service_context(settings, runtime_trials=False)  # niced: its timings would mislead a trial
    if ctx.person_weights:  # the usual detector, loaded and set up before the first segment
        import numpy as np

        from services.detection import detect

        detect(np.zeros((480, 640, 3), np.uint8), ctx.models.get(ctx.person_weights, ctx.device), conf=0.25,
               imgsz=None)
    _write(answers, b"")  # ready: the parent's warm-up waits for this
    worker = f"{settings.node}/profiler/{os.getpid()}"
    stdin, stdout = sys.stdin.buffer, answers
    while (payload := _read(stdin)) is not None:
        try:
            env = decode_envelope(payload)
            stage = env.route[0].stage if env.route else "?"
            try:
                env = execute_hop(env, ctx, settings.node, worker)
            except Exception as exc:  # answer anyway, so the parent's slot frees
                env.outputs[stage] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                env.route = []
            env.segment = []
            _write(stdout, encode_envelope(env))
        except BadEnvelope as exc:
            log.warning("profiler got a bad envelope: %s", exc)
            _write(stdout, b"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
