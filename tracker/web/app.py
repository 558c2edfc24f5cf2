"""The Flask app factory: a short list of init calls over one TrackerContext."""
from __future__ import annotations

import logging

from flask import Flask
from flask_cors import CORS
from flask_openapi3 import Info, OpenAPI

from services.settings import Settings
from tracker.cluster import elasticity
from tracker.runtime.job_control import JobControl, JobEffects
from tracker.store import Store
from tracker.store.recent_results import RecentResults
from tracker.web import api, edge_api, errors, metrics, security, seed_api
from tracker.web.context import TrackerContext
from tracker.web.viewer.hub import ViewerHub
from tracker.web.viewer.routes import bp as viewer_bp

log = logging.getLogger(__name__)

SECURITY_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer"}}


def create_app(
    settings: Settings,
    store: Store | None = None,
    control: JobControl | None = None,
    hub: ViewerHub | None = None,
    recent: RecentResults | None = None,
    effects: JobEffects | None = None,
) -> OpenAPI:
    """Without a store, one is opened on settings.database_url and migrated to head. Without
    a JobControl (an API-only tracker: tools, tests), jobs move in the store with `effects`
    (default: recorded, nothing runs)."""
    app = OpenAPI(
        __name__,
        info=Info(title="vdag job tracker", version="1", description="Adaptive video-analytics DAG jobs"),
        security_schemes=SECURITY_SCHEMES,
        doc_prefix=api.API_PREFIX,  # /api/v1/openapi.json, docs at /api/v1/swagger
        doc_url="/openapi.json",
        validation_error_model=errors.ErrorBody,
    )
    store = store if store is not None else Store(settings.database_url)
    app.extensions["vdag"] = TrackerContext(
        settings=settings,
        store=store,
        hub=hub if hub is not None else ViewerHub(),
        control=control if control is not None else JobControl(store, effects),
        recent=recent if recent is not None else RecentResults(),
    )
    errors.init_app(app)
    init_cors(app, settings)
    app.json.sort_keys = False
    security.init_app(app, settings)
    api.init_app(app)
    seed_api.init_app(app)
    edge_api.init_app(app)
    metrics.init_app(app)
    elasticity.init_app(app)
    app.register_blueprint(viewer_bp)
    return app


def init_cors(app: Flask, settings: Settings) -> None:
    """Access-Control-* on every route (the seed's CORS(app)), preflights answered; the
    bearer token is still checked on the real request (tracker.web.security)."""
    if settings.cors_origins:
        CORS(app, origins=list(settings.cors_origins), allow_headers=["Content-Type", "Authorization"],
             expose_headers=["Retry-After"], max_age=600)
