"""Taking a job, in-process against a real database: a delivery of a job another worker holds
changes nothing; a stored spec this bnlab cannot read fails the experiment with the reason
(instead of crashing every worker the reaper would hand it to)."""

from pathlib import Path

from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.migrate import upgrade
from bnlab.store.tables import Experiment
from bnlab.worker.job import CellRecorder, TrainingJob


def stored(database_url: str, spec: dict) -> int:
    upgrade(database_url)
    with make_sessionmaker(database_url)() as session:
        experiment = queries.create_experiment(session, spec, "cpu", 100)
        session.commit()
        return experiment.id


def row(database_url: str, experiment_id: int) -> Experiment:
    with make_sessionmaker(database_url)() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        return experiment


def test_an_unreadable_stored_spec_fails_the_experiment_with_the_reason(
    database_url: str, tmp_path: Path
) -> None:
    experiment_id = stored(database_url, {"training_batches": "many"})
    settings = Settings(database_url=database_url, state_dir=tmp_path)

    TrainingJob([experiment_id], settings, worker="worker-a").run()

    experiment = row(database_url, experiment_id)
    assert experiment.status == "failed"
    assert experiment.error is not None and "training_batches" in experiment.error


def test_a_delivery_of_a_job_held_by_a_live_worker_changes_nothing(
    database_url: str, tmp_path: Path
) -> None:
    experiment_id = stored(database_url, {"training_batches": 100})
    settings = Settings(database_url=database_url, state_dir=tmp_path)
    with make_sessionmaker(database_url)() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        experiment.status, experiment.worker, experiment.lease_token = "running", "worker-a", 1
        experiment.heartbeat_at = experiment.created_at
        session.commit()

    TrainingJob([experiment_id], settings, worker="worker-b").run()

    experiment = row(database_url, experiment_id)
    assert (experiment.status, experiment.worker, experiment.lease_token) == (
        "running",
        "worker-a",
        1,
    )


def test_a_job_resumed_on_another_machine_records_both(database_url: str, tmp_path: Path) -> None:
    spec = ExperimentSpec(training_batches=100, batches_per_sample=50)
    experiment_id = stored(database_url, spec.model_dump())
    settings = Settings(database_url=database_url, state_dir=tmp_path)
    sessions = make_sessionmaker(database_url)
    first = {"cpu": {"model": "A", "capability": "AVX2"}, "torch": "2.5", "seed": 0}
    second = {**first, "cpu": {"model": "B", "capability": "AVX512"}}
    on_a = CellRecorder.claim(experiment_id, settings, "worker-a", sessions)
    assert on_a is not None
    on_a.note_provenance(first)
    with sessions() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        experiment.progress_step = 60  # where host A's job stopped
        session.commit()

    on_a.note_provenance(second)  # the job that goes on from step 60, elsewhere

    assert row(database_url, experiment_id).provenance == {
        **first,
        "resumed_on": [{"step": 60, **second}],
    }
