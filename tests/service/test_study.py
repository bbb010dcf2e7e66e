"""The study's demos and inside view on a trained experiment, end to end on both stacks: a real
worker trains it and writes its layer statistics, the real API serves the collapse, the
batch-size effect, the activations and recalibration over HTTP."""

import pytest

from tests.service.conftest import SMALL, STEPS, Service

pytestmark = pytest.mark.service

HIDDEN_LAYERS = 3  # the study's 784-100-100-100-10


@pytest.fixture(scope="module")
def experiment_id(service: Service) -> int:
    """One experiment trained by the stack's worker, shared by this module's tests."""
    posted = service.client.post("/experiments", json=SMALL)
    assert posted.status_code == 202, posted.text
    experiment = service.wait_for(
        posted.json()["id"], lambda e: e["status"] in ("succeeded", "failed", "cancelled")
    )
    assert experiment["status"] == "succeeded", experiment["error"]
    return experiment["id"]


def test_collapse_one_class_one_at_a_time_none_in_large_batches(
    service: Service, experiment_id: int
) -> None:
    response = service.client.post(f"/experiments/{experiment_id}/collapse", params={"n": 200})
    assert response.status_code == 200, response.text
    body = response.json()
    population, batch = body["one_at_a_time"]["population"], body["one_at_a_time"]["batch"]
    assert len(set(batch["predictions"])) == 1
    assert batch["accuracy"] < 0.3
    assert population["accuracy"] >= 0.9
    whole = body["whole_test_set"]
    assert whole["batch_accuracy"] >= whole["population_accuracy"] - 0.05


def test_batch_size_effect_shows_where_the_collapse_ends(
    service: Service, experiment_id: int
) -> None:
    response = service.client.get(f"/experiments/{experiment_id}/batch-size-effect")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sizes"] == [1, 2, 4, 8, 16, 32, 64, 128, 256]  # the stand-in has 300 test images
    assert body["batch_accuracy"][0] < 0.3
    assert body["batch_accuracy"][-1] >= body["population_accuracy"] - 0.05
    assert body["batch_accuracy"][-1] - body["batch_accuracy"][0] > 0.5
    png = service.client.get(f"/experiments/{experiment_id}/batch-size-effect.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_activations_cover_every_sample_point_and_layer(
    service: Service, experiment_id: int
) -> None:
    response = service.client.get(f"/experiments/{experiment_id}/activations")
    assert response.status_code == 200, response.text
    variants = response.json()["variants"]
    for variant in ("plain", "bn"):
        layers = variants[variant]
        assert [series["layer"] for series in layers] == list(range(HIDDEN_LAYERS))
        for series in layers:
            assert series["step"] == STEPS
            assert all(p15 <= p50 <= p85 for p15, p50, p85 in zip(*_bands(series), strict=True))
            assert all(0 <= dead <= 1 for dead in series["dead_fraction"])
            assert series["grad_norm"][0] is None  # no gradient before the first step
            assert all(norm is not None and norm > 0 for norm in series["grad_norm"][1:])
    png = service.client.get(f"/experiments/{experiment_id}/activations.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def _bands(series: dict) -> tuple[list[float], list[float], list[float]]:
    return series["p15"], series["p50"], series["p85"]


def test_recalibration_adds_version_2_and_predict_serves_both(
    service: Service, experiment_id: int
) -> None:
    response = service.client.post(f"/experiments/{experiment_id}/recalibrate")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["from_version"], body["version"]) == (1, 2)
    assert body["test_accuracy_after"] >= body["test_accuracy_before"] - 0.05
    image = {"pixels": [0.0] * 300 + [1.0] * 100 + [0.0] * 384}
    for version in (1, 2):
        answer = service.client.post(
            "/predict",
            params={"experiment_id": experiment_id, "variant": "bn", "version": version},
            json=image,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["mode_applies"] is True
    missing = service.client.post(
        "/predict", params={"experiment_id": experiment_id, "version": 3}, json=image
    )
    assert missing.status_code == 404
    assert "version 3" in missing.json()["detail"]
