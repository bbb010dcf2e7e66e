"""A GPU worker (queue `gpu`, solo pool) on a real GPU: an experiment asked for on `gpu` trains
there, and SIGTERM hands it back for the next GPU worker to resume, as on the CPU. Skipped where
no CUDA GPU is visible (CI's machine has none); the embedded stack only, since a GPU machine
lent for checks runs no PostgreSQL or Redis."""

import time
from pathlib import Path

import pytest
import torch

from tests.faults.conftest import (
    FAULT_SETTINGS,
    SPEC,
    assert_complete_curve,
    assert_handed_back,
    checkpoint,
    finished,
    stop_gracefully,
    uninterrupted_weights,
)
from tests.service.conftest import Service, running_service, service_env

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Long enough that the GPU is still training when the signal comes.
GPU_SPEC = {**SPEC, "device": "gpu", "training_batches": 3000}


def start_gpu_worker(service: Service, name: str) -> None:
    service.start_worker("gpu", name=name)
    deadline = time.monotonic() + 60
    while service.client.get("/health").json()["workers"]["gpu"] < 1:
        assert time.monotonic() < deadline, service.log_tail()
        time.sleep(0.2)


def test_sigterm_on_a_gpu_worker_hands_its_job_back_for_the_next_one_to_resume(
    tmp_path: Path, idx_data_dir: Path
) -> None:
    env = service_env(tmp_path, idx_data_dir, **FAULT_SETTINGS)
    with running_service(tmp_path, env, workers=0) as service:
        start_gpu_worker(service, "worker-gpu")
        experiment_id = service.client.post("/experiments", json=GPU_SPEC).json()["id"]
        service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 100)

        stop_gracefully(service.processes["worker-gpu"])
        step = assert_handed_back(service, experiment_id, GPU_SPEC)

        start_gpu_worker(service, "worker-gpu-next")
        experiment = service.wait_for(experiment_id, finished)
        assert experiment["status"] == "succeeded", experiment["error"]
        assert f"resumes at step {step}" in service.log("worker-gpu-next")
        assert_complete_curve(service, experiment_id, GPU_SPEC)
        # GPU kernels round as they do, run after run: the resumed nets are the uninterrupted
        # ones, trained on this GPU in one go, to float rounding.
        reference = uninterrupted_weights(GPU_SPEC, idx_data_dir, "cuda")
        for variant in ("plain", "bn"):
            served = checkpoint(service, experiment_id, variant)
            for name, tensor in served.items():
                torch.testing.assert_close(
                    tensor, reference[variant][name], rtol=0, atol=1e-5, equal_nan=True
                )
        # and the GPU's net serves predictions over HTTP
        image = {"pixels": [0.0] * 784}
        response = service.client.post(
            f"/predict?experiment_id={experiment_id}&variant=bn&mode=population", json=image
        )
        assert response.status_code == 200, response.text
