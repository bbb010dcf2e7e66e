"""The migrations build exactly the ORM schema, on both databases, and undo it cleanly."""

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, create_engine, inspect, text

from bnlab.store.db import make_engine
from bnlab.store.migrate import downgrade, upgrade
from bnlab.store.tables import Base

BNLAB_TABLES = {
    "experiments",
    "runs",
    "curve_points",
    "checkpoints",
    "workers",
    "sweeps",
    "layer_stats",
    "kept_states",
    "experiment_tags",
    "sweep_tags",
    "landscapes",
    "landscape_points",
    "layer_shifts",
    "sharpness",
}


def schema_diff(url: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    return diff


def reflect(url: str) -> tuple[set[str], str | None, set[str]]:
    """Table names, the stamped revision, and the names of the check constraints."""
    engine = create_engine(url)
    with engine.connect() as connection:
        inspector = inspect(connection)
        tables = set(inspector.get_table_names())
        revision = MigrationContext.configure(connection).get_current_revision()
        checks = {
            check["name"]
            for table in tables & BNLAB_TABLES
            for check in inspector.get_check_constraints(table)
        }
    engine.dispose()
    return tables, revision, checks


def test_upgrade_creates_exactly_the_orm_schema(database_url: str) -> None:
    upgrade(database_url)

    tables, revision, checks = reflect(database_url)
    assert tables == BNLAB_TABLES | {"alembic_version"}
    assert revision == "0010"
    assert schema_diff(database_url) == []
    # autogenerate ignores check constraints: compare their names by hand.
    expected_checks = {
        constraint.name
        for table in Base.metadata.tables.values()
        for constraint in table.constraints
        if isinstance(constraint, CheckConstraint)
    }
    assert checks == expected_checks
    assert "ck_experiments_status" in checks


def test_downgrade_to_base_removes_everything_and_upgrade_again_works(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")

    tables, revision, _ = reflect(database_url)
    assert tables <= {"alembic_version"}
    assert revision is None

    upgrade(database_url)
    tables, revision, _ = reflect(database_url)
    assert tables == BNLAB_TABLES | {"alembic_version"}
    assert revision == "0010"
    assert schema_diff(database_url) == []


def test_orm_schema_without_migrations_differs(sqlite_url: str) -> None:
    # The comparison above can fail: an empty database is reported as missing every table.
    added = {op[1].name for op in schema_diff(sqlite_url) if op[0] == "add_table"}
    assert added == BNLAB_TABLES


def test_experiments_stored_before_0003_start_with_no_worker_losses(database_url: str) -> None:
    # A database in use is upgraded with rows in it: the new NOT NULL column needs a default.
    upgrade(database_url, "0002")
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO experiments (status, queue, spec, created_at, progress_step, "
                "progress_total, lease_token) "
                "VALUES ('running', 'cpu', '{}', CURRENT_TIMESTAMP, 0, 100, 2)"
            )
        )
    upgrade(database_url)
    with engine.connect() as connection:
        losses = connection.execute(text("SELECT worker_losses FROM experiments")).scalars()
        assert list(losses) == [0]
    engine.dispose()


def test_rows_stored_before_0005_get_no_name_empty_notes_and_no_tags(database_url: str) -> None:
    upgrade(database_url, "0004")
    engine = make_engine(database_url)  # foreign keys enforced on SQLite too
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO sweeps (spec, created_at) VALUES ('{}', CURRENT_TIMESTAMP)")
        )
        connection.execute(
            text(
                "INSERT INTO experiments (status, queue, spec, created_at, progress_step, "
                "progress_total, lease_token) "
                "VALUES ('queued', 'cpu', '{}', CURRENT_TIMESTAMP, 0, 100, 0)"
            )
        )
    upgrade(database_url)
    with engine.begin() as connection:
        for table in ("experiments", "sweeps"):
            rows = connection.execute(text(f"SELECT name, notes FROM {table}")).all()
            assert [tuple(row) for row in rows] == [(None, "")]
        connection.execute(text("INSERT INTO experiment_tags (experiment_id, tag) VALUES (1, 'a')"))
        connection.execute(text("DELETE FROM experiments"))
        # a tag goes with its experiment
        assert connection.execute(text("SELECT count(*) FROM experiment_tags")).scalar() == 0


def test_experiments_stored_before_0006_name_no_training_state(database_url: str) -> None:
    # Their state, if any, is at the old path: the worker falls back to it (bnlab/worker/job.py).
    upgrade(database_url, "0005")
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO experiments (status, queue, spec, created_at, progress_step, "
                "progress_total, lease_token) "
                "VALUES ('queued', 'cpu', '{}', CURRENT_TIMESTAMP, 0, 100, 0)"
            )
        )
    upgrade(database_url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT state_location, state_sha256 FROM experiments"))
        assert [tuple(row) for row in rows] == [(None, None)]
    engine.dispose()


def test_downgrading_below_0008_refuses_while_bn_noisy_runs_exist(database_url: str) -> None:
    """The older schema cannot hold a bn_noisy run: the downgrade says which experiments to
    delete first, rather than deleting a user's experiments itself."""
    upgrade(database_url)
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO experiments (status, queue, spec, created_at, progress_step, "
                "progress_total, lease_token) "
                "VALUES ('succeeded', 'cpu', '{}', CURRENT_TIMESTAMP, 0, 100, 0)"
            )
        )
        connection.execute(text("INSERT INTO runs (experiment_id, variant) VALUES (1, 'bn_noisy')"))
    with pytest.raises(RuntimeError, match="experiments 1 trained bn_noisy nets"):
        downgrade(database_url, "0007")
    with engine.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM runs")).scalar() == 1
        connection.execute(text("DELETE FROM runs"))
    downgrade(database_url, "0007")
    assert reflect(database_url)[1] == "0007"
    engine.dispose()
