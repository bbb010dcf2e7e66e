"""A job is never run by two workers at once: a duplicated message (an operator re-enqueueing
it, Redis redelivering it after its visibility timeout) finds the experiment leased to a live
worker and is dropped, and a worker that lost its lease (frozen past the lease timeout while
another took over) stops without writing. Two workers each time, so a duplicate has somewhere
to run."""

import re
import signal
from pathlib import Path

import pytest

from tests.faults.conftest import (
    SPEC,
    StartService,
    assert_complete_curve,
    assert_same_weights,
    enqueue_again,
    experiment_row,
    finished,
    freeze_between_transactions,
    pool_process,
)
from tests.service.conftest import Service

pytestmark = pytest.mark.service

DUPLICATE = re.compile(r"experiment (\d+) not taken: it is running .*this delivery is a duplicate")


def duplicates_dropped(service: Service, experiment_id: int) -> int:
    logs = service.log("worker-1") + service.log("worker-2")
    return sum(int(match) == experiment_id for match in DUPLICATE.findall(logs))


def assert_ran_once(service: Service, experiment_id: int, idx_data_dir: Path) -> None:
    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    assert experiment_row(service, experiment_id)["lease_token"] == 1  # claimed once, ever
    assert_complete_curve(service, experiment_id, SPEC)
    assert_same_weights(service, experiment_id, SPEC, idx_data_dir)


def test_a_job_enqueued_again_while_it_runs_is_not_run_twice(
    start_service: StartService, idx_data_dir: Path
) -> None:
    service = start_service(workers=2)
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]
    service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 40)

    enqueue_again(service, experiment_id)

    # The idle worker takes the copy and drops it; the first one carries on undisturbed.
    service.wait_for(experiment_id, lambda e: duplicates_dropped(service, experiment_id) == 1)
    assert_ran_once(service, experiment_id, idx_data_dir)


@pytest.mark.parametrize("stack", ["redis-postgres"])
def test_a_job_longer_than_redis_visibility_timeout_is_not_run_twice(
    start_service: StartService, idx_data_dir: Path
) -> None:
    # Redis hands the unacknowledged job to the other worker after 2 s; it runs far longer.
    service = start_service(workers=2, broker_visibility_timeout="2")
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]

    experiment = service.wait_for(
        experiment_id, lambda e: duplicates_dropped(service, experiment_id) >= 1 or finished(e)
    )
    assert experiment["status"] == "running", "the job ended before Redis redelivered it"
    assert_ran_once(service, experiment_id, idx_data_dir)


def test_a_frozen_worker_loses_its_lease_and_stops_without_writing(
    start_service: StartService, idx_data_dir: Path
) -> None:
    service = start_service(workers=2)
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]
    service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 100)
    owner = experiment_row(service, experiment_id)["worker"]
    frozen_name, frozen = next(
        (name, process)
        for name, process in service.processes.items()
        if owner.startswith(f"bnlab-cpu-{process.pid}@")
    )
    job = pool_process(frozen)

    freeze_between_transactions(service, job)  # past the lease timeout: another takes over
    try:
        service.wait_for(
            experiment_id, lambda e: experiment_row(service, experiment_id)["lease_token"] == 2
        )
    finally:
        job.send_signal(signal.SIGCONT)

    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    # Woken up, the old job's first write was refused, and it stopped.
    service.wait_for(experiment_id, lambda e: "writes nothing more" in service.log(frozen_name))
    assert f"lease 1 of {owner} was taken" in service.log(frozen_name)
    assert experiment_row(service, experiment_id)["lease_token"] == 2
    assert_complete_curve(service, experiment_id, SPEC)
    assert_same_weights(service, experiment_id, SPEC, idx_data_dir)
