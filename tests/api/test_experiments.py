"""/experiments: submit (stored and really queued), validation, listing, reading, cancelling."""

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bnlab.jobs import TRAIN
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.tables import Experiment, Worker, utc_now
from tests.api.conftest import add_experiment


def queued_messages(settings: Settings) -> list[Path]:
    return sorted((settings.broker_dir / "queue").glob("*.msg"))


def message_args(path: Path) -> tuple[str, list[Any]]:
    """The task name and positional args of a Celery message in the filesystem broker."""
    message = json.loads(path.read_text())
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return message["headers"]["task"], args


def count_experiments(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Experiment)) or 0


def test_submit_stores_the_experiment_and_queues_its_id(
    client: TestClient, settings: Settings, session: Session
) -> None:
    spec = {"activation": "sigmoid", "training_batches": 2000, "batches_per_sample": 50}
    response = client.post("/experiments", json=spec)

    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/experiments/{body['id']}"
    assert body["status"] == "queued"
    assert body["queue"] == "cpu"
    assert body["spec"]["activation"] == "sigmoid"
    assert body["spec"]["learning_rate"] == 0.01  # the study's default, stored explicitly
    assert body["progress"] == {
        "step": 0,
        "total": 2000,
        "steps_per_second": None,
        "eta_seconds": None,
    }
    assert set(body["results"]) == {"plain", "bn"}
    assert all(value is None for value in body["results"]["bn"].values())

    stored = queries.get_experiment(session, body["id"])
    assert stored is not None and stored.status == "queued" and stored.spec == body["spec"]

    (message,) = queued_messages(settings)
    assert message.name.endswith(".cpu.msg")
    assert message_args(message) == (TRAIN, [[body["id"]]])  # a group of one


def test_a_gpu_experiment_goes_to_the_gpu_queue_and_says_when_no_worker_serves_it(
    client: TestClient, settings: Settings, session: Session
) -> None:
    body = client.post("/experiments", json={"device": "gpu"}).json()

    assert body["queue"] == "gpu"
    assert [m.name.split(".", 1)[1] for m in queued_messages(settings)] == ["gpu.msg"]
    assert body["notice"] == (
        "no worker serves the 'gpu' queue; start one with `bnlab worker --queue gpu`"
    )
    queries.heartbeat(session, "gpu-host", "gpu")
    session.commit()
    assert client.get(f"/experiments/{body['id']}").json()["notice"] is None


def test_a_worker_that_stopped_heart_beating_does_not_count(
    client: TestClient, session: Session
) -> None:
    experiment = add_experiment(session)
    stale = utc_now() - timedelta(minutes=5)
    session.add(Worker(hostname="gone", queue="cpu", started_at=stale, last_seen=stale))
    session.commit()
    notice = client.get(f"/experiments/{experiment.id}").json()["notice"]
    assert notice is not None and "bnlab worker --queue cpu" in notice


def test_no_notice_once_it_runs(client: TestClient, session: Session) -> None:
    experiment = add_experiment(session, status="running")
    assert client.get(f"/experiments/{experiment.id}").json()["notice"] is None


BAD_SPECS = [
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": -0.5}, "learning_rate"),
    ({"learning_rate": 101}, "learning_rate"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"weight_std": 0}, "weight_std"),
    ({"weight_std": 1000}, "weight_std"),
    ({"use_bad_weights": True, "weight_std": 1.0}, "use_bad_weights"),
    ({"training_batches": 0}, "training_batches"),
    ({"training_batches": 1_000_001}, "training_batches"),
    ({"batches_per_sample": 0}, "batches_per_sample"),
    ({"training_batches": 100, "batches_per_sample": 101}, "batches_per_sample"),
    ({"batch_size": 1}, "batch_size"),
    ({"batch_size": 4097}, "batch_size"),
    ({"hidden_layers": []}, "hidden_layers"),
    ({"hidden_layers": [0]}, "hidden_layers"),
    ({"hidden_layers": [4097]}, "hidden_layers"),
    ({"hidden_layers": [10] * 11}, "hidden_layers"),
    ({"conv_channels": [0]}, "conv_channels"),
    ({"conv_channels": [257]}, "conv_channels"),
    ({"conv_channels": [4, 4, 4, 4]}, "conv_channels"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**31}, "seed"),
    ({"validation_size": 99}, "validation_size"),
    ({"validation_size": 30_001}, "validation_size"),
    ({"activation": "swish"}, "activation"),
    ({"dataset": "cifar10"}, "dataset"),
    ({"device": "tpu"}, "device"),
    ({"colour": "red"}, "colour"),  # unknown fields are refused, not ignored
]


