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
    curve_steps,
    enqueue_again,
    experiment_row,
    finished,
    freeze_between_transactions,
    pool_process,
)
from tests.service.conftest import Service

pytestmark = pytest.mark.service

# Longer than any test waits: these jobs are cancelled once they have shown what they must.
LONG = {**SPEC, "training_batches": 100_000}
INTERVAL = SPEC["batches_per_sample"]
DUPLICATE = re.compile(r"experiment (\d+) not taken: it is running .*this delivery is a duplicate")


def duplicates_dropped(service: Service, experiment_id: int) -> int:
    logs = service.log("worker-1") + service.log("worker-2")
    return sum(int(match) == experiment_id for match in DUPLICATE.findall(logs))


def assert_carried_on_alone(service: Service, experiment_id: int) -> None:
    """After the copy was dropped the job carries on (two more sample points), then is
    cancelled: it was claimed once, ever, and every sample point is there once."""
    dropped_at = service.client.get(f"/experiments/{experiment_id}").json()["progress"]["step"]
    service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= dropped_at + 2 * INTERVAL)
    service.client.post(f"/experiments/{experiment_id}/cancel")
    assert service.wait_for(experiment_id, finished)["status"] == "cancelled"
    assert experiment_row(service, experiment_id)["lease_token"] == 1
    steps = curve_steps(service, experiment_id)
    every_point = list(range(0, steps["bn"][-1] + 1, INTERVAL))
    assert steps == {"plain": every_point, "bn": every_point}


def test_a_job_enqueued_again_while_it_runs_is_not_run_twice(start_service: StartService) -> None:
    service = start_service(workers=2)
    experiment_id = service.client.post("/experiments", json=LONG).json()["id"]
    service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 40)

    enqueue_again(service, experiment_id)

    # The idle worker takes the copy and drops it; the first one carries on undisturbed.
    service.wait_for(experiment_id, lambda e: duplicates_dropped(service, experiment_id) == 1)
    assert_carried_on_alone(service, experiment_id)


@pytest.mark.parametrize("stack", ["redis-postgres"])
def test_a_job_longer_than_redis_visibility_timeout_is_not_run_twice(
    start_service: StartService,
) -> None:
    # Redis hands the unacknowledged job to the other worker once it has run 2 s.
    service = start_service(workers=2, broker_visibility_timeout="2")
    experiment_id = service.client.post("/experiments", json=LONG).json()["id"]

    service.wait_for(experiment_id, lambda e: duplicates_dropped(service, experiment_id) >= 1)
    assert_carried_on_alone(service, experiment_id)


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
