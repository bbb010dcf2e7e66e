"""The service as a user runs it: `bnlab migrate`, a real `bnlab worker` process and `bnlab api`
served by uvicorn over real HTTP, on one of two stacks:

- embedded: SQLite file and kombu's filesystem broker (what `bnlab up` runs);
- redis-postgres: PostgreSQL and Redis (what docker compose runs).
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


@dataclass
class Service:
    client: httpx.Client
    env: dict[str, str]
    processes: dict[str, subprocess.Popen]
    logs: Path

    def start_worker(self, queue: str = "cpu") -> subprocess.Popen:
        process = _spawn(["worker", "--queue", queue], self.env, self.logs / f"worker-{queue}.log")
        self.processes[f"worker-{queue}"] = process
        return process

    def wait_for(
        self, experiment_id: int, done: Callable[[dict], bool], timeout: float = 120
    ) -> dict:
        """Poll GET /experiments/{id} until `done(experiment)`; fail with the logs if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            experiment = self.client.get(f"/experiments/{experiment_id}").json()
            if done(experiment):
                return experiment
            time.sleep(0.2)
        pytest.fail(f"experiment {experiment_id} stuck: {experiment}\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(self.logs.glob("*.log"))
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bnlab.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.fixture(scope="module", params=["embedded", "redis-postgres"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, idx_data_dir: Path
) -> Iterator[Service]:
    """One service per stack and test module; its tests' experiments don't share anything."""
    tmp_path = tmp_path_factory.mktemp(f"service-{request.param}")
    port = _free_port()
    env = {
        **os.environ,
        "BNLAB_STATE_DIR": str(tmp_path / "state"),
        "BNLAB_DATA_DIR": str(idx_data_dir),
        "BNLAB_DOWNLOAD": "false",
        "BNLAB_PORT": str(port),
        "BNLAB_WORKER_HEARTBEAT_SECONDS": "0.5",
    }
    if request.param == "redis-postgres":
        env["BNLAB_DATABASE_URL"] = request.getfixturevalue("module_postgres_url")
        env["BNLAB_BROKER_URL"] = request.getfixturevalue("module_redis_url")
    logs = tmp_path / "logs"
    logs.mkdir()
    subprocess.run(
        [sys.executable, "-m", "bnlab.cli", "migrate"], env=env, check=True, capture_output=True
    )
    service = Service(httpx.Client(base_url=f"http://127.0.0.1:{port}"), env, {}, logs)
    service.processes["api"] = _spawn(["api"], env, logs / "api.log")
    service.start_worker("cpu")
    try:
        _wait_until_ready(service)
        yield service
    finally:
        for process in service.processes.values():
            process.terminate()
        for process in service.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        service.client.close()


def _wait_until_ready(service: Service, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = service.client.get("/health")
            if health.status_code == 200 and health.json()["workers"]["cpu"] >= 1:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the service did not come up\n{service.log_tail()}")
