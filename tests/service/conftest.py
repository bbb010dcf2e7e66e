"""The service as a user runs it: `bnlab migrate`, a real `bnlab worker` process and `bnlab api`
served by uvicorn over real HTTP, on one of two stacks:

- embedded: SQLite file and kombu's filesystem broker (what `bnlab up` runs);
- redis-postgres: PostgreSQL and Redis (what docker compose runs).
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# A small experiment on the stand-in data, the service tests' common one; sampled at STEPS.
SMALL = {
    "training_batches": 300,
    "batches_per_sample": 50,
    "validation_size": 200,
    "learning_rate": 0.5,
    "seed": 3,
}
STEPS = [0, 50, 100, 150, 200, 250, 300]


@dataclass
class Service:
    client: httpx.Client
    env: dict[str, str]
    processes: dict[str, subprocess.Popen]
    logs: Path

    def start_worker(self, queue: str = "cpu", name: str | None = None) -> subprocess.Popen:
        """A `bnlab worker` process; `name` (default `worker-<queue>`) names it in `processes`
        and its log file, so that several workers can run side by side."""
        name = name or f"worker-{queue}"
        process = _spawn(["worker", "--queue", queue], self.env, self.logs / f"{name}.log")
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def wait_for(
        self, experiment_id: int, done: Callable[[dict], bool], timeout: float = 120
    ) -> dict:
        """Poll GET /experiments/{id} until `done(experiment)`; fail with the logs if not."""
        return self.poll(f"/experiments/{experiment_id}", done, timeout)

    def poll(self, path: str, done: Callable[[dict], bool], timeout: float) -> dict:
        """GET `path` until `done(its answer)`; fail with the answer and the logs if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.client.get(path).json()
            if done(answer):
                return answer
            time.sleep(0.2)
        pytest.fail(f"{path} stuck: {answer}\n{self.log_tail()}")

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
            [sys.executable, "-m", "bnlab.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture(scope="module", params=["embedded", "redis-postgres"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, idx_data_dir: Path
) -> Iterator[Service]:
    """One service per stack and test module; its tests' experiments don't share anything."""
    tmp_path = tmp_path_factory.mktemp(f"service-{request.param}")
    env = service_env(tmp_path, idx_data_dir)
    if request.param == "redis-postgres":
        env["BNLAB_DATABASE_URL"] = request.getfixturevalue("module_postgres_url")
        env["BNLAB_BROKER_URL"] = request.getfixturevalue("module_redis_url")
    with running_service(tmp_path, env) as service:
        yield service


def service_env(tmp_path: Path, idx_data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of the embedded stack in `tmp_path` on a free port; `settings` adds
    or overrides BNLAB_* variables (`database_url="..."` sets BNLAB_DATABASE_URL)."""
    env = {
        **os.environ,
        "BNLAB_STATE_DIR": str(tmp_path / "state"),
        "BNLAB_DATA_DIR": str(idx_data_dir),
        "BNLAB_DOWNLOAD": "false",
        "BNLAB_PORT": str(_free_port()),
        "BNLAB_WORKER_HEARTBEAT_SECONDS": "0.5",
    }
    env.update({f"BNLAB_{name.upper()}": value for name, value in settings.items()})
    return env


@contextmanager
def running_service(tmp_path: Path, env: dict[str, str], workers: int = 1) -> Iterator[Service]:
    """`bnlab migrate`, then `bnlab api` and `workers` cpu workers (`worker-1`, ...) as real
    processes; every process still running at the end is stopped."""
    logs = tmp_path / "logs"
    logs.mkdir()
    subprocess.run(
        [sys.executable, "-m", "bnlab.cli", "migrate"], env=env, check=True, capture_output=True
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{env['BNLAB_PORT']}")
    service = Service(client, env, {}, logs)
    service.processes["api"] = _spawn(["api"], env, logs / "api.log")
    for number in range(1, workers + 1):
        service.start_worker("cpu", name=f"worker-{number}" if workers > 1 else None)
    try:
        _wait_until_ready(service, workers)
        yield service
    finally:
        for process in service.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in service.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        client.close()


@contextmanager
def running_up(tmp_path: Path, env: dict[str, str]) -> Iterator[Service]:
    """The real `bnlab up` (API and its supervised worker in one process tree), logging to
    `up.log`; SIGTERMed at the end, which must stop all of it cleanly (exit 0)."""
    client = httpx.Client(base_url=f"http://127.0.0.1:{env['BNLAB_PORT']}")
    with open(tmp_path / "up.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bnlab.cli", "up"], env=env, stdout=log, stderr=log
        )
    service = Service(client, env, {"up": process}, tmp_path)
    try:
        _wait_until_ready(service)
        yield service
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        client.close()


def _wait_until_ready(service: Service, workers: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = service.client.get("/health")
            if health.status_code == 200 and health.json()["workers"]["cpu"] >= workers:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the service did not come up\n{service.log_tail()}")
