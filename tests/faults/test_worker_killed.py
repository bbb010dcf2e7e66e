"""A worker killed (SIGKILL, worker and pool process) in the middle of a job, on both stacks.

The embedded file broker forgets the message of a killed worker, and Redis gives it back only
after its visibility timeout (an hour): a new worker must find the job from SQL alone (its
heartbeat stopped), resume it from its last sample point, and end with what an uninterrupted
run gives.
"""

import re
from pathlib import Path

import pytest

from tests.faults.conftest import (
    SPEC,
    StartService,
    assert_complete_curve,
    assert_same_weights,
    finished,
    kill_tree,
)

pytestmark = pytest.mark.service


def test_killed_worker_s_job_resumes_on_a_new_worker_and_ends_as_if_never_killed(
    start_service: StartService, idx_data_dir: Path
) -> None:
    service = start_service()
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]
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
    assert int(resumed.group(1)) >= at_kill["progress"]["step"] - SPEC["batches_per_sample"]
    assert_complete_curve(service, experiment_id, SPEC)
    assert_same_weights(service, experiment_id, SPEC, idx_data_dir)
