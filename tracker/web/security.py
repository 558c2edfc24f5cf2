"""Request limits, the bearer token, and the video source policy.

- Bodies over MAX_CONTENT_LENGTH are refused with 413 before they are read.
- With `settings.api_token` set, mutating requests and every /node/* route need
  `Authorization: Bearer <token>`; reads of the native API stay open.
- A job's source is a file under one of `settings.allowed_video_dirs` (after resolving
  symlinks), a URL with an allowed scheme, a webcam index, or the synthetic clip.
"""
from __future__ import annotations

import hmac
import os
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from flask import Flask, request

from services.settings import Settings
from services.sources import SYNTHETIC_PREFIX, SourceError, open_source, probe_source
from tracker.web.errors import Unauthorized, ValidationFailed

MAX_CONTENT_LENGTH = 1 << 20  # 1 MiB: a job spec is a few KB
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_WEBCAM_INDEX = 63
# URL probes run here, not on the request thread: a camera that never answers holds a probe
# thread until FFmpeg's own timeout (the request waits at most that long), at most 4 at once.
_url_probes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vdag-url-probe")


def init_app(app: Flask, settings: Settings) -> None:
    app.config["MAX_CONTENT_LENGTH"] = MAX_CONTENT_LENGTH
    token = settings.api_token

    if not token:
        return

    @app.before_request
    def _require_token() -> None:
        if request.method == "OPTIONS":  # a CORS preflight carries no credentials
            return
        if request.method not in MUTATING_METHODS and not request.path.startswith("/node/"):
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")


@dataclass(frozen=True)
class CheckedSource:
    kind: Literal["file", "url", "webcam", "synthetic"]
    value: str  # what the job stores: the resolved path, the URL, the index as text
    info: dict | None = None  # {width, height, fps} when it could be read without waiting


def check_source(source: str | int, settings: Settings, field: str = "source", probe: bool = True) -> CheckedSource:
    """Apply the source policy; raises ValidationFailed naming `field`."""
    if isinstance(source, bool):
        raise ValidationFailed("must be a file path, a URL or a webcam index", field=field)
    if isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()):
        index = int(source)
        if not 0 <= index <= MAX_WEBCAM_INDEX:
            raise ValidationFailed(f"webcam index must be 0..{MAX_WEBCAM_INDEX}", field=field)
        return CheckedSource("webcam", str(index))
    if not isinstance(source, str) or not source.strip():
        raise ValidationFailed("must be a file path, a URL or a webcam index", field=field)
    source = source.strip()
    if "\x00" in source:
        raise ValidationFailed("contains a NUL character", field=field)
    if source.startswith(SYNTHETIC_PREFIX):
        try:
            info = open_source(source).info
        except SourceError as exc:
            raise ValidationFailed(str(exc), field=field) from None
        return CheckedSource("synthetic", source, {"width": info.width, "height": info.height, "fps": info.fps})
    if "://" in source:
        parts = urlsplit(source)
        if parts.scheme.lower() not in settings.allowed_url_schemes:
            allowed = ", ".join(settings.allowed_url_schemes)
            raise ValidationFailed(f"URL scheme {parts.scheme!r} is not allowed (allowed: {allowed})", field=field)
        if not parts.hostname:
            raise ValidationFailed("URL has no host", field=field)
        info = _probe_url(source, settings.url_probe_timeout_s, field) if probe else None
        return CheckedSource("url", source, info)
    return _check_file(source, settings, field, probe)


def _probe_url(url: str, timeout_s: float, field: str) -> dict | None:
    """{width, height, fps} of a URL source that opens within `timeout_s`, else a 422."""
    if timeout_s <= 0:
        return None
    future = _url_probes.submit(probe_source, url, timeout_s)
    try:
        info = future.result(timeout=timeout_s + 1.0)  # FFmpeg's timeout fires first; this is the belt
    except FutureTimeout:
        raise ValidationFailed(f"the video URL did not open within {timeout_s:g} s", field=field) from None
    except SourceError:
        raise ValidationFailed(f"the video URL cannot be opened (probed for up to {timeout_s:g} s)",
                               field=field) from None
    return {"width": info["width"], "height": info["height"], "fps": info["fps"]}


def _check_file(source: str, settings: Settings, field: str, probe: bool) -> CheckedSource:
    path = os.path.realpath(os.path.expanduser(source))  # symlinks resolved: no escapes
    roots = [os.path.realpath(os.path.expanduser(str(d))) for d in settings.allowed_video_dirs]
    if not any(os.path.commonpath([path, root]) == root for root in roots):
        allowed = ", ".join(str(d) for d in settings.allowed_video_dirs)
        raise ValidationFailed(f"file is not under an allowed video directory ({allowed})", field=field)
    if not os.path.isfile(path):
        raise ValidationFailed("no such video file", field=field)
    info = None
    if probe:
        try:
            src = open_source(path)
        except SourceError:
            raise ValidationFailed("not a readable video file", field=field) from None
        try:
            info = {"width": src.info.width, "height": src.info.height, "fps": src.info.fps}
        finally:
            src.close()
    return CheckedSource("file", path, info)
