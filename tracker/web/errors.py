"""One error hierarchy and the handlers that turn every failure into JSON.

Native routes answer `{"error": {"code", "message", "details"}}`; the seed-003 routes
(/user, /query, /node) answer the seed's `{"status": 1, "msg": "..."}`, both with a real
4xx/5xx status. A stack trace never reaches a client: it goes to the log.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from scheduler.seed_format import SeedFormatError
from tracker.store import JobEnded, JobExists
from tracker.store.jobs import IllegalTransition, JobNotFound

log = logging.getLogger(__name__)

SEED_PREFIXES = ("/user/", "/query/", "/node/")
STORE_RETRY_AFTER_S = 5


class APIError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(APIError):
    status, code = 400, "bad_request"


class ValidationFailed(APIError):
    """The request is well-formed JSON but a field is wrong; `field` names it."""

    status, code = 422, "validation_failed"

    def __init__(self, message: str, details: Any = None, *, field: str | None = None) -> None:
        if field and details is None:
            details = [{"loc": field.split("."), "msg": message}]
        super().__init__(f"{field}: {message}" if field else message, details)
        self.field = field


class Unauthorized(APIError):
    status, code = 401, "unauthorized"


class NotFound(APIError):
    status, code = 404, "not_found"


class Conflict(APIError):
    status, code = 409, "conflict"


class PayloadTooLarge(APIError):
    status, code = 413, "payload_too_large"


class NotReady(APIError):
    """Asked too early (no result yet); answered 503 with Retry-After."""

    status, code = 503, "not_ready"

    def __init__(self, message: str, retry_after_s: int = 3) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ErrorDetail(BaseModel):
    code: str = Field(..., description="machine-readable error code")
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """Every error of the native API."""

    error: ErrorDetail


def is_seed_path(path: str) -> bool:
    return path.startswith(SEED_PREFIXES)


def error_response(status: int, code: str, message: str, details: Any = None) -> tuple[Response, int]:
    if is_seed_path(request.path):
        return jsonify(status=1, msg=message, error=message), status
    return jsonify(error={"code": code, "message": message, "details": details}), status


def pydantic_details(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[dict]:
    """The errors without echoing the input back (it may be large or sensitive)."""
    return [
        {"loc": [*prefix, *(str(p) for p in e["loc"])], "msg": e["msg"].removeprefix("Value error, "), "type": e["type"]}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def pydantic_message(details: list[dict], limit: int = 5) -> str:
    """"field: problem; other.field: problem" (the first few)."""
    parts = []
    for d in details[:limit] or [{"loc": [], "msg": "invalid request"}]:
        where = ".".join(d["loc"])
        parts.append(f"{where}: {d['msg']}" if where else d["msg"])
    more = f" (and {len(details) - limit} more)" if len(details) > limit else ""
    return "; ".join(parts) + more


def validation_error_response(exc: ValidationError) -> Response:
    """flask-openapi3's validation_error_callback: request models that failed to parse."""
    details = pydantic_details(exc)
    for d in details:
        d["loc"] = d["loc"] or ["body"]  # a model-level failure: the body is not an object
    resp, status = error_response(422, ValidationFailed.code, pydantic_message(details), details)
    resp.status_code = status
    return resp


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class StrictJSONProvider(DefaultJSONProvider):
    """Request JSON without NaN/Infinity (not JSON; PostgreSQL rejects them) or NUL
    characters (PostgreSQL text cannot hold them): such a body reads as invalid JSON."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        raw = s.decode("utf-8", "replace") if isinstance(s, (bytes, bytearray)) else s
        if "\x00" in raw or "\\u0000" in raw.lower():
            raise ValueError("NUL characters are not accepted")
        kwargs.setdefault("parse_constant", _reject_constant)
        return super().loads(s, **kwargs)


def init_app(app: Flask) -> None:
    app.json_provider_class = StrictJSONProvider
    app.json = StrictJSONProvider(app)
    if hasattr(app, "validation_error_callback"):  # flask_openapi3.OpenAPI
        app.validation_error_callback = validation_error_response
        app.validation_error_status = "422"

    @app.errorhandler(APIError)
    def _api_error(exc: APIError):
        resp, status = error_response(exc.status, exc.code, exc.message, exc.details)
        if isinstance(exc, NotReady):
            resp.headers["Retry-After"] = str(exc.retry_after_s)
        return resp, status

    @app.errorhandler(SeedFormatError)
    def _seed_field(exc: SeedFormatError):
        return error_response(400, BadRequest.code, str(exc), [{"loc": exc.field.split("."), "msg": exc.message}])

    @app.errorhandler(JobNotFound)
    def _job_not_found(exc: JobNotFound):
        return error_response(404, NotFound.code, str(exc))

    @app.errorhandler(IllegalTransition)
    def _illegal(exc: IllegalTransition):
        return error_response(409, Conflict.code, str(exc), {"from": exc.old.value, "to": exc.new.value})

    @app.errorhandler(JobExists)
    @app.errorhandler(JobEnded)
    def _conflict(exc: Exception):
        return error_response(409, Conflict.code, str(exc))

    @app.errorhandler(ValidationError)
    def _pydantic(exc: ValidationError):
        details = pydantic_details(exc)
        return error_response(422, ValidationFailed.code, pydantic_message(details), details)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        if exc.response is not None:
            return exc.response
        if exc.code == 413:
            return error_response(413, PayloadTooLarge.code,
                                  f"request body over {current_app.config.get('MAX_CONTENT_LENGTH')} bytes")
        code = (exc.name or "error").lower().replace(" ", "_")
        resp, status = error_response(exc.code or 500, code, exc.description or exc.name)
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            resp.headers["Allow"] = ", ".join(exc.valid_methods)
        return resp, status

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _store_away(exc: Exception):
        # The database is restarting or unreachable: a transient state, not a server bug.
        log.warning("store unavailable on %s %s: %s", request.method, request.path, type(exc.__cause__ or exc).__name__)
        resp, status = error_response(503, "store_unavailable", "the job store is unavailable; retry shortly")
        resp.headers["Retry-After"] = str(STORE_RETRY_AFTER_S)
        return resp, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error")
