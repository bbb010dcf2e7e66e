"""A worker killed (SIGKILL, worker and pool process) in the middle of a job, on both stacks.

The embedded file broker forgets the message of a killed worker, and Redis gives it back only
after its visibility timeout (an hour): a new worker must find the job from SQL alone (its
heartbeat stopped), resume it from its last sample point, and end with what an uninterrupted
run gives. A job whose worker dies every time is not handed out forever: it fails, saying why.
"""

import re
from pathlib import Path

import pytest

from tests.faults.conftest import (
    SPEC,
    StartService,
    assert_complete_curve,
    assert_same_weights,
    experiment_row,
    finished,
    kill_tree,
)
from tests.service.conftest import Service

pytestmark = pytest.mark.service


def test_killed_worker_s_job_resumes_on_a_new_worker_and_ends_as_if_never_killed(
    start_service: StartService, idx_data_dir: Path
) -> None:
    experiment = kill_mid_job_and_resume(start_service(), SPEC, idx_data_dir)
    assert experiment["results"]["plain"]["diverged_at_step"] is None


@pytest.mark.parametrize("stack", ["embedded"])
def test_a_diverged_net_stays_diverged_across_a_kill_and_the_job_succeeds(
    start_service: StartService, idx_data_dir: Path
) -> None:
    # The study's "bad" weights at learning rate 2: the plain net blows up in a few steps and
    # is frozen; the resumed job must restore it frozen (NaNs and all), not fail.
    diverging = {**SPEC, "use_bad_weights": True, "learning_rate": 2.0}
    experiment = kill_mid_job_and_resume(start_service(), diverging, idx_data_dir)
    plain, bn = experiment["results"]["plain"], experiment["results"]["bn"]
    assert 0 < plain["diverged_at_step"] < 200 and plain["test_accuracy"] is None
    assert bn["diverged_at_step"] is None and bn["test_accuracy"] is not None


def kill_mid_job_and_resume(service: Service, spec: dict, idx_data_dir: Path) -> dict:
    """SIGKILL the worker at step 200 or later, start another; check what a user would."""
    experiment_id = service.client.post("/experiments", json=spec).json()["id"]
    at_kill = service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 200)
    assert at_kill["status"] == "running"

    kill_tree(service.processes["worker-cpu"])
    service.start_worker("cpu", name="worker-after")

    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    resumed = re.search(r"resumes at step (\d+)", service.log("worker-after"))
    assert resumed, service.log_tail()
    # From the last sample point before the kill (its state file may lag its row by one),
    # not from scratch.
    assert int(resumed.group(1)) >= at_kill["progress"]["step"] - spec["batches_per_sample"]
    assert_complete_curve(service, experiment_id, spec)
    assert_same_weights(service, experiment_id, spec, idx_data_dir)
    assert experiment_row(service, experiment_id)["worker_losses"] == 1
    return experiment


@pytest.mark.parametrize("stack", ["embedded"])
def test_a_job_that_kills_its_worker_every_time_fails_at_the_cap_and_stays_failed(
    start_service: StartService,
) -> None:
    # What a job that runs its worker out of memory does, with BNLAB_MAX_WORKER_LOSSES=2.
    service = start_service(max_worker_losses="2")
    endless = {**SPEC, "training_batches": 1_000_000}
    experiment_id = service.client.post("/experiments", json=endless).json()["id"]
    worker = service.processes["worker-cpu"]
    for run in (1, 2):
        service.wait_for(experiment_id, lambda _, run=run: running_for(service, experiment_id, run))
        kill_tree(worker)
        worker = service.start_worker("cpu", name=f"worker-after-{run}")

    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "failed"
    assert experiment["error"] == (
        "its worker died 2 times while running it (killed, out of memory?); not retried again"
    )
    assert "failed: its worker died 2 times" in service.log("worker-after-2")
    row = experiment_row(service, experiment_id)  # run twice, never a third time
    assert (row["status"], row["lease_token"], row["worker_losses"]) == ("failed", 2, 2)


def running_for(service: Service, experiment_id: int, run: int) -> bool:
    """Whether the experiment is running, claimed `run` times so far (its lease token counts
    the claims)."""
    row = experiment_row(service, experiment_id)
    return row["status"] == "running" and row["lease_token"] == run
