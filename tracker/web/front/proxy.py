"""The front serves what it can from its own memory and the store; the rest goes to the core.

Result polls, MJPEG streams and the viewer pages are answered in the front process (they
read only the store and what the core feeds it). Everything else (submitting, cancelling,
plans, nodes, metrics, the OpenAPI document) changes or reads the core's live state, so
the request is forwarded unchanged to the core's own HTTP server on 127.0.0.1 and its
answer relayed as it is: one API on one port, whichever process answers.
"""
from __future__ import annotations

import logging
import threading

import requests
from flask import Flask, Response, request

from tracker.web.errors import NotReady

log = logging.getLogger(__name__)

# Flask endpoints answered in the front: reads of the store and of the fed memory only.
SERVED_IN_FRONT = frozenset({
    "api_jobs.job_results",
    "seed_user.sync_job_result",
    "seed_user.get_agg_info",
    "viewer.seed_video",
    "viewer.job_video",
    "viewer.job_viewers",
    "viewer.jobs_page",
    "viewer.job_page",
    "static",
})
# Headers that describe one connection, not the message (RFC 9110 7.6.1), those that
# `requests` has already undone (it decodes gzip and reassembles chunks), and those the
# front's own server writes.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "content-length", "content-encoding", "host",
                        "server", "date", "via"})
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 120.0  # a submit may probe a URL source, a delete may wait for a generator to stop
CORE_RETRY_AFTER_S = 2


class CoreUnavailable(NotReady):
    """The tracker core did not answer: it is starting, restarting or overloaded (503, Retry-After)."""

    code = "core_unavailable"


class CoreProxy:
    def __init__(self, core_url: str) -> None:
        self.core_url = core_url.rstrip("/")
        self._local = threading.local()  # a keep-alive session per request thread

    def init_app(self, app: Flask) -> None:
        app.before_request(self.forward_unless_served_here)

    def forward_unless_served_here(self) -> Response | None:
        # endpoint None: no route matched; the front answers the 404/405 itself, as the core would.
        if request.endpoint is None or request.endpoint in SERVED_IN_FRONT:
            return None
        return self.forward()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # never via an HTTP(S)_PROXY: the core is on loopback
        return session

    def forward(self) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-For"] = request.remote_addr or ""
        url = self.core_url + request.path + (f"?{request.query_string.decode('latin-1')}" if request.query_string else "")
        try:
            answer = self._session().request(request.method, url, headers=headers, data=request.get_data(),
                                             timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S), allow_redirects=False)
        except requests.RequestException as exc:
            log.warning("core did not answer %s %s: %s", request.method, request.path, type(exc).__name__)
            raise CoreUnavailable("the tracker core is not answering; retry shortly", CORE_RETRY_AFTER_S) from None
        relayed = [(k, v) for k, v in answer.raw.headers.items() if k.lower() not in HOP_BY_HOP]
        return Response(answer.content, status=answer.status_code, headers=relayed)
