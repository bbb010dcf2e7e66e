"""POST /experiments/{id}/fork: a new experiment, queued, continuing its parent from a kept
sample point with changes; its lineage shown on both; bad input refused saying what to do.

The parent's rows are put in as its worker would write them (curve points, a kept state per
kept sample point); the fork's training is tested end to end in tests/service/test_forks.py."""

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.tables import Experiment, Sharpness
from tests.api.conftest import add_experiment
from tests.api.test_experiments import TRAIN, message_args, queued_messages

# The parent: 200 batches sampled every 50, its state kept at 0, 100 and 200.
KEPT = [0, 100, 200]


def parent(session: Session, status: str = "succeeded", at: int = 200, **spec: Any) -> int:
    """An experiment at step `at`, with its curve up to there and its states kept at `KEPT`."""
    experiment = add_experiment(session, status, keep_states_every=2, **spec)
    for step in range(0, at + 1, 50):
        points = {
            run.variant: (0.1 + step / 1000, None if step == 0 else 2.0 - step / 200)
            for run in experiment.runs
        }
        queries.add_curve_points(session, experiment, step, points)
        if step in KEPT:
            location = f"/kept/experiment-{experiment.id}/training-state-{step}.safetensors"
            queries.keep_state(session, experiment, step, location, "0" * 64, 800_000)
    experiment.progress_step = at
    session.commit()
    return experiment.id


def fork(client: TestClient, experiment_id: int, step: int, **changes: Any) -> Any:
    return client.post(
        f"/experiments/{experiment_id}/fork", json={"step": step, "changes": changes}
    )


def test_a_fork_is_queued_with_its_changes_and_its_lineage_shown_on_both(
    client: TestClient, session: Session, settings: Settings
) -> None:
    parent_id = parent(session)

    response = fork(client, parent_id, 100, learning_rate=0.5, training_batches=400)

    assert response.status_code == 201, response.text
    forked = response.json()
    assert forked["status"] == "queued"
    assert forked["spec"]["learning_rate"] == 0.5
    assert forked["spec"]["training_batches"] == 400
    assert forked["progress"]["step"] == 100 and forked["progress"]["total"] == 400
    assert forked["parent"] == {
        "id": parent_id,
        "step": 100,
        "changes": {
            "learning_rate": {"parent": 0.01, "fork": 0.5},
            "training_batches": {"parent": 200, "fork": 400},
        },
    }
    # a group of one on the broker, like any experiment
    [message] = queued_messages(settings)
    assert message_args(message) == (TRAIN, [[forked["id"]]])
    shown = client.get(f"/experiments/{parent_id}").json()
    assert shown["forks"] == [forked["id"]]
    assert shown["kept_steps"] == KEPT
    assert shown["parent"] is None
    assert client.get(f"/experiments/{forked['id']}").json()["parent"] == forked["parent"]


def test_a_fork_s_curve_starts_with_the_parent_s_point_at_its_step(
    client: TestClient, session: Session
) -> None:
    parent_id = parent(session)

    forked = fork(client, parent_id, 100).json()

    assert forked["parent"]["changes"] == {}
    theirs = client.get(f"/experiments/{parent_id}/curve").json()["series"]
    ours = client.get(f"/experiments/{forked['id']}/curve").json()["series"]
    for variant in ("plain", "bn"):
        at = theirs[variant]["step"].index(100)
        assert ours[variant] == {
            "step": [100],
            "val_accuracy": [theirs[variant]["val_accuracy"][at]],
            "train_loss": [theirs[variant]["train_loss"][at]],
        }


@pytest.mark.parametrize(
    ("changes", "steps"),
    [({}, [100]), ({"training_batches": 400}, [100]), ({"learning_rate": 0.05}, [])],
)
def test_a_fork_takes_the_parent_s_probe_rows_at_its_step_unless_it_changes_the_learning_rate(
    client: TestClient, session: Session, changes: dict[str, Any], steps: list[int]
) -> None:
    parent_id = parent(session)
    experiment = session.get(Experiment, parent_id)
    assert experiment is not None
    measured = [{"eigenvalue": 3.5, "iterations": 12, "edge": 4.0}]
    for step in (0, 100, 200):
        rows = {run.variant: {Sharpness: measured} for run in experiment.runs}
        queries.add_probe_rows(session, experiment, step, rows)
    session.commit()

    forked = fork(client, parent_id, 100, **changes).json()

    ours = queries.rows_per_variant(session, forked["id"], Sharpness, Sharpness.step)
    for variant in ("plain", "bn"):
        assert [row.step for row in ours[variant]] == steps
        assert [row.eigenvalue for row in ours[variant]] == [3.5] * len(steps)


