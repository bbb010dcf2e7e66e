"""The database itself enforces the schema's rules, on SQLite and PostgreSQL alike."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from bnlab.store.db import make_engine, make_sessionmaker
from bnlab.store.migrate import upgrade
from bnlab.store.tables import Checkpoint, CurvePoint, Experiment, Run
from bnlab.vocabulary import QUEUES, STATUSES, VARIANTS


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    upgrade(database_url)
    with make_sessionmaker(database_url)() as session:
        yield session


def new_experiment(**overrides: object) -> Experiment:
    fields: dict[str, object] = {
        "status": "queued",
        "queue": "cpu",
        "spec": {"activation": "relu", "learning_rate": 0.01},
        "progress_total": 2000,
    }
    return Experiment(**(fields | overrides))


def stored_experiment(session: Session) -> Experiment:
    """An experiment with both runs, two curve points and a checkpoint each."""
    experiment = new_experiment()
    for variant in ("plain", "bn"):
        run = Run(variant=variant)
        run.points = [
            CurvePoint(step=0, val_accuracy=0.1),
            CurvePoint(step=50, val_accuracy=0.8, train_loss=0.5),
        ]
        run.checkpoints = [
            Checkpoint(step=50, path=f"/ckpt/{variant}.safetensors", sha256="0" * 64, size_bytes=1)
        ]
        experiment.runs.append(run)
    session.add(experiment)
    session.commit()
    return experiment


def count(session: Session, table: type[object]) -> int:
    return session.scalar(select(func.count()).select_from(table)) or 0


def test_defaults_and_relationships_round_trip(session: Session) -> None:
    experiment = stored_experiment(session)
    session.expunge_all()

    loaded = session.get(Experiment, experiment.id)
    assert loaded is not None
    assert loaded.spec == {"activation": "relu", "learning_rate": 0.01}
    assert (loaded.cancel_requested, loaded.progress_step, loaded.lease_token) == (False, 0, 0)
    assert [run.variant for run in loaded.runs] == ["bn", "plain"]
    assert [point.step for point in loaded.runs[0].points] == [0, 50]
    assert loaded.runs[0].points[0].train_loss is None
    assert loaded.runs[0].checkpoints[0].version == 1
    # Aware UTC on both databases, so `now - created_at` works everywhere.
    assert loaded.created_at.tzinfo is not None
    assert timedelta(0) <= datetime.now(UTC) - loaded.created_at < timedelta(minutes=1)


def test_other_time_zones_are_stored_as_the_same_instant(session: Session) -> None:
    plus_two = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    experiment = new_experiment(started_at=plus_two)
    session.add(experiment)
    session.commit()
    session.expunge_all()

    loaded = session.get(Experiment, experiment.id)
    assert loaded is not None
    assert loaded.started_at == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def test_naive_datetimes_are_refused(session: Session) -> None:
    session.add(new_experiment(started_at=datetime(2026, 1, 1, 12, 0)))
    with pytest.raises(StatementError, match="naive datetime"):
        session.commit()


def test_server_default_for_cancel_requested(session: Session) -> None:
    # Rows written without the ORM (a hand-written SQL fix, an older client) still get it.
    session.execute(
        text(
            "INSERT INTO experiments (status, queue, spec, progress_step, progress_total,"
            " lease_token, created_at)"
            " VALUES ('queued', 'gpu', '{}', 0, 1, 0, '2026-01-01 00:00:00.000000')"
        )
    )
    assert session.scalar(select(Experiment.cancel_requested)) is False


def test_duplicate_curve_point_step_is_refused(session: Session) -> None:
    run = stored_experiment(session).runs[0]
    session.add(CurvePoint(run_id=run.id, step=50, val_accuracy=0.9))
    with pytest.raises(IntegrityError):
        session.commit()


def test_second_run_of_the_same_variant_is_refused(session: Session) -> None:
    experiment = stored_experiment(session)
    session.add(Run(experiment_id=experiment.id, variant="bn"))
    with pytest.raises(IntegrityError):
        session.commit()


def test_run_of_a_missing_experiment_is_refused(session: Session) -> None:
    session.add(Run(experiment_id=12345, variant="bn"))
    with pytest.raises(IntegrityError):
        session.commit()


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (Experiment, {"status": "paused"}),
        (Experiment, {"queue": "tpu"}),
        (Run, {"variant": "ln"}),
        (CurvePoint, {"step": -1}),
    ],
)
def test_check_constraints_refuse_bad_values(
    session: Session, model: type[object], fields: dict[str, object]
) -> None:
    experiment = stored_experiment(session)
    if model is Experiment:
        row: object = new_experiment(**fields)
    elif model is Run:
        row = Run(experiment_id=experiment.id, **fields)
    else:
        row = CurvePoint(run_id=experiment.runs[0].id, val_accuracy=0.5, **fields)
    session.add(row)
    with pytest.raises(IntegrityError):
        session.commit()


def test_the_database_takes_every_word_of_the_vocabulary(session: Session) -> None:
    # The migrations spell their CHECK constraints out, and autogenerate does not compare them:
    # a word added to bnlab.vocabulary without a migration fails here.
    experiments = [new_experiment(status=s, queue=q) for s in STATUSES for q in QUEUES]
    for experiment in experiments:
        experiment.runs = [Run(variant=variant) for variant in VARIANTS]
    session.add_all(experiments)
    session.commit()
    assert count(session, Run) == len(STATUSES) * len(QUEUES) * len(VARIANTS)


def test_deleting_an_experiment_deletes_its_runs_points_and_checkpoints(
    session: Session,
) -> None:
    doomed = stored_experiment(session)
    kept = stored_experiment(session)

    session.delete(doomed)
    session.commit()

    assert count(session, Run) == 2
    assert count(session, CurvePoint) == 4
    assert count(session, Checkpoint) == 2
    assert {run.experiment_id for run in session.scalars(select(Run))} == {kept.id}


def test_sql_delete_cascades_in_the_database(database_url: str, session: Session) -> None:
    # The ORM relies on ON DELETE CASCADE (passive_deletes), so the database must do it alone;
    # on SQLite only with foreign_keys=ON, which every engine connection must set.
    stored_experiment(session)
    with make_engine(database_url).begin() as connection:
        connection.execute(delete(Experiment))
    assert (count(session, Run), count(session, CurvePoint), count(session, Checkpoint)) == (
        0,
        0,
        0,
    )


def test_experiment_ids_are_never_reused(session: Session) -> None:
    first = stored_experiment(session)
    session.delete(first)
    session.commit()
    assert stored_experiment(session).id > first.id
