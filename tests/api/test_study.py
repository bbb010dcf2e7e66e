"""The study's routes on their own: the collapse demo, the batch-size effect, the activations and
recalibration, each answer checked against the engine, and every bad request a 4xx that says why.
(tests/service/test_study.py runs them on a trained experiment, end to end.)"""

import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from bnlab.api.main import create_app
from bnlab.api.study import routes as study
from bnlab.api.study.sources import BUSY_RETRY_SECONDS
from bnlab.models.checkpoint import load_net, save_net
from bnlab.models.data import Split, load_splits
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.tables import Experiment
from tests.api.conftest import ARCH, add_checkpoints, add_experiment

VALIDATION_SIZE = 200
TEST_IMAGES = 300  # in the IDX stand-in (tests/idx.py)


@pytest.fixture
def client(settings: Settings, idx_data_dir: Path) -> Iterator[TestClient]:
    """An app that can read the IDX stand-in, as a worker's experiments were trained on."""
    app = create_app(Settings(**(settings.model_dump() | {"data_dir": idx_data_dir})))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def trained(session: Session, tmp_path: Path) -> Experiment:
    """A succeeded experiment with both nets checkpointed (version 1 of each). Its bn net's betas
    are drawn at random, as training leaves them: with the untrained zeros, one image's batch
    statistics would give all-zero logits, and a tie is no collapse to look at."""
    experiment = add_experiment(session, status="succeeded", validation_size=VALIDATION_SIZE)
    paths = add_checkpoints(session, experiment, tmp_path / "checkpoints")
    stack, _meta = load_net(paths["bn"])
    with torch.no_grad():
        for norm in stack.norms:
            norm.beta.normal_(generator=torch.Generator().manual_seed(5))
    sha256, _size = save_net(paths["bn"], stack.net_state(0), variant="bn", arch=ARCH, step=200)
    queries.latest_checkpoint(session, experiment.id, "bn").sha256 = sha256  # type: ignore[union-attr]
    session.commit()
    return experiment


def held_out(data_dir: Path) -> Split:
    return load_splits("mnist", data_dir, False, VALIDATION_SIZE).test


# --- the collapse demo -----------------------------------------------------------------------


def test_collapse_predicts_one_at_a_time_in_both_modes(
    client: TestClient, trained: Experiment, idx_data_dir: Path
) -> None:
    response = client.post(f"/experiments/{trained.id}/collapse", params={"n": 40})
    assert response.status_code == 200, response.text
    body = response.json()
    test = held_out(idx_data_dir)
    assert (body["n"], body["variant"], body["checkpoint_version"]) == (40, "bn", 1)
    assert body["labels"] == test.labels[:40].tolist()
    population, batch = body["one_at_a_time"]["population"], body["one_at_a_time"]["batch"]
    assert len(population["predictions"]) == len(batch["predictions"]) == 40
    assert len(set(batch["predictions"])) == 1, "one image's own statistics: one class for all"
    for answers in (population, batch):
        right = sum(p == y for p, y in zip(answers["predictions"], body["labels"], strict=True))
        assert answers["accuracy"] == pytest.approx(right / 40)
    whole = body["whole_test_set"]
    assert (whole["images"], whole["batch_size"]) == (TEST_IMAGES, 1000)
    assert 0 <= whole["population_accuracy"] <= 1 and 0 <= whole["batch_accuracy"] <= 1


def test_collapse_population_answers_are_the_checkpointed_nets(
    client: TestClient, trained: Experiment, idx_data_dir: Path, tmp_path: Path
) -> None:
    body = client.post(f"/experiments/{trained.id}/collapse", params={"n": 25}).json()
    stack, _ = load_net(tmp_path / "checkpoints" / f"experiment-{trained.id}" / "bn.safetensors")
    images = held_out(idx_data_dir).images[:25]
    with torch.no_grad():
        expected = stack(images.float() / 255, "population")[0].argmax(dim=1).tolist()
    assert body["one_at_a_time"]["population"]["predictions"] == expected


@pytest.mark.parametrize("n", [0, -1, 10_001])
def test_collapse_n_out_of_range_is_422(client: TestClient, trained: Experiment, n: int) -> None:
    response = client.post(f"/experiments/{trained.id}/collapse", params={"n": n})
    assert response.status_code == 422
    assert "n" in str(response.json()["detail"])


