"""Fault tests: the service of tests/service, with processes killed, frozen and restarted.

Each test gets Redis and PostgreSQL servers of its own on spare ports (started here from the
binaries on the machine), so that killing and restarting them never disturbs the shared ones:
a private redis-server per test, and a private PostgreSQL cluster per session with a fresh
database per test. PostgreSQL refuses to run as root: as root, the cluster belongs to the
`postgres` user and its commands run through `runuser`.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from safetensors.torch import load as load_safetensors
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from torch import Tensor

from bnlab.jobs import make_celery, send_training_job
from bnlab.models.data import load_splits
from bnlab.models.trainer import Cell, build_trainer
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from tests.service.conftest import Service, running_service, service_env

# Small enough to run in seconds, long enough (31 sample points) to be hit mid-job.
SPEC = {
    "training_batches": 600,
    "batches_per_sample": 20,
    "validation_size": 200,
    "learning_rate": 0.5,
    "seed": 3,
}
# The settings every fault test runs with: a dead job's worker is given up after 3 s.
FAULT_SETTINGS = {"lease_timeout_seconds": "3", "requeue_after_seconds": "3"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


@dataclass
class RedisServer:
    """A redis-server of our own, without persistence: a restart loses everything in it.
    It listens on `host` only (another address of this machine for other network namespaces)."""

    folder: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    *("redis-server", "--bind", self.host, "--port", str(self.port)),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
                    # Off loopback it would refuse everyone: it has no password.
                    *("--protected-mode", "yes" if self.host == "127.0.0.1" else "no"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.host)

    def kill(self) -> None:
        """SIGKILL: what was queued in it is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of our own: trust authentication, superuser `postgres`, listening
    on `host` only (trusting the clients of that address's subnet when it is not loopback)."""

    bin: Path
    folder: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=_free_port)

    def _run(self, *command: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *command], check=True, capture_output=True)

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            *("-D", str(self.folder / "data"), "-U", "postgres", "--auth=trust", "--no-sync"),
        )
        if self.host != "127.0.0.1":
            with open(self.folder / "data" / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses={self.host} -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"),
            *("-D", str(self.folder / "data"), "-l", str(self.folder / "postgres.log")),
            *("-o", options, "-w", "start"),
        )

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash: no checkpoint, every connection cut."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", mode, "stop")

    def create_database(self) -> str:
        name = f"bnlab_{uuid.uuid4().hex}"
        admin = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@{self.host}:{self.port}/{database}"


@contextmanager
def running_postgres(host: str = "127.0.0.1") -> Iterator[PostgresServer]:
    """A fresh cluster listening on `host`, started, and removed at the end."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not binaries:
        pytest.skip("PostgreSQL's server binaries are not under /usr/lib/postgresql/*/bin")
    folder = Path(tempfile.mkdtemp(prefix="bnlab-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = PostgresServer(binaries[-1].parent, folder, host)
    try:
        server.init()
        server.start()
        yield server
        server.stop("immediate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["embedded", "redis-postgres"])
def stack(request: pytest.FixtureRequest) -> str:
    """The same test on the embedded default and on Redis + PostgreSQL (private servers)."""
    return str(request.param)


StartService = Callable[..., Service]


@pytest.fixture
def start_service(
    stack: str, tmp_path: Path, idx_data_dir: Path, request: pytest.FixtureRequest
) -> Iterator[StartService]:
    """`start_service(workers=1, **settings)`: the service on this test's stack with
    FAULT_SETTINGS and `settings` (BNLAB_* by their lower-case names); stopped at the end."""
    if stack == "redis-postgres":  # set up first, so they are stopped after the service
        postgres: PostgresServer = request.getfixturevalue("private_postgres")
        redis: RedisServer = request.getfixturevalue("private_redis")
    with ExitStack() as cleanup:

        def start(workers: int = 1, **settings: str) -> Service:
            if stack == "redis-postgres":
                settings = {
                    "database_url": postgres.create_database(),
                    "broker_url": redis.url,
                    **settings,
                }
            env = service_env(tmp_path, idx_data_dir, **{**FAULT_SETTINGS, **settings})
            return cleanup.enter_context(running_service(tmp_path, env, workers))

        yield start


# -- what the tests do to processes and what they check ---------------------------------------


def kill_tree(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """`sig` to a worker and to its pool processes, as a crash of its machine would."""
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in family:
        with suppress(psutil.NoSuchProcess):
            member.send_signal(sig)
    process.wait(timeout=30)


def pool_process(process: subprocess.Popen) -> psutil.Process:
    """The prefork pool process of a worker started with concurrency 1: where its job runs."""
    children = psutil.Process(process.pid).children()
    assert len(children) == 1, children
    return children[0]


def freeze_between_transactions(service: Service, process: psutil.Process) -> None:
    """SIGSTOP `process` at a moment it holds no database lock. Frozen inside a transaction it
    would block everyone else (SQLite's write lock, a PostgreSQL row lock) until it woke up,
    and the test would show that instead of a lost lease."""
    for _ in range(100):
        process.send_signal(signal.SIGSTOP)
        if not _in_transaction(service, process):
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    pytest.fail("the job was inside a transaction at every try")


def _in_transaction(service: Service, process: psutil.Process) -> bool:
    url = make_url(database_url(service))
    if url.get_backend_name() == "sqlite":
        # Someone else (anyone) holds the write lock: try again, to be sure it is not ours.
        engine = create_engine(url, connect_args={"timeout": 0.05})
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                connection.exec_driver_sql("ROLLBACK")
            return False
        except OperationalError:
            return True
        finally:
            engine.dispose()
    ports = [
        c.laddr.port for c in process.net_connections("tcp") if c.raddr and c.raddr.port == url.port
    ]
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            states = connection.execute(
                text("SELECT state FROM pg_stat_activity WHERE client_port = ANY(:ports)"),
                {"ports": ports},
            ).scalars()
            return any(state != "idle" for state in states)
    finally:
        engine.dispose()


def service_settings(service: Service) -> Settings:
    """The settings the service's processes read from their environment."""
    prefix = "BNLAB_"
    values = {k[len(prefix) :].lower(): v for k, v in service.env.items() if k.startswith(prefix)}
    return Settings(**values)


def database_url(service: Service) -> str:
    return service_settings(service).database_url


def enqueue_again(service: Service, experiment_id: int) -> None:
    """What an operator re-enqueueing a job by hand does: one more message for it."""
    send_training_job(make_celery(service_settings(service)), [experiment_id], "cpu")


def experiment_row(service: Service, experiment_id: int) -> dict[str, Any]:
    """The experiment's row as stored (its worker and lease token are not in the API)."""
    engine = create_engine(database_url(service))
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT * FROM experiments WHERE id = :id"), {"id": experiment_id}
            ).one()
            return dict(row._mapping)
    finally:
        engine.dispose()