@pytest.mark.parametrize(("spec", "field"), BAD_SPECS, ids=[repr(s) for s, _ in BAD_SPECS])
def test_bad_specs_are_refused_with_a_message(
    client: TestClient, settings: Settings, session: Session, spec: dict[str, Any], field: str
) -> None:
    response = client.post("/experiments", json=spec)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail and all(error["msg"] for error in detail)
    assert field in json.dumps(detail)
    assert count_experiments(session) == 0
    assert queued_messages(settings) == []


BAD_JSON = [
    ('{"learning_rate": 1e999}', "finite"),  # a JSON number that is infinity as a float
    ('{"learning_rate": NaN}', "finite"),
    ('{"learning_rate": Infinity}', "finite"),
    ('{"activation": "relu"', "JSON"),  # malformed
    ("[]", "dictionary"),
    ("", "Field required"),
]


@pytest.mark.parametrize(("body", "says"), BAD_JSON)
def test_non_finite_and_malformed_json_is_422(
    client: TestClient, session: Session, body: str, says: str
) -> None:
    response = client.post(
        "/experiments", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert says.lower() in json.dumps(response.json()["detail"]).lower()
    assert count_experiments(session) == 0


def test_when_the_broker_is_down_the_experiment_fails_loudly(
    broker_down: TestClient, session: Session
) -> None:
    response = broker_down.post("/experiments", json={})

    assert response.status_code == 503
    assert "could not be queued" in response.json()["detail"]
    (experiment,) = session.scalars(select(Experiment)).all()
    assert experiment.status == "failed"
    assert experiment.finished_at is not None
    assert experiment.error is not None and "broker" in experiment.error


def test_when_the_embedded_broker_folder_is_gone_the_experiment_fails_loudly(
    client: TestClient, settings: Settings, session: Session
) -> None:
    for path in sorted(settings.broker_dir.rglob("*"), reverse=True):
        path.rmdir()
    settings.broker_dir.rmdir()

    response = client.post("/experiments", json={})

    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "marked failed" in detail and "/health" in detail
    assert [e.status for e in session.scalars(select(Experiment))] == ["failed"]


def test_list_pages_newest_first_and_filters_by_status(
    client: TestClient, session: Session
) -> None:
    ids = [
        add_experiment(session, status=s).id
        for s in ["queued", "succeeded", "queued", "failed", "succeeded"]
    ]

    page = client.get("/experiments", params={"limit": 2}).json()
    assert [item["id"] for item in page["items"]] == ids[::-1][:2]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 0)
    last = client.get("/experiments", params={"limit": 2, "offset": 4}).json()
    assert [item["id"] for item in last["items"]] == [ids[0]]
    succeeded = client.get("/experiments", params={"status": "succeeded"}).json()
    assert [item["id"] for item in succeeded["items"]] == [ids[4], ids[1]]
    assert succeeded["total"] == 2
    queued = client.get("/experiments", params={"status": "queued"}).json()["items"]
    assert all("bnlab worker --queue cpu" in item["notice"] for item in queued)
    assert client.get("/experiments", params={"status": "cancelled"}).json()["total"] == 0
    assert client.get("/experiments").json()["limit"] == 50


