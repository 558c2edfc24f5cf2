"""Fixtures of the unit tier: the seed API's client on a real store (SQLite; PostgreSQL too
when it answers), jobs moved by job control with recorded effects, nothing running."""
from __future__ import annotations

import pytest

from services.settings import Settings
from tracker.runtime.job_control import RecordedEffects
from tracker.web.app import create_app


@pytest.fixture
def control():
    return RecordedEffects()


@pytest.fixture
def client(module_db_url, store, control, tmp_path):
    settings = Settings(database_url=module_db_url, allowed_video_dirs=(tmp_path,), cloud_ip="114.212.81.11")
    return create_app(settings, store=store, effects=control).test_client()