def finished(experiment: dict) -> bool:
    return experiment["status"] in ("succeeded", "failed", "cancelled")


def expected_steps(spec: dict) -> list[int]:
    return list(range(0, spec["training_batches"] + 1, spec["batches_per_sample"]))


def curve_steps(service: Service, experiment_id: int) -> dict[str, list[int]]:
    series = service.client.get(f"/experiments/{experiment_id}/curve").json()["series"]
    return {variant: series[variant]["step"] for variant in ("plain", "bn")}


def checkpoint(service: Service, experiment_id: int, variant: str) -> dict[str, Tensor]:
    response = service.client.get(f"/experiments/{experiment_id}/checkpoints/{variant}")
    assert response.status_code == 200, response.text
    return load_safetensors(response.content)


_uninterrupted: dict[str, dict[str, dict[str, Tensor]]] = {}


def uninterrupted_weights(
    spec: dict, data_dir: Path, device: str = "cpu"
) -> dict[str, dict[str, Tensor]]:
    """Both nets after the same spec trained in one go, here, with the worker's engine."""
    key = repr((sorted(spec.items()), device))
    if key not in _uninterrupted:
        parsed = ExperimentSpec.model_validate(spec)
        splits = load_splits(parsed.dataset, data_dir, False, parsed.validation_size)
        trainer = build_trainer(
            parsed.architecture(),
            [Cell("lone", parsed.training())],
            splits,
            torch.device(device),
            Settings().bn_impl,
        )
        assert trainer.run(lambda sample: None) == "finished"
        _uninterrupted[key] = {
            v: {name: t.cpu() for name, t in trainer.net_state("lone", v).items()}
            for v in ("plain", "bn")
        }
    return _uninterrupted[key]


def stop_gracefully(worker: subprocess.Popen) -> None:
    """SIGTERM a worker: it exits 0 and leaves no pool process behind."""
    family = psutil.Process(worker.pid).children(recursive=True)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    assert not [p for p in family if p.is_running()], "a pool process outlived its worker"


def assert_handed_back(service: Service, experiment_id: int, spec: dict) -> int:
    """The experiment is queued again with its curve so far and its training state saved;
    returns the step it will resume at."""
    handed_back = service.client.get(f"/experiments/{experiment_id}").json()
    assert handed_back["status"] == "queued", handed_back
    step = handed_back["progress"]["step"]
    assert 100 <= step < spec["training_batches"]
    every = spec["batches_per_sample"]
    assert curve_steps(service, experiment_id)["bn"] == list(range(0, step + 1, every))
    state = experiment_row(service, experiment_id)["state_location"]  # under its lease's folder
    folder = Path(service_settings(service).checkpoint_dir) / f"experiment-{experiment_id}"
    assert state.startswith(f"{folder}/lease-") and Path(state).is_file(), state
    return step


def assert_same_weights(service: Service, experiment_id: int, spec: dict, data_dir: Path) -> None:
    """The served checkpoints hold exactly the tensors of an uninterrupted run (a diverged
    net's NaNs in the same places)."""
    reference = uninterrupted_weights(spec, data_dir)
    for variant in ("plain", "bn"):
        served = checkpoint(service, experiment_id, variant)
        assert served.keys() == reference[variant].keys()
        different = [
            name
            for name in served
            if not torch.equal(served[name].nan_to_num(), reference[variant][name].nan_to_num())
            or not torch.equal(served[name].isnan(), reference[variant][name].isnan())
        ]
        assert not different, f"{variant}: {different} differ from an uninterrupted run"


def assert_complete_curve(service: Service, experiment_id: int, spec: dict) -> None:
    """Every sample point exactly once, for both nets (a diverged net's until it diverged)."""
    results = service.client.get(f"/experiments/{experiment_id}").json()["results"]
    expected = {}
    for variant in ("plain", "bn"):
        diverged_at = results[variant]["diverged_at_step"] or spec["training_batches"] + 1
        expected[variant] = [step for step in expected_steps(spec) if step < diverged_at]
    assert curve_steps(service, experiment_id) == expected