def test_new_variants_get_no_point_at_the_fork_s_step(client: TestClient, session: Session) -> None:
    parent_id = parent(session)

    forked = fork(client, parent_id, 100, variants=["plain", "layer_norm"]).json()

    assert forked["parent"]["changes"] == {
        "variants": {"parent": ["plain", "bn"], "fork": ["plain", "layer_norm"]}
    }
    series = client.get(f"/experiments/{forked['id']}/curve").json()["series"]
    assert series["plain"]["step"] == [100]
    assert series["layer_norm"]["step"] == []  # nobody measured it there


def test_unknown_experiment_is_404(client: TestClient) -> None:
    response = fork(client, 999, 100)
    assert response.status_code == 404
    assert "999" in response.json()["detail"]


@pytest.mark.parametrize("field", ["activation", "seed", "hidden_layers", "batch_size"])
def test_a_field_a_fork_cannot_change_is_422_naming_those_it_can(
    client: TestClient, session: Session, field: str
) -> None:
    response = fork(client, parent(session), 100, **{field: 1})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert f"a fork cannot change {field}" in error["msg"]
    assert "learning_rate, training_batches, batches_per_sample" in error["msg"]


def test_a_step_not_kept_is_409_naming_the_nearest_kept_steps(
    client: TestClient, session: Session
) -> None:
    response = fork(client, parent(session), 150)
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "kept no training state at step 150" in detail
    assert "nearest kept steps are 0, 100, 200" in detail


def test_a_fork_at_its_first_step_is_409_saying_to_fork_its_parent_there(
    client: TestClient, session: Session
) -> None:
    parent_id = parent(session)
    forked = fork(client, parent_id, 100, learning_rate=0.5).json()

    response = fork(client, forked["id"], 100)

    assert response.status_code == 409
    detail = response.json()["detail"]
    assert f"experiment {forked['id']} is a fork of experiment {parent_id} at step 100" in detail
    assert f"fork experiment {parent_id} at step 100 instead" in detail


def test_a_step_the_parent_has_not_reached_is_409(client: TestClient, session: Session) -> None:
    running = parent(session, status="running", at=100, training_batches=400)
    response = fork(client, running, 200)
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "is at step 100, not yet at 200" in detail
    assert "0, 100" in detail


def test_an_experiment_that_kept_no_state_cannot_be_forked(
    client: TestClient, session: Session
) -> None:
    old = add_experiment(session, "succeeded")  # as stored before states were kept
    old.progress_step = 200
    session.commit()
    response = fork(client, old.id, 200)
    assert response.status_code == 409
    assert "it kept none" in response.json()["detail"]


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"training_batches": 100}, "training_batches (100) must exceed the step it is forked at"),
        ({"learning_rate": -1}, "learning_rate: Input should be greater than 0"),
        ({"batches_per_sample": 500}, "batches_per_sample (500) cannot exceed training_batches"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_changes_that_make_no_valid_fork_are_422_saying_why(
    client: TestClient, session: Session, changes: dict[str, Any], said: str
) -> None:
    response = fork(client, parent(session), 100, **changes)
    assert response.status_code == 422, response.text
    assert said in response.json()["detail"]


def test_new_variants_need_the_parent_s_plain_net(client: TestClient, session: Session) -> None:
    bn_only = parent(session, variants=["bn"])
    response = fork(client, bn_only, 100, variants=["bn", "layer_norm"])
    assert response.status_code == 422
    assert "trains no plain net" in response.json()["detail"]


def test_new_variants_need_a_plain_net_that_had_not_diverged(
    client: TestClient, session: Session
) -> None:
    parent_id = parent(session)
    experiment = session.get(Experiment, parent_id)
    assert experiment is not None
    queries.run_of(experiment, "plain").diverged_at_step = 80
    session.commit()
    response = fork(client, parent_id, 100, variants=["plain", "bn", "group_norm"])
    assert response.status_code == 422
    assert "diverged at step 80" in response.json()["detail"]
    assert fork(client, parent_id, 0, variants=["plain", "group_norm"]).status_code == 201


def test_a_body_without_a_step_is_422(client: TestClient, session: Session, tmp_path: Path) -> None:
    response = client.post(f"/experiments/{parent(session)}/fork", json={"changes": {}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "step"]
