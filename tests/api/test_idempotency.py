"""Idempotency-Key on POST /experiments and /sweeps: a retry gets the first answer, not a second
one."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bnlab.api.core import idempotency
from bnlab.api.experiments.schemas import ExperimentOut
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.tables import Experiment, Sweep
from tests.api.test_experiments import queued_messages

SPEC = {"activation": "sigmoid", "training_batches": 2000, "batches_per_sample": 50}


def post(client: TestClient, spec: dict[str, Any], key: str | None) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/experiments", json=spec, headers=headers)


def count_experiments(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Experiment)) or 0


def test_a_retry_with_the_same_key_gets_the_first_experiment(
    client: TestClient, settings: Settings, session: Session
) -> None:
    first = post(client, SPEC, "retry-me-1")
    again = post(client, SPEC, "retry-me-1")

    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert ExperimentOut.model_validate(again.json()).spec == first.json()["spec"]
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert count_experiments(session) == 1
    assert len(queued_messages(settings)) == 1  # queued once, not per request


def test_a_replay_shows_the_experiment_as_it_is_now(client: TestClient) -> None:
    first = post(client, SPEC, "then-cancelled").json()
    client.post(f"/experiments/{first['id']}/cancel")
    assert post(client, SPEC, "then-cancelled").json()["status"] == "cancelled"


def test_the_same_spec_spelt_differently_is_the_same_request(
    client: TestClient, session: Session
) -> None:
    first = post(client, {}, "defaults")
    # Every field at the study's default: the stored spec is the same.
    again = post(client, {"activation": "relu", "learning_rate": 0.01}, "defaults")
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert count_experiments(session) == 1


def test_a_key_reused_with_another_body_is_422(client: TestClient, session: Session) -> None:
    first = post(client, SPEC, "used-once").json()

    response = post(client, {**SPEC, "learning_rate": 1.0}, "used-once")

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert f"'used-once' was already used for experiment {first['id']}" in detail
    assert "send a new key" in detail
    assert count_experiments(session) == 1


def test_different_keys_or_no_key_make_different_experiments(
    client: TestClient, session: Session
) -> None:
    ids = {
        post(client, SPEC, "a").json()["id"],
        post(client, SPEC, "b").json()["id"],
        post(client, SPEC, None).json()["id"],
        post(client, SPEC, None).json()["id"],
    }
    assert len(ids) == 4
    assert count_experiments(session) == 4


@pytest.mark.parametrize("key", ["", "x" * 256, "with space", "naïve"])
def test_a_malformed_key_is_422(client: TestClient, session: Session, key: str) -> None:
    response = client.post("/experiments", json=SPEC, headers={"Idempotency-Key": key.encode()})
    assert response.status_code == 422
    assert "idempotency-key" in str(response.json()["detail"]).lower()
    assert count_experiments(session) == 0


def test_requests_racing_with_one_key_make_one_experiment(
    client: TestClient, session: Session
) -> None:
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(client, SPEC, "racing"), range(8)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert count_experiments(session) == 1


def test_the_loser_of_a_race_answers_with_the_winners_row(settings: Settings) -> None:
    """The race made certain: the winner commits between the loser's look-up and its INSERT,
    so the loser's INSERT really fails on the unique key (no mock: a second real session)."""
    sessions = make_sessionmaker(settings.database_url)
    spec = ExperimentSpec().model_dump()

    def create_after_the_winner(session: Session) -> Callable[[], Experiment]:
        def create() -> Experiment:
            with sessions() as winner:
                queries.create_experiment(winner, spec, "cpu", 1, idempotency_key="k")
                winner.commit()
            experiment = queries.create_experiment(session, spec, "cpu", 1, idempotency_key="k")
            session.commit()
            return experiment

        return create

    with sessions() as loser:
        row, replayed = idempotency.once(
            loser,
            Experiment,
            "k",
            create=create_after_the_winner(loser),
            same=lambda earlier: earlier.spec == spec,
            what="experiment",
        )
        assert replayed is True
        assert row.idempotency_key == "k"
        assert count_experiments(loser) == 1


def test_a_key_whose_experiment_could_not_be_queued_can_be_used_again(
    broker_down: TestClient, client: TestClient, session: Session
) -> None:
    assert post(broker_down, SPEC, "try-again").status_code == 503
    retry = post(client, SPEC, "try-again")
    assert retry.status_code == 202
    assert retry.json()["status"] == "queued"
    assert "idempotent-replayed" not in retry.headers
    assert count_experiments(session) == 2  # the failed one stays, marked failed


# --- /sweeps: the same helper ----------------------------------------------------------------

SWEEP = {
    "grid": {"seed": [0, 1], "learning_rate": [0.01, 1.0]},
    "base": {"training_batches": 200, "batches_per_sample": 50},
}


def post_sweep(client: TestClient, body: dict[str, Any], key: str) -> Any:
    return client.post("/sweeps", json=body, headers={"Idempotency-Key": key})


def test_a_sweep_retried_with_the_same_key_is_made_once(
    client: TestClient, session: Session
) -> None:
    first = post_sweep(client, SWEEP, "sweep-once")
    again = post_sweep(client, SWEEP, "sweep-once")

    assert first.status_code == again.status_code == 202, first.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert session.scalar(select(func.count()).select_from(Sweep)) == 1
    assert count_experiments(session) == 4  # its four cells, once


def test_a_sweep_key_reused_with_another_grid_is_422(client: TestClient, session: Session) -> None:
    first = post_sweep(client, SWEEP, "sweep-key").json()
    other = {**SWEEP, "grid": {"seed": [0, 1, 2]}}

    response = post_sweep(client, other, "sweep-key")

    assert response.status_code == 422
    assert f"already used for sweep {first['id']}" in response.json()["detail"]
    assert session.scalar(select(func.count()).select_from(Sweep)) == 1
