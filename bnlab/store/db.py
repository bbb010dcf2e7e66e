"""Engines and sessions: one engine per database URL per process, shared by API and worker."""

from functools import lru_cache
from pathlib import Path
from sqlite3 import Connection as SQLiteConnection
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def ensure_sqlite_folder(url: str) -> None:
    """SQLite creates the file but not its folder; the embedded default points at `.bnlab/`."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def _tune_sqlite(dbapi_connection: SQLiteConnection, _record: Any) -> None:
    # Per connection, because SQLite forgets all but journal_mode when a connection closes.
    # WAL lets the API read while a worker writes; busy_timeout makes writers wait, not fail;
    # foreign keys are off in SQLite unless asked for, and ON DELETE CASCADE needs them.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# Seconds a PostgreSQL connection may take to be made. Without a limit, a server that is gone
# without a word (its host down, a firewall dropping packets) holds each request, and each of a
# worker's writes, for the operating system's TCP timeout: minutes. `?connect_timeout=N` in the
# database URL overrides it (libpq reads it; at least 2).
CONNECT_TIMEOUT_SECONDS = 5


@lru_cache
def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        ensure_sqlite_folder(url)
        engine = create_engine(url)
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    connect_args = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    # A server may drop idle connections (restart, failover); check before handing one out.
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


@lru_cache
def make_sessionmaker(url: str) -> sessionmaker[Session]:
    # Rows stay readable after commit, e.g. to build the API response from what was just saved.
    return sessionmaker(make_engine(url), expire_on_commit=False)
