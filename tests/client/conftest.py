"""One real service for the client's tests and the example notebook: `bnlab api` and a `bnlab
worker` on the embedded stack, the small IDX stand-in data (it is the same over HTTP on
PostgreSQL and Redis, which tests/service covers)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from bnlab.client import Client
from tests.service.conftest import Service, running_service, service_env


@pytest.fixture(scope="package")
def service(tmp_path_factory: pytest.TempPathFactory, idx_data_dir: Path) -> Iterator[Service]:
    tmp_path = tmp_path_factory.mktemp("client")
    with running_service(tmp_path, service_env(tmp_path, idx_data_dir)) as service:
        yield service


@pytest.fixture(scope="package")
def url(service: Service) -> str:
    return str(service.client.base_url).rstrip("/")


@pytest.fixture(scope="package")
def client(url: str) -> Iterator[Client]:
    with Client(url) as client:
        yield client
