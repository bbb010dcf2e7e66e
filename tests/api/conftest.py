"""API-layer fixtures: an app on a fresh migrated SQLite file and the real filesystem broker, both
under tmp_path, and helpers that put experiments, curve points and checkpoints in the database
the way a worker would."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from bnlab.api.main import create_app
from bnlab.models.checkpoint import save_net
from bnlab.models.network import Architecture, NetStack, initial_weights
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.db import make_engine, make_sessionmaker
from bnlab.store.migrate import upgrade
from bnlab.store.tables import Experiment, utc_now
from bnlab.vocabulary import TERMINAL

# Small enough to build in milliseconds; weights large enough that different images get
# clearly different answers.
ARCH = Architecture(activation="relu", hidden_layers=(32, 32))
WEIGHT_STD = 0.3


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "database_url": database_url,
        "broker_url": "filesystem://",  # the embedded broker, for real: message files on disk
        "checkpoint_dir": tmp_path / "checkpoints",
        "download": False,
    }
    return Settings(**(fields | overrides))


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    # kombu's filesystem transport keeps its exchange table in ./control: keep it in tmp_path.
    monkeypatch.chdir(tmp_path)
    upgrade(sqlite_url)
    return make_settings(tmp_path, sqlite_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def broker_down(tmp_path: Path, settings: Settings) -> Iterator[TestClient]:
    """A client of an app on `settings`' database whose broker is unreachable: nothing listens
    on port 1."""
    down = make_settings(tmp_path, settings.database_url, broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(down)) as client:
        yield client


@pytest.fixture
def unmigrated(tmp_path: Path, settings: Settings) -> Iterator[TestClient]:
    """A client of an app whose database file has no tables: it was never migrated."""
    url = f"sqlite:///{tmp_path / 'unmigrated.db'}"
    try:
        with TestClient(create_app(make_settings(tmp_path, url))) as client:
            yield client
    finally:
        make_engine(url).dispose()  # its pooled connections closed before tmp_path goes


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    with make_sessionmaker(settings.database_url)() as session:
        yield session


def add_experiment(session: Session, status: str = "queued", **spec: Any) -> Experiment:
    """An experiment as the API stores it, then moved to `status` as a worker would."""
    valid = ExperimentSpec(**({"training_batches": 200, "batches_per_sample": 50} | spec))
    experiment = queries.create_experiment(
        session, valid.model_dump(), queue=valid.device, total_steps=valid.training_batches
    )
    experiment.status = status
    if status != "queued":
        experiment.started_at = utc_now()
    if status in TERMINAL:
        experiment.finished_at = utc_now()
    session.commit()
    return experiment


def add_checkpoints(session: Session, experiment: Experiment, folder: Path) -> dict[str, Path]:
    """Both variants' nets, from the same initial weights as the trainer makes them, saved and
    registered as the worker does."""
    weights = initial_weights(ARCH, WEIGHT_STD, seed=3)
    paths = {}
    for variant in ("plain", "bn"):
        stack = NetStack(ARCH, variant, [weights])
        path = folder / f"experiment-{experiment.id}" / f"{variant}.safetensors"
        sha256, size = save_net(path, stack.net_state(0), variant=variant, arch=ARCH, step=200)
        run = queries.run_of(experiment, variant)
        queries.add_checkpoint(session, run, 200, str(path), sha256, size)
        paths[variant] = path
    session.commit()
    return paths


def tamper(path: Path) -> None:
    """One byte of the file changed: its sha256 no longer matches the recorded one."""
    tampered = bytearray(path.read_bytes())
    tampered[-1] ^= 0xFF  # one weight's last byte
    path.write_bytes(bytes(tampered))
