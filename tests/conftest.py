"""Shared fixtures: fresh databases (SQLite file, PostgreSQL database), a Redis db, and a small
MNIST-like dataset written as real IDX files.

Servers are optional on a laptop (their tests skip, saying why) but required in CI, where
`.ci/run` starts them: there a missing server fails the run instead of skipping silently.
"""

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bnlab.store.db import make_engine
from tests.idx import write_idx_dataset

POSTGRES_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
REDIS_HOST, REDIS_PORT, REDIS_TEST_DB = "127.0.0.1", 6379, 15


def require_service(name: str, host: str, port: int) -> None:
    """Skip the test if nothing answers on host:port; in CI (CI=true), fail it instead."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as error:
        reason = f"{name} not reachable at {host}:{port} ({error})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; in CI the service is expected under .ci/run")
        pytest.skip(reason)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'bnlab.db'}"
    yield url
    make_engine(url).dispose()  # close pooled connections before tmp_path goes


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _fresh_postgres_database()


@pytest.fixture(scope="module")
def module_postgres_url() -> Iterator[str]:
    yield from _fresh_postgres_database()


def _fresh_postgres_database() -> Iterator[str]:
    admin_url = make_url(POSTGRES_ADMIN_URL)
    require_service("PostgreSQL", admin_url.host or "127.0.0.1", admin_url.port or 5432)
    name = f"bnlab_test_{uuid.uuid4().hex}"
    # CREATE/DROP DATABASE cannot run inside a transaction.
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        make_engine(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_url() -> str:
    return _empty_redis_db()


@pytest.fixture(scope="module")
def module_redis_url() -> str:
    return _empty_redis_db()


def _empty_redis_db() -> str:
    import redis

    require_service("Redis", REDIS_HOST, REDIS_PORT)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_TEST_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()  # a db of its own, emptied, so leftovers from other runs cannot leak in
    client.close()
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test once on SQLite (embedded) and once on PostgreSQL (production)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture(scope="session")
def idx_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding a small learnable MNIST stand-in as real IDX files:
    `MNIST/raw/` with 1,200 training and 300 test images (see tests/idx.py)."""
    return write_idx_dataset(tmp_path_factory.mktemp("data"))
