"""Alembic migrations on SQLite and PostgreSQL: upgrade, downgrade, re-upgrade, the models
match the migrated schema, and the `alembic` command line finds its config."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from tracker.store import migrate
from tracker.store.db import make_engine
from tracker.store.models import Base

TABLES = {"jobs", "job_transitions", "plans", "frame_results", "observations", "nodes"}
ROOT = Path(__file__).resolve().parents[2]


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(db_url):
    assert migrate.current_revision(db_url) is None
    migrate.upgrade(db_url)
    assert TABLES <= tables(db_url)
    assert migrate.is_current(db_url)
    migrate.upgrade(db_url)  # idempotent
    migrate.downgrade(db_url, "base")
    assert tables(db_url) & TABLES == set()
    assert migrate.current_revision(db_url) is None
    migrate.upgrade(db_url)
    assert TABLES <= tables(db_url) and migrate.current_revision(db_url) == migrate.head_revision()


def test_models_match_the_migrations(db_url):
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations disagree; write a revision: {diff}"


def test_every_revision_has_a_message_and_a_downgrade():
    for path in (ROOT / "migrations" / "versions").glob("*.py"):
        text = path.read_text()
        first_line = text.split('"""')[1].strip().splitlines()[0]
        assert first_line, f"{path.name} has no message"
        body = text.split("def downgrade")[1]
        assert "op." in body, f"{path.name}: downgrade does nothing"


def test_alembic_command_line(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "migrations" / "alembic.ini"), "-x", f"url={url}",
         "upgrade", "head"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert TABLES <= tables(url)
