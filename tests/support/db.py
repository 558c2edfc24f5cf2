"""Database fixtures for the store, API and migration tests: SQLite (a temp file) and
PostgreSQL (a fresh schema per module on 127.0.0.1:5432/test, skipped if unreachable).

The fixtures on them (db_url, module_db_url, module_store, store) are in tests/conftest.py.
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
