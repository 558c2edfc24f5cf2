"""Alembic environment: the URL comes from the caller (tracker.store.migrate), `-x url=...`, or
our settings (VDAG_DATABASE_URL) — never from alembic.ini. NullPool: a migration run
holds no connections after it ends."""
from __future__ import annotations

import logging
from logging.config import fileConfig

from alembic import context
from sqlalchemy.pool import NullPool

from tracker.store.db import is_sqlite, make_engine
from tracker.store.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)
log = logging.getLogger("alembic.env")

target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("database_url") or context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        from services.settings import settings_from_env

        url = settings_from_env().database_url
    return url


def _drop_empty_autogenerate(ctx, revision, directives) -> None:
    if getattr(config.cmd_opts, "autogenerate", False) and directives and directives[0].upgrade_ops.is_empty():
        directives[:] = []
        log.info("no schema changes detected; no revision written")


def _configure(connection, url: str) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=is_sqlite(url),  # SQLite cannot ALTER most things in place
        compare_type=True,
        process_revision_directives=_drop_empty_autogenerate,
    )


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=is_sqlite(url))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection, str(connection.engine.url))
        with context.begin_transaction():
            context.run_migrations()
        return
    url = database_url()
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            _configure(conn, url)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
