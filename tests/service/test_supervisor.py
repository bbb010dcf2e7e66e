"""`bnlab up` supervises its worker: a worker SIGKILLed is started again, the job it was running
resumes and the next experiment trains; one that keeps dying is left down, and /health answers
503 saying why. Real processes throughout: the real `bnlab up`, its real worker, real signals."""

import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bnlab.api.main import create_app
from bnlab.settings import Settings
from bnlab.store.db import make_engine, make_sessionmaker
from bnlab.store.migrate import upgrade
from bnlab.store.tables import Worker
from bnlab.supervisor import MAX_EXITS, Supervisor, given_up
from tests.api.conftest import make_settings
from tests.faults.conftest import FAULT_SETTINGS, SPEC, assert_complete_curve, finished
from tests.service.conftest import SMALL, Service, running_up, service_env

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 90) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def up(tmp_path: Path, idx_data_dir: Path) -> Iterator[Service]:
    """The real `bnlab up` on a state dir of its own; its log is `up.log`. A dead job's lease
    lapses after 3 s (FAULT_SETTINGS)."""
    env = service_env(tmp_path, idx_data_dir, **FAULT_SETTINGS)
    with running_up(tmp_path, env) as service:
        yield service


def the_worker(service: Service, not_pid: int | None = None) -> psutil.Process:
    """`up`'s worker process (its one child), once it is another than `not_pid`."""

    def worker() -> psutil.Process | None:
        children = psutil.Process(service.processes["up"].pid).children()
        fresh = [child for child in children if child.pid != not_pid]
        return fresh[0] if fresh else None

    return wait_until(worker, f"a new worker process\n{service.log_tail()}")


@pytest.mark.service
def test_a_killed_worker_is_started_again_its_job_resumes_and_the_next_one_trains(
    up: Service,
) -> None:
    first = the_worker(up)
    # Long enough that it is still running when its worker is killed.
    spec = {**SPEC, "training_batches": 1200}
    running = up.client.post("/experiments", json=spec).json()["id"]
    up.wait_for(running, lambda e: e["progress"]["step"] >= 100)
    pool = first.children()
    first.send_signal(signal.SIGKILL)

    second = the_worker(up, not_pid=first.pid)
    log = up.log("up")
    assert f"the cpu worker (pid {first.pid}) killed by SIGKILL; starting it again" in log
    assert f"started the cpu worker again (pid {second.pid})" in log

    def pool_gone() -> bool | None:
        alive = [p for p in pool if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        return None if alive else True

    # The dead worker's pool process, which ran the job, went with it.
    wait_until(pool_gone, f"the old pool process to go\n{up.log_tail()}")
    # The new worker heart-beats under its own node name (bnlab-cpu-<pid>@host).
    sessions = make_sessionmaker(Settings(state_dir=Path(up.env["BNLAB_STATE_DIR"])).database_url)

    def beating() -> bool | None:
        with sessions() as session:
            hostnames = session.scalars(select(Worker.hostname)).all()
        return True if any(f"-{second.pid}@" in name for name in hostnames) else None

    wait_until(beating, f"the new worker's heartbeat\n{up.log_tail()}")
    health = up.client.get("/health")
    assert health.status_code == 200 and health.json()["workers"]["cpu"] >= 1

    resumed = up.wait_for(running, finished)
    assert resumed["status"] == "succeeded", resumed["error"]
    assert re.search(r"resumes at step [1-9]", up.log("up"))
    assert_complete_curve(up, running, spec)
    posted = up.client.post("/experiments", json=SMALL).json()
    experiment = up.wait_for(posted["id"], finished)
    assert experiment["status"] == "succeeded", experiment["error"]


@pytest.mark.service
def test_a_worker_killed_again_and_again_is_left_down_and_health_says_why(up: Service) -> None:
    killed: int | None = None
    for _ in range(MAX_EXITS):
        worker = the_worker(up, not_pid=killed)
        worker.send_signal(signal.SIGKILL)
        killed = worker.pid

    def unhealthy() -> httpx.Response | None:
        answer = up.client.get("/health")
        return answer if answer.status_code == 503 else None

    health = wait_until(unhealthy, f"/health to answer 503\n{up.log_tail()}")
    reason = health.json()["worker"]
    assert reason.startswith(f"the cpu worker exited {MAX_EXITS} times in 2 minutes")
    assert "last: killed by SIGKILL" in reason and "stopped restarting" in reason
    assert reason in up.log("up")
    assert psutil.Process(up.processes["up"].pid).children() == []
    assert health.json()["database"] == "ok" and health.json()["broker"] == "ok"


def test_a_worker_that_exits_at_once_is_restarted_with_backoff_then_given_up_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # kombu's filesystem transport writes ./control
    database_url = f"sqlite:///{tmp_path / 'bnlab.db'}"
    upgrade(database_url)
    settings = make_settings(tmp_path, database_url)
    supervisor = Supervisor(
        [sys.executable, "-c", "import sys; sys.exit(3)"], "cpu", settings.state_dir
    )
    caplog.set_level(logging.INFO, logger="bnlab.supervisor")
    supervisor.start()
    try:
        reason = wait_until(lambda: given_up(settings.state_dir), "the supervisor to give up")
        with TestClient(create_app(settings)) as client:
            health = client.get("/health")
    finally:
        supervisor.stop()
        make_engine(database_url).dispose()

    assert reason == (
        f"the cpu worker exited {MAX_EXITS} times in 2 minutes (last: exited with status 3); "
        "bnlab up stopped restarting it — see the log"
    )
    messages = [record.getMessage() for record in caplog.records]
    waits = [m.split("starting it again in ")[1] for m in messages if "starting it again" in m]
    assert waits == ["1 s", "2 s", "4 s", "8 s"]
    assert sum("started the cpu worker again" in m for m in messages) == MAX_EXITS - 1
    assert messages[-1] == reason
    assert health.status_code == 503 and health.headers["Retry-After"]
    assert health.json()["worker"] == reason
    assert health.json()["database"] == "ok" and health.json()["broker"] == "ok"
    assert given_up(settings.state_dir) is None  # stop() clears it: no `up`, nothing to report
