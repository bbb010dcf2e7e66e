"""Stopping on purpose: a cancel ends a training job at its next sample point with its curve
kept; SIGTERM on a worker hands its job back (state saved, experiment queued again) for the
next worker to resume; SIGTERM on `bnlab up` stops every process it started."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.faults.conftest import (
    FAULT_SETTINGS,
    SPEC,
    StartService,
    assert_complete_curve,
    assert_handed_back,
    assert_same_weights,
    curve_steps,
    experiment_row,
    finished,
    stop_gracefully,
)
from tests.service.conftest import Service, _wait_until_ready, service_env

pytestmark = pytest.mark.service

INTERVAL = SPEC["batches_per_sample"]


def test_cancel_mid_training_ends_the_job_at_its_next_sample_point_with_the_curve_kept(
    start_service: StartService,
) -> None:
    service = start_service()
    long = {**SPEC, "training_batches": 100_000}
    experiment_id = service.client.post("/experiments", json=long).json()["id"]
    service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 100)

    cancelled = service.client.post(f"/experiments/{experiment_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    step_at_cancel = cancelled.json()["progress"]["step"]

    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "cancelled"
    steps = curve_steps(service, experiment_id)
    last = steps["bn"][-1]
    # It finished the interval it was in, no more; every point before is kept.
    assert step_at_cancel <= last <= step_at_cancel + INTERVAL
    kept = list(range(0, last + 1, INTERVAL))
    assert steps == {"plain": kept, "bn": kept}
    assert experiment["progress"]["step"] == last


def test_sigterm_on_a_worker_hands_its_job_back_for_the_next_worker_to_resume(
    start_service: StartService, idx_data_dir: Path
) -> None:
    service = start_service()
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]
    service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 100)
    stop_gracefully(service.processes["worker-cpu"])
    step = assert_handed_back(service, experiment_id, SPEC)

    service.start_worker("cpu", name="worker-next")
    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    assert f"resumes at step {step}" in service.log("worker-next")
    assert_complete_curve(service, experiment_id, SPEC)
    # Handed back, not lost: it does not count towards BNLAB_MAX_WORKER_LOSSES.
    assert experiment_row(service, experiment_id)["worker_losses"] == 0
    assert_same_weights(service, experiment_id, SPEC, idx_data_dir)


def test_sigterm_on_bnlab_up_stops_all_of_it_and_the_next_up_resumes_the_job(
    tmp_path: Path, idx_data_dir: Path
) -> None:
    # `bnlab up` is the embedded default: SQLite and the file broker.
    env = service_env(tmp_path, idx_data_dir, **FAULT_SETTINGS)
    logs = tmp_path / "logs"
    logs.mkdir()
    client = httpx.Client(base_url=f"http://127.0.0.1:{env['BNLAB_PORT']}")
    service = Service(client, env, {}, logs)

    def up(log_name: str) -> subprocess.Popen:
        with open(logs / f"{log_name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "bnlab.cli", "up"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        service.processes[log_name] = process
        _wait_until_ready(service)
        return process

    def stop(process: subprocess.Popen) -> None:
        family = psutil.Process(process.pid).children(recursive=True)
        assert len(family) >= 2, "up runs a worker and its pool process"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"processes left behind: {left}"

    try:
        first = up("up-1")
        experiment_id = client.post("/experiments", json=SPEC).json()["id"]
        service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 100)
        stop(first)

        second = up("up-2")
        handed_back = client.get(f"/experiments/{experiment_id}").json()
        assert handed_back["progress"]["step"] >= 100  # the curve so far was kept
        experiment = service.wait_for(experiment_id, finished)
        assert experiment["status"] == "succeeded", experiment["error"]
        assert re.search(r"resumes at step [1-9]", service.log("up-2"))
        assert_complete_curve(service, experiment_id, SPEC)
        assert_same_weights(service, experiment_id, SPEC, idx_data_dir)
        stop(second)
    finally:
        for process in service.processes.values():
            if process.poll() is None:
                process.kill()
        client.close()
