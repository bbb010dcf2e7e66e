"""Redis or PostgreSQL restarted in the middle of a job (the test's own servers, on spare ports).

Redis comes back empty (no persistence: the worst case): the worker reconnects, the running
job completes, and a job that was waiting in the lost queue is queued again from SQL.
PostgreSQL goes down hard (`pg_ctl stop -m immediate`, every connection cut) for longer than
the lease timeout: the job's writes wait and retry, it completes, and it keeps its lease (no
other worker is given a job that was only cut off from the database).
"""

import time
from pathlib import Path

import pytest

from tests.faults.conftest import (
    SPEC,
    PostgresServer,
    RedisServer,
    StartService,
    assert_complete_curve,
    assert_same_weights,
    experiment_row,
    finished,
)

pytestmark = [pytest.mark.service, pytest.mark.parametrize("stack", ["redis-postgres"])]


def test_redis_restarted_empty_mid_job_loses_no_job(
    start_service: StartService, private_redis: RedisServer, idx_data_dir: Path
) -> None:
    service = start_service()
    running = service.client.post("/experiments", json=SPEC).json()["id"]
    service.wait_for(running, lambda e: e["progress"]["step"] >= 100)
    waiting = service.client.post("/experiments", json=SPEC).json()["id"]  # queued behind it

    private_redis.kill()
    time.sleep(1)
    private_redis.start()

    for experiment_id in (running, waiting):
        experiment = service.wait_for(experiment_id, finished, timeout=240)
        assert experiment["status"] == "succeeded", experiment["error"]
        assert_complete_curve(service, experiment_id, SPEC)
        assert_same_weights(service, experiment_id, SPEC, idx_data_dir)
    assert experiment_row(service, running)["lease_token"] == 1  # it ran on, never handed over
    # The waiting one's message died with Redis: SQL said it still needed a worker.
    assert f"experiment {waiting} waited" in service.log("worker-cpu")
    # The API's broker connection recovered too.
    after = service.client.post("/experiments", json={**SPEC, "training_batches": 40})
    assert after.status_code == 202, after.text
    assert service.wait_for(after.json()["id"], finished)["status"] == "succeeded"


def test_postgres_down_mid_job_the_writes_wait_and_the_job_completes(
    start_service: StartService, private_postgres: PostgresServer, idx_data_dir: Path
) -> None:
    service = start_service()
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]
    service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 100)

    private_postgres.stop("immediate")
    time.sleep(5)  # longer than the lease timeout (3 s): every heartbeat in SQL is stale
    private_postgres.start()

    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    assert "database unreachable" in service.log("worker-cpu"), "no write met the outage"
    assert experiment_row(service, experiment_id)["lease_token"] == 1
    assert_complete_curve(service, experiment_id, SPEC)
    assert_same_weights(service, experiment_id, SPEC, idx_data_dir)
