"""BNLAB_WORKER_NICE: training runs at a lower CPU priority than the API, so that on a busy
machine the API still gets a core whenever a request comes in. Checked on the real processes,
every thread of them, after a job has trained (torch's threads exist by then), both as the
service tests and docker compose run it (`bnlab api` and `bnlab worker`) and as `bnlab up`."""

import os
from pathlib import Path

import psutil
import pytest
from pydantic import ValidationError

from bnlab.settings import Settings
from tests.service.conftest import SMALL, Service, running_service, running_up, service_env

pytestmark = pytest.mark.service

# Not the default (10), so a worker that ignored the setting would show.
NICENESS = 7


def niceness_of_every_thread(process: psutil.Process) -> set[int]:
    # Linux keeps a niceness per thread; psutil reads a thread's like a process's.
    return {psutil.Process(thread.id).nice() for thread in process.threads()}


def assert_training_yields_to_the_api(
    service: Service, api: psutil.Process, worker: psutil.Process
) -> None:
    """After a job has trained: the worker and its pool process (which ran the job) at
    NICENESS, thread for thread; the API at the niceness it was started with (this test's)."""
    posted = service.client.post("/experiments", json=SMALL).json()
    experiment = service.wait_for(posted["id"], lambda e: e["status"] == "succeeded")
    assert experiment["progress"]["step"] == SMALL["training_batches"]

    pool = worker.children()
    assert len(pool) == 1, pool
    assert niceness_of_every_thread(worker) == {NICENESS}
    assert niceness_of_every_thread(pool[0]) == {NICENESS}
    assert niceness_of_every_thread(api) == {os.nice(0)} != {NICENESS}


def test_bnlab_worker_and_its_pool_train_at_the_configured_niceness(
    tmp_path: Path, idx_data_dir: Path
) -> None:
    env = service_env(tmp_path, idx_data_dir, worker_nice=str(NICENESS))
    with running_service(tmp_path, env) as service:
        api, worker = (
            psutil.Process(service.processes[name].pid) for name in ("api", "worker-cpu")
        )
        assert_training_yields_to_the_api(service, api, worker)
        assert f"training at niceness {NICENESS}" in service.log("worker-cpu")


def test_bnlab_up_trains_at_the_configured_niceness_and_serves_the_api_at_its_own(
    tmp_path: Path, idx_data_dir: Path
) -> None:
    env = service_env(tmp_path, idx_data_dir, worker_nice=str(NICENESS))
    with running_up(tmp_path, env) as service:
        # The API runs in `up`'s own process, its one child is the worker.
        api = psutil.Process(service.processes["up"].pid)
        (worker,) = api.children()
        assert_training_yields_to_the_api(service, api, worker)
        assert f"training at niceness {NICENESS}" in service.log("up")


@pytest.mark.parametrize("niceness", [-1, 20])
def test_a_niceness_outside_0_to_19_is_refused_naming_the_setting(niceness: int) -> None:
    with pytest.raises(ValidationError, match="worker_nice"):
        Settings(worker_nice=niceness)
