"""BNLAB_LOG_FORMAT=json: API and worker write one JSON object per line, and every line about a
job carries its experiment id."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bnlab.jobs import TRAIN
from tests.service.conftest import Service, running_service, service_env

pytestmark = pytest.mark.service

SMALL = {"training_batches": 100, "batches_per_sample": 50, "validation_size": 200}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, idx_data_dir: Path) -> Iterator[Service]:
    tmp_path = tmp_path_factory.mktemp("json-logs")
    env = service_env(tmp_path, idx_data_dir, log_format="json")
    with running_service(tmp_path, env) as service:
        yield service


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line as a JSON object; fails naming the first line that is not one."""
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    return lines


def test_every_worker_line_is_json_and_job_lines_carry_the_experiment_id(
    service: Service,
) -> None:
    ids = [service.client.post("/experiments", json=SMALL).json()["id"] for _ in range(2)]
    for experiment_id in ids:
        experiment = service.wait_for(experiment_id, lambda e: e["finished_at"] is not None)
        assert experiment["status"] == "succeeded", experiment["error"]

    lines = json_lines(service.log("worker-cpu"))

    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    job_lines = [
        line
        for line in lines
        if line["logger"].startswith("bnlab.worker.job") or f"{TRAIN}[" in line["message"]
    ]
    for experiment_id in ids:
        own = [line for line in job_lines if line.get("experiment_id") == experiment_id]
        # Celery's "received" and "succeeded" lines and the job's own "taken" line at least.
        messages = " | ".join(line["message"] for line in own)
        assert "received" in messages and "succeeded in" in messages, messages
        assert f"experiment {experiment_id} taken" in messages, messages
    assert all(line.get("experiment_id") in ids for line in job_lines), job_lines
    # Outside a job nothing claims one: the worker's ready line has no experiment id.
    ready = next(line for line in lines if line["message"].endswith(" ready."))
    assert "experiment_id" not in ready


def test_every_api_line_is_json(service: Service) -> None:
    service.client.get("/experiments/12345")

    lines = json_lines(service.log("api"))

    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any("GET /experiments/12345" in line["message"] for line in access)
    assert any(line["message"].startswith("Uvicorn running on") for line in lines)
