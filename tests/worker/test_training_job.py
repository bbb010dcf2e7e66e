"""The training job in-process, against a real database and the stand-in data: a lone experiment
is a group of one; a group handed back resumes to the weights of an uninterrupted run, and each
of its cells resumes on its own from its state file; a cell cancelled, or taken over by another
worker, leaves its group while the others train on.

The job asks whether its worker is shutting down at every sample point: the tests act there,
as a user cancelling or another worker taking over would, between two sample points."""

import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy.orm import Session

from bnlab.settings import Settings
from bnlab.store import leases, queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.migrate import upgrade
from bnlab.store.tables import Experiment, utc_now
from bnlab.vocabulary import STUDY_VARIANTS, Queue
from bnlab.worker.job import TrainingJob

# Two cells that share a batch order and schedule: they train as one group.
SPEC = {"training_batches": 100, "batches_per_sample": 20, "validation_size": 200, "seed": 3}
CELLS = [{**SPEC, "learning_rate": 0.5}, {**SPEC, "learning_rate": 0.1}]
STEPS = [0, 20, 40, 60, 80, 100]


@pytest.fixture
def settings(database_url: str, tmp_path: Path, idx_data_dir: Path) -> Settings:
    upgrade(database_url)
    return Settings(
        database_url=database_url, state_dir=tmp_path, data_dir=idx_data_dir, download=False
    )


def stored(settings: Settings, *specs: dict) -> list[int]:
    with make_sessionmaker(settings.database_url)() as session:
        ids = [queries.create_experiment(session, spec, "cpu", 100).id for spec in specs]
        session.commit()
        return ids


def row(settings: Settings, experiment_id: int) -> Experiment:
    with make_sessionmaker(settings.database_url)() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        return experiment


def curve_steps(settings: Settings, experiment_id: int) -> dict[str, list[int]]:
    with make_sessionmaker(settings.database_url)() as session:
        curves = queries.curve(session, experiment_id)
        return {variant: [point.step for point in curves[variant]] for variant in STUDY_VARIANTS}


def folder(settings: Settings, experiment_id: int) -> Path:
    return Path(settings.checkpoint_dir) / f"experiment-{experiment_id}"


def weights(settings: Settings, experiment_id: int) -> dict[str, dict[str, torch.Tensor]]:
    """Each net's weights, from the checkpoint its row names."""
    with make_sessionmaker(settings.database_url)() as session:
        found = {v: queries.latest_checkpoint(session, experiment_id, v) for v in STUDY_VARIANTS}
    return {
        variant: load_file(checkpoint.path) for variant, checkpoint in found.items() if checkpoint
    }


def files(settings: Settings, experiment_id: int) -> list[str]:
    """What lies in the experiment's folder, relative to it."""
    root = folder(settings, experiment_id)
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def at_sample_point(
    settings: Settings, number: int, act: Callable[[Session], object]
) -> Callable[[], bool]:
    """A `shutting_down` that never is, but does `act` at the job's `number`th sample point."""
    calls = [0]

    def shutting_down() -> bool:
        calls[0] += 1
        if calls[0] == number:
            with make_sessionmaker(settings.database_url)() as session:
                act(session)
                session.commit()
        return False

    return shutting_down


def stopping_from(number: int) -> Callable[[], bool]:
    """A worker that shuts down (SIGTERM) at the job's `number`th sample point."""
    calls = [0]

    def shutting_down() -> bool:
        calls[0] += 1
        return calls[0] >= number

    return shutting_down


def test_a_lone_experiment_is_a_group_of_one(settings: Settings) -> None:
    (experiment_id,) = stored(settings, CELLS[0])

    TrainingJob([experiment_id], settings, worker="worker-a").run()

    experiment = row(settings, experiment_id)
    assert experiment.status == "succeeded", experiment.error
    assert curve_steps(settings, experiment_id) == {"plain": STEPS, "bn": STEPS}
    # its nets under its lease's folder; its training state gone, but for those kept to fork
    # from (keep_states_every: 10 sample points, and the last)
    assert files(settings, experiment_id) == [
        "kept/lease-1/training-state-0.safetensors",
        "kept/lease-1/training-state-100.safetensors",
        "lease-1/bn.safetensors",
        "lease-1/plain.safetensors",
    ]
    with make_sessionmaker(settings.database_url)() as session:
        for variant in STUDY_VARIANTS:
            checkpoint = queries.latest_checkpoint(session, experiment_id, variant)
            assert checkpoint is not None and checkpoint.step == 100
            path = folder(settings, experiment_id) / "lease-1" / f"{variant}.safetensors"
            assert Path(checkpoint.path) == path.absolute()
            assert checkpoint.run.test_accuracy is not None


