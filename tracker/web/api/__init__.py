"""The native API under /api/v1, described by /api/v1/openapi.json (docs: /api/v1/swagger)."""
from __future__ import annotations

from flask_openapi3 import OpenAPI

from tracker.web.api.cluster import bp as cluster_bp
from tracker.web.api.jobs import bp as jobs_bp

API_PREFIX = "/api/v1"


def init_app(app: OpenAPI) -> None:
    app.register_api(jobs_bp)
    app.register_api(cluster_bp)
