"""Fixtures shared by both tiers of tests."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.db import BACKENDS, make_db_url

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def chrome() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium chromium-driver)")
    pytest.importorskip("PIL", reason="Pillow is needed to draw test frames")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="vdag-chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# -- databases: SQLite always, PostgreSQL when it answers (tests/support/db.py) -------------


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """An empty database (not migrated) per test."""
    url, cleanup = make_db_url(request.param, tmp_path)
    yield url
    cleanup()


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url(request, tmp_path_factory):
    """A migrated database shared by a module's tests; `store` empties it per test."""
    url, cleanup = make_db_url(request.param, tmp_path_factory.mktemp("db"))
    yield url
    cleanup()


@pytest.fixture(scope="module")
def module_store(module_db_url):
    from tracker.store import Store

    st = Store(module_db_url)
    yield st
    st.close()


@pytest.fixture
def store(module_store):
    from sqlalchemy import delete

    from tracker.store.models import Base

    with module_store.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
    return module_store
