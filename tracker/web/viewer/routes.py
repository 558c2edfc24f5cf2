"""Viewer routes: the MJPEG stream of a job and the HTML pages around it.

- `GET /user/video/<job_uid>` (seed 003 path) and `GET /api/v1/jobs/<job_uid>/video`:
  `multipart/x-mixed-replace; boundary=frame`, one JPEG part per rendered frame; drop it
  into an <img> tag, at most 30 frames a second (the newest frame wins), or `?fps=` (0 < fps
  <= 60). A screen shows no more, and every part costs the node CPU: 10 uncapped viewers of
  a job rendering ~110 fps (bench/api.py, unpaced) took 14 % of its frame rate.
- `GET /api/v1/jobs/<job_uid>/viewers`: per-viewer counters (delivered, dropped).
- `GET /` and `GET /jobs`: the job list. `GET /jobs/<job_uid>`: the live page of a job.

Each stream is a generator on the request thread (no extra thread). It waits on its hub
subscription with a timeout, so it notices a job that stopped (hub.close_job, or the
store says the job is finished or gone); it re-sends the last frame after a few idle
seconds so that a viewer who left is noticed on the failed write; under werkzeug's
server a write that stalls (a viewer that keeps its socket open but reads nothing) times
out. The subscription is closed in `finally` whichever way the stream ends.

These routes live on a plain Blueprint (a raw multipart body and HTML), so they are not
in the OpenAPI document.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request

from tracker.store.jobs import Job, JobState
from tracker.web.context import tracker_context
from tracker.web.errors import BadRequest, NotFound
from tracker.web.viewer.hub import StreamEnded, ViewerHub

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
bp = Blueprint(
    "viewer",
    __name__,
    template_folder=str(_HERE.parent / "templates"),
    static_folder=str(_HERE.parent / "static"),
    static_url_path="/viewer-static",
)

BOUNDARY = "frame"
MAX_FPS = 60.0
# Tunables, overridable through app.config (tests shorten them).
DEFAULTS = {
    "VIEWER_DEFAULT_FPS": 30.0,  # the cap when a viewer asks for none
    "VIEWER_QUEUE_SIZE": 4,  # frames queued per viewer before the oldest is dropped
    "VIEWER_POLL_S": 0.5,  # longest wait on the hub before looking around
    "VIEWER_CHECK_S": 2.0,  # how often a stream asks the store whether the job is finished
    "VIEWER_KEEPALIVE_S": 5.0,  # idle seconds before the last frame is sent again
    "VIEWER_SEND_TIMEOUT_S": 30.0,  # a viewer whose socket takes no data this long is dropped
}

_waiting_jpeg: bytes | None = None


def _config(name: str) -> float:
    return current_app.config.get(name, DEFAULTS[name])


# -- reading jobs from the store -------------------------------------------------------
def _find_job(store: Any, job_uid: str) -> Job | None:
    """The job, or None if the store does not know it (it raises JobNotFound or returns None)."""
    try:
        return store.get_job(job_uid)
    except LookupError:  # JobNotFound
        return None


def _is_finished(job: Job | None) -> bool:
    """No more frames will come: the job ended or is gone."""
    return job is None or JobState(job.state).ended


def _list_jobs(store: Any, limit: int = 200) -> list[Job]:
    jobs = store.list_jobs(limit=limit)
    return list(jobs[0] if isinstance(jobs, tuple) else jobs)  # (page, total) from the Store


# -- the MJPEG stream -------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _part(jpeg: bytes, seq: int | None) -> bytes:
    """One multipart part. Cached: every viewer of a job is handed the same frame object, so
    the part is built once per frame, not once per viewer (the key's hash is the frame's,
    which bytes compute once and keep)."""
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
    if seq is not None:
        head += f"X-Frame-Seq: {seq}\r\n"
    return head.encode("ascii") + b"\r\n" + jpeg + b"\r\n"


def _waiting_frame() -> bytes:
    """A grey 'waiting for frames' picture, so the <img> shows something before frame one."""
    global _waiting_jpeg
    if _waiting_jpeg is None:
        _waiting_jpeg = (_HERE.parent / "static" / "viewer-waiting.jpg").read_bytes()
    return _waiting_jpeg


def _parse_fps(raw: str | None) -> float | None:
    """None = not given (the default cap). Raises ValueError with a message meant for the user."""
    if raw is None or raw == "":
        return None
    try:
        fps = float(raw)
    except ValueError:
        raise ValueError(f"fps must be a number, got {raw!r}") from None
    if not math.isfinite(fps) or not 0 < fps <= MAX_FPS:
        raise ValueError(f"fps must be greater than 0 and at most {MAX_FPS:g}, got {raw!r}")
    return fps


def _stream(
    app: Flask,
    hub: ViewerHub,
    store: Any,
    job_uid: str,
    fps: float | None,
) -> Iterator[bytes]:
    """One viewer's MJPEG body. Subscribes on the first iteration, so a response that is
    never iterated holds no subscription; unsubscribes in `finally` however it ends."""
    cfg = {name: float(app.config.get(name, default)) for name, default in DEFAULTS.items()}
    poll_s, check_s, keepalive_s = cfg["VIEWER_POLL_S"], cfg["VIEWER_CHECK_S"], cfg["VIEWER_KEEPALIVE_S"]
    reason = "job closed"
    last: tuple[int, bytes] | None = None  # the last frame sent
    now = time.monotonic()
    last_sent, next_check = now, now + check_s
    # The hub paces a capped viewer: it hands out the newest frame at most `fps` times a second.
    sub = hub.subscribe(job_uid, maxsize=int(cfg["VIEWER_QUEUE_SIZE"]), with_latest=True,
                        min_interval_s=1.0 / fps if fps else 0.0)
    try:
        if hub.latest(job_uid) is None:
            yield _part(_waiting_frame(), None)
        while True:
            try:
                frame = sub.get(timeout=poll_s)
            except StreamEnded:  # hub.close_job: the job stopped (what was queued is sent)
                return
            now = time.monotonic()
            if now >= next_check:
                next_check = now + check_s
                if _job_finished(app, store, job_uid, check_s):
                    reason = "job finished"
                    while frame is not None:  # hand out what is queued, then end
                        yield _part(frame[1], frame[0])
                        frame = sub.get(timeout=0)
                    return
            if frame is None:
                if now - last_sent >= keepalive_s:  # a write is how we notice a viewer left
                    seq, jpeg = last if last else (None, _waiting_frame())
                    yield _part(jpeg, seq)
                    last_sent = now
                continue
            last = frame
            last_sent = now
            yield _part(frame[1], frame[0])
    except GeneratorExit:
        reason = "viewer left"
        raise
    except StreamEnded:
        pass
    finally:
        sub.close()
        log.info(
            "stream of job %s ended (%s): delivered=%d dropped=%d skipped_for_fps=%d",
            job_uid, reason, sub.delivered, sub.dropped, sub.skipped,
        )


class JobEndReads:
    """Whether a job has ended, read from the store at most once per `max_age_s` for all of
    its viewers together (ten viewers each asking every 2 s were about a fifth of the API front's
    samples in a py-spy profile while they watched). A failing store read is logged, not cached,
    and does not end the stream."""

    MAX_JOBS = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: dict[str, tuple[float, bool]] = {}  # job uid -> (monotonic time read, ended)

    def finished(self, app: Flask, store: Any, job_uid: str, max_age_s: float) -> bool:
        now = time.monotonic()
        with self._lock:
            cached = self._read.get(job_uid)
        if cached is not None and now - cached[0] < max_age_s:
            return cached[1]
        try:
            with app.app_context():
                ended = _is_finished(_find_job(store, job_uid))
        except Exception:  # noqa: BLE001 - e.g. the database is briefly unavailable
            log.warning("viewer of job %s could not read the job; streaming on", job_uid, exc_info=True)
            return False
        with self._lock:
            if len(self._read) >= self.MAX_JOBS:
                self._read = {uid: v for uid, v in self._read.items() if now - v[0] < max_age_s}
            self._read[job_uid] = (now, ended)
        return ended


def _job_finished(app: Flask, store: Any, job_uid: str, max_age_s: float) -> bool:
    reads = app.extensions.setdefault("vdag_viewer_job_ends", JobEndReads())
    return reads.finished(app, store, job_uid, max_age_s)


def _limit_send_time(seconds: float) -> None:
    """Bound how long one write may stall on a viewer that holds its socket open but reads
    nothing (werkzeug's server: the write times out, the server closes the stream, and
    the generator's `finally` unsubscribes). Other servers keep their own timeouts."""
    sock = request.environ.get("werkzeug.socket")
    if sock is not None and hasattr(sock, "settimeout"):
        sock.settimeout(seconds)


def _video_response(job_uid: str) -> Response:
    try:
        fps = _parse_fps(request.args.get("fps"))
    except ValueError as exc:
        raise BadRequest(str(exc), {"param": "fps"}) from None
    if fps is None:
        fps = float(_config("VIEWER_DEFAULT_FPS")) or None
    ctx = tracker_context()
    job = _find_job(ctx.store, job_uid)
    if job is None:
        raise NotFound(f"no job {job_uid!r}")
    if _is_finished(job):
        # No more frames will come: show the last picture (if any) and end.
        latest = ctx.hub.latest(job_uid)
        gen: Iterator[bytes] = iter([_part(latest[1], latest[0])] if latest else [])
    else:
        _limit_send_time(float(_config("VIEWER_SEND_TIMEOUT_S")))
        gen = _stream(current_app._get_current_object(), ctx.hub, ctx.store, job_uid, fps)
    resp = Response(gen, mimetype=f"multipart/x-mixed-replace; boundary={BOUNDARY}", direct_passthrough=True)
    resp.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
    resp.headers["Pragma"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"  # tell a fronting nginx not to buffer
    return resp


@bp.get("/user/video/<job_uid>")
def seed_video(job_uid: str) -> Response:
    """Seed 003: streamed JPEG of the job's rendered frames, for an <img> tag."""
    return _video_response(job_uid)


@bp.get("/api/v1/jobs/<job_uid>/video")
def job_video(job_uid: str) -> Response:
    """MJPEG stream (multipart/x-mixed-replace) of the job's rendered frames."""
    return _video_response(job_uid)


@bp.get("/api/v1/jobs/<job_uid>/viewers")
def job_viewers(job_uid: str) -> Response:
    """Live viewers of the job and their counters."""
    ctx = tracker_context()
    if _find_job(ctx.store, job_uid) is None:
        raise NotFound(f"no job {job_uid!r}")
    latest = ctx.hub.latest(job_uid)
    return jsonify(
        {
            "job_uid": job_uid,
            "published": ctx.hub.published(job_uid),
            "latest_seq": latest[0] if latest else None,
            "viewers": [
                {"id": s.id, "delivered": s.delivered, "dropped": s.dropped, "skipped_for_fps": s.skipped,
                 "queued": s.queued, "since": s.since}
                for s in ctx.hub.stats(job_uid)
            ],
        }
    )


# -- HTML pages -------------------------------------------------------------------------
@bp.get("/")
@bp.get("/jobs")
def jobs_page() -> str:
    ctx = tracker_context()
    return render_template("viewer_jobs.html", jobs=_list_jobs(ctx.store))


@bp.get("/jobs/<job_uid>")
def job_page(job_uid: str) -> tuple[str, int] | str:
    ctx = tracker_context()
    job = _find_job(ctx.store, job_uid)
    if job is None:
        return render_template("viewer_missing.html", job_uid=job_uid), 404
    return render_template("viewer_job.html", job=job)
