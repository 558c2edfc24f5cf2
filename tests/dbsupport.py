"""Database fixtures for the store, API and migration tests: SQLite (a temp file) and
PostgreSQL (a fresh schema per module on 127.0.0.1:5432/test, skipped if unreachable).

Import the fixtures into a test module: `from dbsupport import db_url, store, ...`.
"""
from __future__ import annotations

import os
import uuid
from urllib.parse import quote

import pytest

PG_BASE = os.environ.get("VDAG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_pg_error: str | None = None
_pg_checked = False


def pg_unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    global _pg_checked, _pg_error
    if not _pg_checked:
        _pg_checked = True
        try:
            import psycopg

            with psycopg.connect(PG_BASE.replace("+psycopg", ""), connect_timeout=3):
                pass
        except Exception as exc:  # noqa: BLE001 - any failure means "not here"
            _pg_error = f"PostgreSQL unreachable at {PG_BASE}: {exc}".splitlines()[0]
    return _pg_error


def _pg_exec(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_BASE.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(sql)


def new_pg_schema() -> tuple[str, str]:
    """A fresh schema and a URL whose search_path points at it."""
    schema = f"vdag_t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    _pg_exec(f'CREATE SCHEMA "{schema}"')
    return schema, f"{PG_BASE}?options={quote(f'-csearch_path={schema}')}"


def drop_pg_schema(schema: str) -> None:
    _pg_exec(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


BACKENDS = ["sqlite", pytest.param("postgresql", id="postgresql")]


def make_db_url(backend: str, tmp_dir) -> tuple[str, callable]:
    """(url, cleanup) for an empty database of the given backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_dir}/vdag-{uuid.uuid4().hex[:6]}.db", lambda: None
    reason = pg_unreachable()
    if reason:
        pytest.skip(reason)
    schema, url = new_pg_schema()
    return url, lambda: drop_pg_schema(schema)


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
