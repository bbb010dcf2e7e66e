"""A user's whole journey, on both stacks, with a real worker process and real HTTP."""

from pathlib import Path

import pytest

from bnlab.models.checkpoint import load_net
from bnlab.models.data import load_splits
from bnlab.models.inference import ServedNet
from tests.service.conftest import SMALL, Service

pytestmark = pytest.mark.service


def finished(experiment: dict) -> bool:
    return experiment["status"] in ("succeeded", "failed", "cancelled")


def test_experiment_trains_both_variants_and_serves_the_collapse(
    service: Service, idx_data_dir: Path, tmp_path: Path
) -> None:
    posted = service.client.post("/experiments", json=SMALL)
    assert posted.status_code == 202, posted.text
    experiment_id = posted.json()["id"]
    assert posted.headers["location"].endswith(f"/experiments/{experiment_id}")

    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    assert experiment["progress"]["step"] == experiment["progress"]["total"] == 300
    for variant in ("plain", "bn"):
        results = experiment["results"][variant]
        assert 0.5 < results["test_accuracy"] <= 1.0
        assert results["final_val_accuracy"] is not None
        assert results["diverged_at_step"] is None

    series = service.client.get(f"/experiments/{experiment_id}/curve").json()["series"]
    for variant in ("plain", "bn"):
        assert series[variant]["step"] == [0, 50, 100, 150, 200, 250, 300]
        assert len(series[variant]["val_accuracy"]) == 7
    png = service.client.get(f"/experiments/{experiment_id}/curve.png")
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")

    test_images = load_splits("mnist", idx_data_dir, False, 200).test.images[:20]
    population, batch = [], []
    for image in test_images:
        pixels = (image.float() / 255).tolist()
        for mode, answers in (("population", population), ("batch", batch)):
            response = service.client.post(
                "/predict",
                params={"experiment_id": experiment_id, "variant": "bn", "mode": mode},
                json={"pixels": pixels},
            )
            assert response.status_code == 200, response.text
            assert response.json()["mode_applies"] is True
            answers.append(response.json()["prediction"])
    assert len(set(batch)) == 1, "batch statistics on one image collapse to one class"
    assert len(set(population)) > 1

    download = service.client.get(f"/experiments/{experiment_id}/checkpoints/bn")
    assert download.status_code == 200
    path = tmp_path / "bn.safetensors"
    path.write_bytes(download.content)
    stack, meta = load_net(path)
    assert meta["variant"] == "bn" and meta["step"] == 300
    local = ServedNet(stack).predict(test_images, "population").classes
    assert local == population


def test_gpu_experiment_waits_and_says_no_worker_serves_its_queue(service: Service) -> None:
    posted = service.client.post("/experiments", json={**SMALL, "device": "gpu"})
    assert posted.status_code == 202, posted.text
    experiment = service.client.get(f"/experiments/{posted.json()['id']}").json()
    assert experiment["status"] == "queued"
    assert "gpu" in experiment["notice"]


def test_cancel_stops_a_running_experiment_and_keeps_its_curve(service: Service) -> None:
    long = {**SMALL, "training_batches": 200_000, "batches_per_sample": 100}
    experiment_id = service.client.post("/experiments", json=long).json()["id"]
    service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 200)
    assert service.client.post(f"/experiments/{experiment_id}/cancel").status_code == 200
    experiment = service.wait_for(experiment_id, finished, timeout=30)
    assert experiment["status"] == "cancelled"
    steps = service.client.get(f"/experiments/{experiment_id}/curve").json()["series"]["bn"]["step"]
    assert steps[:3] == [0, 100, 200]
    assert steps[-1] < 200_000


def test_missing_dataset_fails_the_job_with_a_reason(service: Service) -> None:
    spec = {**SMALL, "dataset": "fashion-mnist"}
    experiment_id = service.client.post("/experiments", json=spec).json()["id"]
    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "failed"
    assert "FashionMNIST" in experiment["error"]
    assert "train-images-idx3-ubyte" in experiment["error"]
    assert "Traceback" not in experiment["error"]


def test_divergence_does_not_fail_the_job(service: Service) -> None:
    spec = {**SMALL, "use_bad_weights": True, "learning_rate": 2.0, "training_batches": 100}
    experiment_id = service.client.post("/experiments", json=spec).json()["id"]
    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    plain = experiment["results"]["plain"]
    assert plain["diverged_at_step"] is not None and plain["test_accuracy"] is None
    assert experiment["results"]["bn"]["test_accuracy"] is not None
