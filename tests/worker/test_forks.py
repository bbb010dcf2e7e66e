"""Kept states and forks in the training job, in-process against a real database: the states a
spec keeps are named in SQL and outlive the job, a stale worker's are not; a fork starts from its
parent's kept state, and once it saved a state of its own, resumes from that one."""

import logging
from pathlib import Path

import pytest
import torch
from sqlalchemy.orm import Session

from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.queries import Lineage
from bnlab.worker.job import TrainingJob
from tests.worker.test_training_job import (
    at_sample_point,
    files,
    folder,
    row,
    settings,
    stopping_from,
    stored,
    weights,
)

__all__ = ["settings"]  # the fixture, for this module

# Sampled at 0, 20, ..., 100; the state kept at every second sample point and the last.
SPEC = {
    "training_batches": 100,
    "batches_per_sample": 20,
    "validation_size": 200,
    "seed": 3,
    "learning_rate": 0.5,
    "keep_states_every": 2,
}


def kept(settings: Settings, experiment_id: int) -> dict[int, str]:
    """The kept states SQL names: step -> location."""
    with make_sessionmaker(settings.database_url)() as session:
        return {k.step: k.location for k in queries.kept_states(session, experiment_id)}


def forked(settings: Settings, parent_id: int, step: int) -> int:
    """A fork of the parent at `step`, with no changes, as the API stores it."""
    with make_sessionmaker(settings.database_url)() as session:
        parent = queries.get_experiment(session, parent_id)
        assert parent is not None
        spec = ExperimentSpec.model_validate(parent.spec)
        fork = queries.create_experiment(
            session, spec.model_dump(), "cpu", 100, fork=Lineage(parent, step, {})
        )
        session.commit()
        return fork.id


def test_kept_states_are_named_and_outlive_the_job_and_a_stale_one_is_removed(
    settings: Settings,
) -> None:
    [experiment_id] = stored(settings, SPEC)
    TrainingJob([experiment_id], settings, "worker-a", shutting_down=stopping_from(3)).run()
    assert sorted(kept(settings, experiment_id)) == [0, 40]
    # a stale worker's late upload of a state it would have kept: nothing names it
    stale = folder(settings, experiment_id) / "kept" / "lease-1" / "training-state-60.safetensors"
    stale.write_bytes(b"late")

    TrainingJob([experiment_id], settings, "worker-b").run()

    assert row(settings, experiment_id).status == "succeeded"
    named = kept(settings, experiment_id)
    assert sorted(named) == [0, 40, 80, 100]
    assert Path(named[80]).parent.name == "lease-2"  # kept by the job that trained it
    assert files(settings, experiment_id) == [
        "kept/lease-1/training-state-0.safetensors",
        "kept/lease-1/training-state-40.safetensors",
        "kept/lease-2/training-state-100.safetensors",
        "kept/lease-2/training-state-80.safetensors",
        "lease-2/bn.safetensors",
        "lease-2/plain.safetensors",
    ]


def test_a_fork_interrupted_resumes_from_its_own_state_not_its_parent_s(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    [parent] = stored(settings, SPEC)
    TrainingJob([parent], settings, "worker-a").run()
    uninterrupted = forked(settings, parent, 40)
    TrainingJob([uninterrupted], settings, "worker-a").run()
    interrupted = forked(settings, parent, 40)
    TrainingJob([interrupted], settings, "worker-a", shutting_down=stopping_from(2)).run()
    assert row(settings, interrupted).progress_step == 60
    # the parent's kept state changed meanwhile: a fork that went back to it would fail
    Path(kept(settings, parent)[40]).write_bytes(b"changed")

    with caplog.at_level(logging.INFO, logger="bnlab.worker.job"):
        TrainingJob([interrupted], settings, "worker-b").run()

    assert f"experiment {interrupted} resumes at step 60" in caplog.messages
    assert row(settings, interrupted).status == "succeeded"
    reference, resumed = weights(settings, uninterrupted), weights(settings, interrupted)
    for variant, tensors in reference.items():
        assert all(torch.equal(resumed[variant][name], t) for name, t in tensors.items())


def test_a_fork_whose_parent_s_kept_state_changed_fails_saying_so(settings: Settings) -> None:
    [parent] = stored(settings, SPEC)
    TrainingJob([parent], settings, "worker-a").run()
    fork = forked(settings, parent, 40)
    Path(kept(settings, parent)[40]).write_bytes(b"changed")

    TrainingJob([fork], settings, "worker-a").run()

    experiment = row(settings, fork)
    assert experiment.status == "failed"
    assert experiment.error == (
        f"experiment {parent}'s training state kept at step 40 does not match the sha256 its "
        "row names"
    )


def results(settings: Settings, experiment_id: int) -> dict[str, tuple[int | None, int | None]]:
    """Each net's steps_to_90 and steps_to_95."""
    with make_sessionmaker(settings.database_url)() as session:
        experiment = queries.get_experiment(session, experiment_id)
        assert experiment is not None
        return {run.variant: (run.steps_to_90, run.steps_to_95) for run in experiment.runs}


def test_a_parent_that_starts_over_keeps_its_kept_states_named_for_its_forks(
    settings: Settings,
) -> None:
    [parent] = stored(settings, SPEC)
    TrainingJob([parent], settings, "worker-a", shutting_down=stopping_from(3)).run()
    assert sorted(kept(settings, parent)) == [0, 40]
    fork = forked(settings, parent, 40)
    # its saved state is gone: it starts over from step 0, and is stopped again at step 20
    Path(row(settings, parent).state_location or "").unlink()
    TrainingJob([parent], settings, "worker-b", shutting_down=stopping_from(2)).run()
    assert row(settings, parent).progress_step == 20
    named = kept(settings, parent)
    assert sorted(named) == [0, 40]  # 0 kept again by this job, 40 still the first one's
    assert Path(named[0]).parent.name == "lease-2" and Path(named[40]).parent.name == "lease-1"

    TrainingJob([fork], settings, "worker-c").run()
    TrainingJob([parent], settings, "worker-c").run()

    assert row(settings, fork).status == "succeeded", row(settings, fork).error
    assert row(settings, parent).status == "succeeded"
    assert sorted(kept(settings, parent)) == [0, 40, 80, 100]
    reference, continued = weights(settings, parent), weights(settings, fork)
    for variant, tensors in reference.items():
        assert all(torch.equal(continued[variant][name], t) for name, t in tensors.items())
    assert results(settings, fork) == results(settings, parent)


def test_a_run_cancelled_after_it_started_over_keeps_no_state_past_its_last_point(
    settings: Settings,
) -> None:
    [parent] = stored(settings, SPEC)
    TrainingJob([parent], settings, "worker-a", shutting_down=stopping_from(3)).run()
    Path(row(settings, parent).state_location or "").unlink()

    def cancel(session: Session) -> None:
        assert queries.cancel_experiment(session, parent)

    TrainingJob(
        [parent], settings, "worker-b", shutting_down=at_sample_point(settings, 1, cancel)
    ).run()

    assert row(settings, parent).status == "cancelled"
    assert row(settings, parent).progress_step < 40
    # 40 will not be trained again: no state there to fork from, none left behind
    assert sorted(kept(settings, parent)) == [0]
    assert files(settings, parent) == ["kept/lease-2/training-state-0.safetensors"]