def test_a_group_handed_back_resumes_to_the_weights_of_an_uninterrupted_run(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    uninterrupted = stored(settings, *CELLS)
    TrainingJob(uninterrupted, settings, worker="worker-a").run()
    handed_back = stored(settings, *CELLS)
    sent: list[tuple[list[int], Queue]] = []

    TrainingJob(
        handed_back,
        settings,
        worker="worker-a",
        shutting_down=stopping_from(3),
        hand_back=lambda ids, queue: sent.append((ids, queue)),
    ).run()

    assert sent == [(handed_back, "cpu")]  # the group queued again, as one
    for experiment_id in handed_back:
        experiment = row(settings, experiment_id)
        assert (experiment.status, experiment.progress_step) == ("queued", 40)
        assert curve_steps(settings, experiment_id) == {"plain": STEPS[:3], "bn": STEPS[:3]}
        # the state of the last sample point, under the lease's folder, named by the row
        state = folder(settings, experiment_id) / "lease-1" / "training-state-40.safetensors"
        assert experiment.state_location == str(state)
        assert files(settings, experiment_id) == [
            "kept/lease-1/training-state-0.safetensors",
            "lease-1/training-state-40.safetensors",
        ]
        # a stale worker's late upload, under its lease's folder: nothing reads it
        (state.parent / "training-state-60.safetensors").write_bytes(b"late")

    with caplog.at_level(logging.INFO, logger="bnlab.worker.job"):
        TrainingJob(handed_back, settings, worker="worker-b").run()

    assert f"group {handed_back} resumes at step 40" in caplog.messages

    for before, after in zip(uninterrupted, handed_back, strict=True):
        assert row(settings, after).status == "succeeded"
        assert curve_steps(settings, after) == {"plain": STEPS, "bn": STEPS}
        # older leases' objects gone, and the state: the nets and kept states the rows name
        # are what stays
        assert files(settings, after) == [
            "kept/lease-1/training-state-0.safetensors",
            "kept/lease-2/training-state-100.safetensors",
            "lease-2/bn.safetensors",
            "lease-2/plain.safetensors",
        ]
        assert row(settings, after).state_location is None
        reference, resumed = weights(settings, before), weights(settings, after)
        for variant in STUDY_VARIANTS:
            for name, tensor in reference[variant].items():
                assert torch.equal(resumed[variant][name].nan_to_num(), tensor.nan_to_num()), name


def test_each_cell_of_a_group_resumes_on_its_own_from_its_state_file(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = stored(settings, *CELLS)
    TrainingJob([first, second], settings, worker="worker-a", shutting_down=stopping_from(3)).run()
    caplog.set_level(logging.INFO, logger="bnlab.worker.job")

    # The reaper queues experiments one by one: the first comes back alone ...
    TrainingJob([first], settings, worker="worker-b").run()
    # ... then the group's own message: the first is done, the second resumes alone.
    TrainingJob([first, second], settings, worker="worker-b").run()

    resumed = [record.getMessage() for record in caplog.records if "resume" in record.msg]
    assert resumed == [
        f"experiment {first} resumes at step 40",
        f"experiment {second} resumes at step 40",
    ]
    for experiment_id in (first, second):
        assert row(settings, experiment_id).status == "succeeded"
        assert curve_steps(settings, experiment_id) == {"plain": STEPS, "bn": STEPS}


def test_a_cancelled_cell_leaves_its_group_and_the_others_train_on(settings: Settings) -> None:
    cancelled, kept = stored(settings, *CELLS)

    def cancel(session: Session) -> None:
        assert queries.cancel_experiment(session, cancelled)

    at_second = at_sample_point(settings, 2, cancel)
    TrainingJob([cancelled, kept], settings, worker="worker-a", shutting_down=at_second).run()

    experiment = row(settings, cancelled)
    assert experiment.status == "cancelled" and experiment.finished_at is not None
    # its curve is what stays, up to the sample point it left at; nothing to resume from, the
    # state kept at step 0 to fork from
    assert curve_steps(settings, cancelled)["bn"] in (STEPS[:2], STEPS[:3])
    assert files(settings, cancelled) == ["kept/lease-1/training-state-0.safetensors"]
    assert row(settings, cancelled).state_location is None
    assert row(settings, kept).status == "succeeded"
    assert curve_steps(settings, kept) == {"plain": STEPS, "bn": STEPS}


def test_a_cell_another_worker_took_gets_nothing_more_from_this_one(settings: Settings) -> None:
    taken, kept = stored(settings, *CELLS)

    def take_over(session: Session) -> None:
        # Another worker that found this one's heartbeat stale: it claims the experiment.
        stale_before = utc_now() + timedelta(hours=1)
        assert leases.claim(session, taken, "worker-b", stale_before, max_losses=3) is not None

    at_second = at_sample_point(settings, 2, take_over)
    TrainingJob([taken, kept], settings, worker="worker-a", shutting_down=at_second).run()

    experiment = row(settings, taken)
    assert (experiment.status, experiment.worker) == ("running", "worker-b")
    assert curve_steps(settings, taken) == {"plain": STEPS[:2], "bn": STEPS[:2]}
    assert not [name for name in files(settings, taken) if name.endswith("bn.safetensors")]
    assert row(settings, kept).status == "succeeded"
    assert curve_steps(settings, kept) == {"plain": STEPS, "bn": STEPS}


def test_experiments_that_cannot_share_a_batch_order_fail_saying_why(settings: Settings) -> None:
    ids = stored(settings, CELLS[0], {**CELLS[1], "seed": 4})

    TrainingJob(ids, settings, worker="worker-a").run()

    for experiment_id in ids:
        experiment = row(settings, experiment_id)
        assert experiment.status == "failed"
        assert experiment.error is not None and "cannot train as one group" in experiment.error


def handed_back_at_40(settings: Settings) -> int:
    [experiment_id] = stored(settings, SPEC)
    TrainingJob([experiment_id], settings, worker="worker-a", shutting_down=stopping_from(3)).run()
    assert row(settings, experiment_id).progress_step == 40
    return experiment_id


def set_state(settings: Settings, experiment_id: int, **values: str | None) -> None:
    with make_sessionmaker(settings.database_url)() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        for name, value in values.items():
            setattr(experiment, name, value)
        session.commit()


def test_a_state_that_does_not_match_its_row_s_sha256_is_not_resumed_from(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    experiment_id = handed_back_at_40(settings)
    set_state(settings, experiment_id, state_sha256="0" * 64)

    with caplog.at_level(logging.INFO, logger="bnlab.worker.job"):
        TrainingJob([experiment_id], settings, worker="worker-b").run()

    assert f"experiment {experiment_id} resumes at step 40" not in caplog.messages
    assert any("does not match the sha256" in message for message in caplog.messages)
    assert row(settings, experiment_id).status == "succeeded"
    assert curve_steps(settings, experiment_id) == {"plain": STEPS, "bn": STEPS}


def test_a_state_saved_before_its_row_named_one_is_resumed_from_the_old_path(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    experiment_id = handed_back_at_40(settings)
    state = row(settings, experiment_id).state_location
    assert state is not None
    old = folder(settings, experiment_id) / "training-state.safetensors"
    Path(state).rename(old)
    set_state(settings, experiment_id, state_location=None, state_sha256=None)

    with caplog.at_level(logging.INFO, logger="bnlab.worker.job"):
        TrainingJob([experiment_id], settings, worker="worker-b").run()

    assert f"experiment {experiment_id} resumes at step 40" in caplog.messages
    assert row(settings, experiment_id).status == "succeeded"
    assert not old.exists()
