"""Property-based requests from the OpenAPI document (schemathesis): valid and invalid inputs to
every operation, against the real app on a migrated SQLite file and the filesystem broker.
No answer is a 5xx; every 4xx is JSON with a non-empty `detail` a person can read.

Bounded: SCHEMATHESIS_EXAMPLES examples per operation (default 25; under a minute on 2 shared
cores); raise it for a longer hunt (200 found nothing more, in about the same time).
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from bnlab.api.main import create_app
from bnlab.store.db import make_engine, make_sessionmaker
from bnlab.store.migrate import upgrade
from tests.api.conftest import add_checkpoints, add_experiment, make_settings
from tests.idx import write_idx_dataset

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
# The event stream of a queued experiment lasts until it finishes, and nothing runs here.
STREAMING = r"/events$"


def served_app() -> tuple[FastAPI, Path]:
    """The app on a fresh migrated SQLite file, with experiment 1 succeeded and served, so that
    /predict, the downloads and the study's demos can answer 200 too. Made at import:
    schemathesis reads the OpenAPI document to generate the tests (its fixture-based loader
    breaks on pytest 9)."""
    folder = Path(tempfile.mkdtemp(prefix="bnlab-schemathesis-"))
    url = f"sqlite:///{folder / 'bnlab.db'}"
    upgrade(url)
    with make_sessionmaker(url)() as session:
        served = add_experiment(session, status="succeeded", validation_size=200)
        add_checkpoints(session, served, folder / "checkpoints")
    # The study's endpoints read the experiment's dataset: a small one, on disk.
    data = write_idx_dataset(folder / "data")
    return create_app(make_settings(folder, url, data_dir=data)), folder


APP, FOLDER = served_app()
CONFIG = schemathesis.Config.from_dict({"generation": {"mode": "all", "max-examples": EXAMPLES}})
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG).exclude(
    path_regex=STREAMING
)


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    make_engine(APP.state.settings.database_url).dispose()
    shutil.rmtree(FOLDER, ignore_errors=True)


def every_4xx_says_why(ctx: object, response: schemathesis.Response, case: object) -> None:
    if 400 <= response.status_code < 500:
        try:
            detail = response.json().get("detail")
        except ValueError:
            raise AssertionError(f"{response.status_code} without a JSON body") from None
        assert detail, f"{response.status_code} without a detail: {response.text[:200]}"


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_a_5xx_and_every_4xx_says_why(case: schemathesis.Case) -> None:
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error, every_4xx_says_why])