@pytest.mark.parametrize(
    "params",
    [{"status": "done"}, {"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "many"}],
)
def test_list_refuses_bad_parameters(client: TestClient, params: dict[str, Any]) -> None:
    response = client.get("/experiments", params=params)
    assert response.status_code == 422
    assert next(iter(params)) in json.dumps(response.json()["detail"])


def test_an_experiment_reads_with_its_progress_and_results(
    client: TestClient, session: Session
) -> None:
    experiment = add_experiment(session, status="succeeded")
    experiment.progress_step, experiment.steps_per_second, experiment.eta_seconds = 200, 40.0, 0.0
    bn = queries.run_of(experiment, "bn")
    bn.final_val_accuracy, bn.test_accuracy, bn.test_accuracy_batch_stats = 0.97, 0.96, 0.95
    bn.steps_to_90 = 100
    session.commit()

    body = client.get(f"/experiments/{experiment.id}").json()

    assert body["status"] == "succeeded"
    assert body["finished_at"] is not None and body["started_at"] is not None
    assert body["progress"] == {
        "step": 200,
        "total": 200,
        "steps_per_second": 40.0,
        "eta_seconds": 0.0,
    }
    assert body["results"]["bn"] == {
        "final_val_accuracy": 0.97,
        "test_accuracy": 0.96,
        "test_accuracy_batch_stats": 0.95,
        "steps_to_90": 100,
        "steps_to_95": None,
        "diverged_at_step": None,
    }
    assert body["results"]["plain"]["test_accuracy"] is None
    assert body["error"] is None and body["notice"] is None


UNKNOWN = [
    ("get", "/experiments/999"),
    ("get", "/experiments/999/curve"),
    ("get", "/experiments/999/curve.png"),
    ("post", "/experiments/999/cancel"),
    ("get", "/experiments/999/checkpoints/bn"),
]


@pytest.mark.parametrize(("method", "url"), UNKNOWN)
def test_unknown_experiments_are_404_with_a_message(
    client: TestClient, method: str, url: str
) -> None:
    response = client.request(method, url)
    assert response.status_code == 404
    assert response.json() == {"detail": "no experiment with id 999"}


@pytest.mark.parametrize("experiment_id", ["0", "-3", str(2**40), "abc"])
def test_ids_out_of_range_are_422_not_a_database_error(
    client: TestClient, experiment_id: str
) -> None:
    assert client.get(f"/experiments/{experiment_id}").status_code == 422


def test_cancelling_a_queued_experiment_cancels_it_now(
    client: TestClient, session: Session
) -> None:
    experiment = add_experiment(session)

    response = client.post(f"/experiments/{experiment.id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    session.expire_all()
    assert queries.get_experiment(session, experiment.id).status == "cancelled"  # type: ignore[union-attr]
    again = client.post(f"/experiments/{experiment.id}/cancel")
    assert again.status_code == 409
    assert "is cancelled" in again.json()["detail"]


def test_cancelling_a_running_experiment_asks_its_worker_to_stop(
    client: TestClient, session: Session
) -> None:
    experiment = add_experiment(session, status="running")

    body = client.post(f"/experiments/{experiment.id}/cancel").json()

    assert body["status"] == "running"  # the worker stops it at its next sample point
    assert body["cancel_requested"] is True
    session.expire_all()
    assert queries.get_experiment(session, experiment.id).cancel_requested  # type: ignore[union-attr]


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_cancelling_a_finished_experiment_is_409(
    client: TestClient, session: Session, status: str
) -> None:
    experiment = add_experiment(session, status=status)
    response = client.post(f"/experiments/{experiment.id}/cancel")
    assert response.status_code == 409
    assert f"experiment {experiment.id} is {status}" in response.json()["detail"]
    session.expire_all()
    assert queries.get_experiment(session, experiment.id).status == status  # type: ignore[union-attr]
