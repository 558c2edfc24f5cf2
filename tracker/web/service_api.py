"""The seed's service API (its service_demo on :5500), over our registry and our workers.

  GET  /get_service_list          ["face_detection", ...]  (a bare array)
  GET  /get_cluster_info          {ip: {node_role, n_cpu, cpu_ratio, mem, mem_ratio}}  (live, node table)
  GET  /get_resource_info         {"cloud"|"edge": {ip: {service: {n_process, cpu_ratio, mem_ratio}}}}
  POST /execute_task/<service>    the service's inputs -> its outputs (no wrapper), run by a
  POST /service/<service>         worker through the node queues (tasks.service_call);
                                  ?node=NAME picks the node (default: this tracker's)

Images travel as base64, or as the seed's Python bytes literal ("b'\\xff\\xd8...'"), read by
a parser of bytes literals only (codecs.escape_decode on the quoted body, never eval); a
reply's bytes come back in the spelling the request used. Errors answer
{"status": 1, "error": "..."} with a 4xx/5xx status, never an HTML page.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

from flask import Flask, current_app, jsonify, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

from scheduler.seed_format import cluster_info, resource_info
from services.registry import UnknownService, all_services, get_service
from services.settings import Settings
from tasks.service_call import ServiceCaller, ServiceTimeout
from tracker.store import Store
from tracker.web.errors import StrictJSONProvider

log = logging.getLogger(__name__)

EXTENSION = "vdag_service"
MAX_CONTENT_LENGTH = 16 << 20  # a 4K JPEG as a bytes literal is a few MB
# b'...' or b"...": printable ASCII and backslash escapes, the delimiter only escaped.
_BYTES_LITERAL = re.compile(r"""^b(?:'((?:[^\\'\n]|\\.)*)'|"((?:[^\\"\n]|\\.)*)")$""", re.S)
ByteSpelling = Literal["base64", "literal"]


class ServiceRequestError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ServiceApi:
    settings: Settings
    store: Store
    caller: ServiceCaller | None  # None: the API lists services but cannot run them
    timeout_s: float = 60.0


def read_bytes(value: Any, field: str) -> tuple[bytes, ByteSpelling]:
    if not isinstance(value, str):
        raise ServiceRequestError(f"{field}: an image is a base64 string or a bytes literal b'...'")
    literal = _BYTES_LITERAL.match(value)
    if literal:
        try:
            body = literal.group(1) if literal.group(1) is not None else literal.group(2)
            return codecs.escape_decode(body.encode("ascii"))[0], "literal"
        except (ValueError, UnicodeEncodeError):
            raise ServiceRequestError(f"{field}: not a valid bytes literal") from None
    try:
        return base64.b64decode(value, validate=True), "base64"
    except (binascii.Error, ValueError):
        raise ServiceRequestError(f"{field}: neither base64 nor a bytes literal b'...'") from None


def write_bytes(value: Any, spelling: ByteSpelling) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return repr(bytes(value)) if spelling == "literal" else base64.b64encode(value).decode("ascii")
    if isinstance(value, list):
        return [write_bytes(v, spelling) for v in value]
    if isinstance(value, dict):
        return {k: write_bytes(v, spelling) for k, v in value.items()}
    return value


def _error(message: str, status: int):
    return jsonify({"status": 1, "error": message}), status


def create_service_app(api: ServiceApi) -> Flask:
    app = Flask(__name__)
    app.json_provider_class = StrictJSONProvider
    app.json = StrictJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = MAX_CONTENT_LENGTH
    app.extensions[EXTENSION] = api
    if api.settings.cors_origins:  # the seed served :5500 without CORS, behind its front ends' proxy
        CORS(app, origins=list(api.settings.cors_origins))

    @app.errorhandler(ServiceRequestError)
    def _bad(exc: ServiceRequestError):
        return _error(str(exc), exc.status)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return _error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("service API: unhandled error on %s %s", request.method, request.path)
        return _error("internal server error", 500)

    app.add_url_rule("/get_service_list", view_func=get_service_list)
    app.add_url_rule("/get_cluster_info", view_func=get_cluster_info)
    app.add_url_rule("/get_resource_info", view_func=get_resource_info)
    app.add_url_rule("/execute_task/<service>", view_func=execute_task, methods=["POST"])
    app.add_url_rule("/service/<service>", endpoint="service", view_func=execute_task, methods=["POST"])
    return app


def _api() -> ServiceApi:
    return current_app.extensions[EXTENSION]


def get_service_list():
    return jsonify(sorted(all_services()))


def get_cluster_info():
    nodes = _api().store.list_nodes(alive_only=True)
    mem = {n.name: round(n.resources["mem_total_gb"] * 1024) for n in nodes
           if isinstance(n.resources.get("mem_total_gb"), (int, float))}  # heartbeats report GB; the seed, MB
    return jsonify(cluster_info(nodes, mem))


def get_resource_info():
    return jsonify(resource_info(_api().store.list_nodes(alive_only=True), sorted(all_services())))


def execute_task(service: str):
    api = _api()
    try:
        svc = get_service(service)
    except UnknownService:
        return _error(f"unregistered services: {service!r} (see /get_service_list)", 404)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ServiceRequestError("the body must be a JSON object of the service's inputs")
    missing = [f for f in svc.required_inputs if body.get(f) is None]
    if missing:
        raise ServiceRequestError(f"{', '.join(missing)}: required by {service} (inputs: {', '.join(svc.inputs)})")
    inputs = {f: body[f] for f in svc.inputs if body.get(f) is not None}
    spelling: ByteSpelling = "base64"
    if svc.image_input and svc.image_input in inputs:
        inputs[svc.image_input], spelling = read_bytes(inputs[svc.image_input], svc.image_input)
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise ServiceRequestError("params: must be an object")
    try:
        svc.validate_params(params)
    except ValueError as exc:
        raise ServiceRequestError(str(exc)) from None
    node = request.args.get("node") or api.settings.node
    if api.store.get_node(node) is None:
        raise ServiceRequestError(f"node: no node named {node!r}", 404)
    if api.caller is None:
        return _error("this tracker runs no service calls", 503)
    try:
        outputs = api.caller.call(service, node, inputs, params, timeout_s=api.timeout_s)
    except ServiceTimeout as exc:
        return _error(str(exc), 504)
    except ValueError as exc:  # an image the codec cannot read
        raise ServiceRequestError(f"{svc.image_input}: {exc}") from None
    except RuntimeError as exc:  # the stage failed on the worker
        return _error(f"{service} failed: {exc}", 422)
    return jsonify(write_bytes(outputs, spelling))
