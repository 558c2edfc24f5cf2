"""Engine and session factory from a database URL.

SQLite gets WAL, a busy timeout and connections usable from any thread; its write
transactions start with BEGIN IMMEDIATE so two writers queue on the busy timeout instead
of failing when a read lock cannot be upgraded. Sessions are short-lived, one per store
call, so they are never shared between threads.
"""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "vdag_write"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_sqlite_memory(url: str) -> bool:
    database = make_url(url).database
    return not database or database == ":memory:" or database.startswith("file::memory:")


def ensure_sqlite_dir(url: str) -> None:
    if is_sqlite(url) and not is_sqlite_memory(url):
        Path(make_url(url).database).expanduser().parent.mkdir(parents=True, exist_ok=True)


# A store call must fail, not hang: the aggregator retries a failed batch with backoff, but a
# call blocked forever stalls its job for good (seen once in the suite: an INSERT that never
# returned after a cut and restore of the link to PostgreSQL). Server-side bounds on statements
# and lock waits, and TCP keepalives plus an unacked-data timeout for a peer that vanished.
PG_SESSION_BOUNDS = ("SET statement_timeout = 30000", "SET lock_timeout = 10000",
                     "SET idle_in_transaction_session_timeout = 60000")
PG_CONNECT_ARGS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                   "keepalives_count": 3, "tcp_user_timeout": 30_000}


def make_engine(url: str, **kwargs) -> Engine:
    if not is_sqlite(url):
        kwargs.setdefault("pool_pre_ping", True)
        if make_url(url).get_backend_name() != "postgresql":
            return create_engine(url, **kwargs)
        engine = create_engine(url, connect_args={**PG_CONNECT_ARGS, **kwargs.pop("connect_args", {})}, **kwargs)

        @event.listens_for(engine, "connect")
        def _bound_pg_session(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            try:
                for statement in PG_SESSION_BOUNDS:
                    cur.execute(statement)
            finally:
                cur.close()
            dbapi_conn.commit()

        return engine
    ensure_sqlite_dir(url)
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    if is_sqlite_memory(url):
        kwargs.setdefault("poolclass", StaticPool)  # one shared in-memory database
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        if not is_sqlite_memory(url):
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class SessionFactory:
    """`reader()` and `writer()` sessions; on SQLite a writer takes the write lock up front."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False)

    def reader(self) -> Session:
        return self._read()

    def writer(self) -> Session:
        return self._write()