def test_collapse_n_beyond_the_test_set_is_422_saying_how_many_there_are(
    client: TestClient, trained: Experiment
) -> None:
    response = client.post(f"/experiments/{trained.id}/collapse", params={"n": TEST_IMAGES + 1})
    assert response.status_code == 422
    assert f"only {TEST_IMAGES} images" in response.json()["detail"]


def test_recalibrating_the_plain_variant_is_409_it_has_no_bn(
    client: TestClient, trained: Experiment
) -> None:
    response = client.post(f"/experiments/{trained.id}/recalibrate", params={"variant": "plain"})
    assert response.status_code == 409
    assert "variant=bn" in response.json()["detail"]


@pytest.mark.parametrize("path", ["collapse", "batch-size-effect"])
def test_the_demos_show_every_variant_and_only_bn_collapses(
    client: TestClient, trained: Experiment, path: str
) -> None:
    method = client.get if path == "batch-size-effect" else client.post
    response = method(f"/experiments/{trained.id}/{path}", params={"variant": "plain"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["variant"], body["mode_applies"]) == ("plain", False)
    assert {variant: shown["mode_applies"] for variant, shown in body["variants"].items()} == {
        "plain": False,
        "bn": True,
    }
    if path == "collapse":
        plain, bn = (
            body["variants"]["plain"]["one_at_a_time"],
            body["variants"]["bn"]["one_at_a_time"],
        )
        assert plain["batch"] == plain["population"] == body["one_at_a_time"]["population"]
        assert len(set(bn["batch"]["predictions"])) == 1
    else:
        plain = body["variants"]["plain"]
        assert plain["batch_accuracy"] == [plain["population_accuracy"]] * len(body["sizes"])


@pytest.mark.parametrize("path", ["collapse", "batch-size-effect"])
def test_the_demos_leave_out_a_diverged_net_and_say_so_when_it_is_asked_for(
    client: TestClient, session: Session, trained: Experiment, path: str
) -> None:
    queries.run_of(trained, "plain").diverged_at_step = 7
    session.commit()
    method = client.get if path == "batch-size-effect" else client.post
    response = method(f"/experiments/{trained.id}/{path}")
    assert response.status_code == 200, response.text
    assert list(response.json()["variants"]) == ["bn"]
    response = method(f"/experiments/{trained.id}/{path}", params={"variant": "plain"})
    assert response.status_code == 409
    assert "diverged at step 7" in response.json()["detail"]


@pytest.mark.parametrize("path", ["collapse", "batch-size-effect", "recalibrate"])
def test_a_variant_the_experiment_did_not_train_is_409_naming_those_it_did(
    client: TestClient, trained: Experiment, path: str
) -> None:
    method = client.get if path == "batch-size-effect" else client.post
    response = method(f"/experiments/{trained.id}/{path}", params={"variant": "bn_after"})
    assert response.status_code == 409
    assert "no bn_after net" in response.json()["detail"]
    assert "plain, bn" in response.json()["detail"]


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled"])
@pytest.mark.parametrize("path", ["collapse", "batch-size-effect.png", "recalibrate"])
def test_an_unfinished_experiment_is_409(
    client: TestClient, session: Session, status: str, path: str
) -> None:
    experiment = add_experiment(session, status=status, validation_size=VALIDATION_SIZE)
    method = client.get if path.startswith("batch-size-effect") else client.post
    response = method(f"/experiments/{experiment.id}/{path}")
    assert response.status_code == 409
    assert f"is {status}" in response.json()["detail"]
    assert "succeeded" in response.json()["detail"]


@pytest.mark.parametrize("path", ["collapse", "batch-size-effect", "recalibrate", "activations"])
def test_an_unknown_experiment_is_404(client: TestClient, path: str) -> None:
    method = client.post if path in ("collapse", "recalibrate") else client.get
    response = method(f"/experiments/999/{path}")
    assert response.status_code == 404
    assert "999" in response.json()["detail"]


@pytest.mark.parametrize("path", ["collapse", "batch-size-effect", "recalibrate"])
def test_a_version_that_does_not_exist_is_404_and_a_bad_one_422(
    client: TestClient, trained: Experiment, path: str
) -> None:
    method = client.get if path == "batch-size-effect" else client.post
    missing = method(f"/experiments/{trained.id}/{path}", params={"version": 7})
    assert missing.status_code == 404
    assert "version 7" in missing.json()["detail"]
    assert method(f"/experiments/{trained.id}/{path}", params={"version": 0}).status_code == 422


def test_without_the_dataset_the_demo_is_503_naming_what_is_missing(
    settings: Settings, trained: Experiment
) -> None:
    with TestClient(create_app(settings)) as client:  # data_dir holds nothing
        response = client.post(f"/experiments/{trained.id}/collapse")
    assert response.status_code == 503
    assert "train-images-idx3-ubyte" in response.json()["detail"]


# --- the compute slots ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["collapse", "batch-size-effect", "recalibrate"])
def test_with_every_slot_taken_a_demo_is_503_with_retry_after(
    client: TestClient, trained: Experiment, path: str
) -> None:
    slots = client.app.state.study_slots  # type: ignore[attr-defined]
    with ExitStack() as taken:
        for _ in range(slots.size):
            taken.enter_context(slots.held())
        method = client.get if path == "batch-size-effect" else client.post
        response = method(f"/experiments/{trained.id}/{path}")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(BUSY_RETRY_SECONDS)
    detail = response.json()["detail"]
    assert "already running as many study computations" in detail
    assert f"BNLAB_STUDY_SLOTS allows ({slots.size}): retry in" in detail


def test_a_demo_while_another_runs_in_the_one_slot_is_503_and_runs_once_it_is_free(
    settings: Settings,
    idx_data_dir: Path,
    trained: Experiment,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started, release = threading.Event(), threading.Event()
    one_at_a_time = study.one_at_a_time

    def held_until_released(*args: Any) -> Any:
        started.set()
        release.wait(timeout=30)
        return one_at_a_time(*args)

    monkeypatch.setattr(study, "one_at_a_time", held_until_released)
    one_slot = settings.model_dump() | {"data_dir": idx_data_dir, "study_slots": 1}
    with TestClient(create_app(Settings(**one_slot))) as client, ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(client.post, f"/experiments/{trained.id}/collapse")
            assert started.wait(timeout=30)
            busy = client.get(f"/experiments/{trained.id}/batch-size-effect")
        finally:
            release.set()
        assert first.result(timeout=60).status_code == 200
        after = client.get(f"/experiments/{trained.id}/batch-size-effect")
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == str(BUSY_RETRY_SECONDS)
    assert "BNLAB_STUDY_SLOTS allows (1)" in busy.json()["detail"]
    assert after.status_code == 200


# --- the batch-size effect --------------------------------------------------------------------


def test_batch_size_effect_goes_from_one_class_to_large_batches(
    client: TestClient, trained: Experiment, idx_data_dir: Path
) -> None:
    response = client.get(f"/experiments/{trained.id}/batch-size-effect")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sizes"] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert len(body["batch_accuracy"]) == len(body["sizes"])
    assert body["images"] == TEST_IMAGES and body["checkpoint_version"] == 1
    # a batch of one gives every image one class: right for that class's share at most
    labels = held_out(idx_data_dir).labels
    assert body["batch_accuracy"][0] <= torch.bincount(labels).max().item() / TEST_IMAGES
    assert 0 <= body["population_accuracy"] <= 1


def test_batch_size_effect_png(client: TestClient, trained: Experiment) -> None:
    response = client.get(f"/experiments/{trained.id}/batch-size-effect.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")


# --- activations -------------------------------------------------------------------------------


def add_layer_stats(session: Session, experiment: Experiment, steps: list[int]) -> None:
    """Two hidden layers per variant at each step, as a worker writes them."""
    for step in steps:
        stats = {
            variant: [
                {
                    "layer": layer,
                    "p15": -1.0 - layer,
                    "p50": step / 100,
                    "p85": 1.0 + layer,
                    "dead_fraction": 0.5 if variant == "plain" else 0.0,
                    "grad_norm": None if step == 0 else 0.1 * (layer + 1),
                }
                for layer in range(2)
            ]
            for variant in ("plain", "bn")
        }
        queries.add_layer_stats(session, experiment, step, stats)
    session.commit()


def test_activations_are_series_per_variant_and_layer(
    client: TestClient, session: Session, trained: Experiment
) -> None:
    add_layer_stats(session, trained, [100, 0, 50])  # written in any order
    response = client.get(f"/experiments/{trained.id}/activations")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["activation"] == "relu" and body["probe_images"] == VALIDATION_SIZE
    assert "zero output" in body["dead_means"]
    for variant in ("plain", "bn"):
        layers = body["variants"][variant]
        assert [series["layer"] for series in layers] == [0, 1]
        for series in layers:
            assert series["step"] == [0, 50, 100]
            assert series["p50"] == [0.0, 0.5, 1.0]
            assert series["grad_norm"][0] is None and None not in series["grad_norm"][1:]
    assert body["variants"]["plain"][1]["dead_fraction"] == [0.5, 0.5, 0.5]
    assert body["variants"]["bn"][1]["p85"] == [2.0, 2.0, 2.0]


def test_activations_of_an_experiment_without_any_yet_are_empty(
    client: TestClient, session: Session
) -> None:
    experiment = add_experiment(session, status="queued", activation="sigmoid")
    body = client.get(f"/experiments/{experiment.id}/activations").json()
    assert body["variants"] == {"plain": [], "bn": []}
    assert "saturated" in body["dead_means"]
    png = client.get(f"/experiments/{experiment.id}/activations.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_activations_png(client: TestClient, session: Session, trained: Experiment) -> None:
    add_layer_stats(session, trained, [0, 50, 100])
    response = client.get(f"/experiments/{trained.id}/activations.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "no-store"
    assert response.content.startswith(b"\x89PNG")


# --- recalibration ---------------------------------------------------------------------------


@pytest.fixture
def pixels(idx_data_dir: Path) -> list:
    """One test image as /predict takes it."""
    return (held_out(idx_data_dir).images[0].float() / 255).tolist()


def predict(client: TestClient, experiment_id: int, pixels: list, **params: Any) -> dict:
    response = client.post(
        "/predict", params={"experiment_id": experiment_id, **params}, json={"pixels": pixels}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_recalibration_makes_version_2_that_predict_serves(
    client: TestClient, trained: Experiment, pixels: list, tmp_path: Path
) -> None:
    before = predict(client, trained.id, pixels)  # caches "latest", which is version 1 for now
    response = client.post(f"/experiments/{trained.id}/recalibrate")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["from_version"], body["version"]) == (1, 2)
    assert body["training_images"] == 1200 - VALIDATION_SIZE
    assert all(0 <= body[k] <= 1 for k in ("test_accuracy_before", "test_accuracy_after"))

    version_1 = predict(client, trained.id, pixels, version=1)
    version_2 = predict(client, trained.id, pixels, version=2)
    latest = predict(client, trained.id, pixels)
    assert version_1["probabilities"] == pytest.approx(before["probabilities"])
    # the untrained net's running statistics (0, 1) are far from the measured ones
    assert not _close(version_1["probabilities"], version_2["probabilities"])
    assert latest["probabilities"] == pytest.approx(version_2["probabilities"])

    files = sorted(
        p.name for p in (tmp_path / "checkpoints" / f"experiment-{trained.id}").iterdir()
    )
    assert len(files) == 3 and any("recalibrated" in name for name in files)


def test_recalibration_can_start_from_an_older_version(
    client: TestClient, trained: Experiment
) -> None:
    first = client.post(f"/experiments/{trained.id}/recalibrate").json()
    again = client.post(f"/experiments/{trained.id}/recalibrate", params={"version": 1}).json()
    assert (again["from_version"], again["version"]) == (1, 3)
    assert again["test_accuracy_after"] == pytest.approx(first["test_accuracy_after"])


def test_the_demos_take_a_version(client: TestClient, trained: Experiment) -> None:
    client.post(f"/experiments/{trained.id}/recalibrate")
    for version in (1, 2):
        body = client.get(
            f"/experiments/{trained.id}/batch-size-effect", params={"version": version}
        ).json()
        assert body["checkpoint_version"] == version
    latest = client.post(f"/experiments/{trained.id}/collapse", params={"n": 5}).json()
    assert latest["checkpoint_version"] == 2


def _close(a: list[float], b: list[float]) -> bool:
    return all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(a, b, strict=True))
