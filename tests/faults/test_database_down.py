"""The API while its PostgreSQL is down, and against one that never answers.

Every route that reads SQL answers 503 with `Retry-After` and a message a person can act on,
never a 500 or a connection cut off mid-answer; an event stream under way ends with an
`unavailable` event; once PostgreSQL is back every route answers as it did before. A server
that accepts connections but never answers (a hung host) costs a request the connect timeout,
not the operating system's TCP timeout.
"""

import functools
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError

from bnlab.api.deps import get_session
from bnlab.api.main import create_app
from bnlab.store.db import make_engine
from tests.api.conftest import make_settings
from tests.faults.conftest import SPEC, PostgresServer, StartService, finished
from tests.service.conftest import Service

pytestmark = pytest.mark.service

TOKEN = "a-token-for-the-outage"
UNREACHABLE = "the database is unreachable; retry shortly"
TINY = {**SPEC, "training_batches": 40}
# Operations that need no SQL: a net already in memory answers /predict, and a scrape says
# `bnlab_database_up 0` instead of failing.
WITHOUT_SQL = {("POST", "/predict"), ("GET", "/metrics")}

Operation = tuple[str, str]  # (method, path template), as the OpenAPI document names them


@pytest.mark.parametrize("stack", ["redis-postgres"])
def test_while_postgres_is_down_every_route_is_a_503_saying_so_and_after_it_answers_again(
    start_service: StartService, private_postgres: PostgresServer
) -> None:
    service = start_service(api_token=TOKEN)
    service.client.headers["Authorization"] = f"Bearer {TOKEN}"  # the middleware runs too
    service.client.timeout = httpx.Timeout(120)  # the plots and demos take a while on 2 cores
    ids = succeeded_experiment_and_cancelled_sweep(service)
    service.processes["worker-cpu"].terminate()  # from here on, the API alone
    service.processes["worker-cpu"].wait(timeout=30)
    waiting = service.client.post("/experiments", json=TINY).json()["id"]
    operations = every_operation(service)

    before = {operation: ask(service, operation, ids) for operation in operations}
    assert all(response.status_code < 500 for response in before.values()), before
    with service.client.stream("GET", f"/experiments/{waiting}/events") as stream:
        lines = stream.iter_lines()
        assert next_event(lines)[0] == "progress"
        with outage(private_postgres):
            # The stream polls SQL every 0.5 s: its next poll meets the outage.
            event, data = next_event(lines)
            assert event == "unavailable" and UNREACHABLE in data["detail"]
            assert list(lines) == []  # then it ends, cleanly
            during = {operation: ask(service, operation, ids) for operation in operations}

    for operation, response in during.items():
        if operation in WITHOUT_SQL:
            assert response.status_code == 200, (operation, response.text)
            continue
        assert response.status_code == 503, (operation, response.status_code, response.text)
        assert int(response.headers["Retry-After"]) > 0, operation
        if operation == ("GET", "/health"):
            assert response.json()["database"].startswith("unreachable"), response.text
        else:
            assert UNREACHABLE in response.json()["detail"], (operation, response.text)
    assert "bnlab_database_up 0.0" in during[("GET", "/metrics")].text

    after = {operation: ask(service, operation, ids) for operation in operations}
    assert {op: r.status_code for op, r in after.items()} == {
        op: r.status_code for op, r in before.items()
    }
    assert after[("GET", "/health")].json()["database"] == "ok"
    assert " 500 " not in service.log("api") and "Traceback" not in service.log("api")


@contextmanager
def outage(server: PostgresServer) -> Iterator[None]:
    """PostgreSQL crashed (every connection cut) for the block; started again after it, even
    when the block fails (the cluster serves the tests after this one)."""
    server.stop("immediate")
    try:
        yield
    finally:
        server.start()


def succeeded_experiment_and_cancelled_sweep(service: Service) -> dict[str, int]:
    """Rows for every route to find: an experiment with checkpoints, a sweep."""
    experiment_id = service.client.post("/experiments", json=TINY).json()["id"]
    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    sweep = service.client.post("/sweeps", json=sweep_body()).json()
    assert service.client.post(f"/sweeps/{sweep['id']}/cancel").status_code == 200
    # A second experiment, for /compare: the sweep's first cell.
    cell_id = sweep["cells"][0]["id"]
    return {"experiment_id": experiment_id, "sweep_id": sweep["id"], "cell_id": cell_id}


def sweep_body() -> dict[str, Any]:
    base = {field: value for field, value in TINY.items() if field != "seed"}
    return {"base": base, "grid": {"seed": [1, 2]}}


def every_operation(service: Service) -> list[Operation]:
    """Every operation the API documents: a route added later is covered without a word here."""
    paths = service.client.get("/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, methods in paths.items() for method in methods]


def ask(service: Service, operation: Operation, ids: dict[str, int]) -> httpx.Response:
    method, template = operation
    path = template.format(variant="bn", **ids)
    if template == "/predict":
        # Version 1 pinned: a recalibration (another operation) makes a new latest version.
        query = {"experiment_id": ids["experiment_id"], "version": 1}
        return service.client.post(path, params=query, json={"pixels": [0.0] * 784})
    if template.startswith("/compare"):
        query = {"experiments": f"{ids['experiment_id']},{ids['cell_id']}"}
        return service.client.get(path, params=query)
    if method == "PATCH":
        return service.client.patch(path, json={"tags": ["outage"]})
    if template == "/experiments/import":
        return service.client.post(path, files={"bundle": ("b.zip", bundle_of(service, ids))})
    bodies = {
        "/experiments": TINY,
        "/sweeps": sweep_body(),
        "/experiments/{experiment_id}/fork": {"step": 0, "changes": {}},
    }
    if method == "POST" and template in bodies:
        return service.client.post(path, json=bodies[template])
    # An event stream of a finished row ends by itself: the answer is read to its end.
    return service.client.request(method, path)


@functools.cache
def _bundle(client: httpx.Client, experiment_id: int) -> bytes:
    response = client.get(f"/experiments/{experiment_id}/bundle")
    assert response.status_code == 200, response.text
    return response.content


def bundle_of(service: Service, ids: dict[str, int]) -> bytes:
    """The succeeded experiment's bundle, fetched once, before the outage."""
    return _bundle(service.client, ids["experiment_id"])


def next_event(lines: Iterator[str]) -> tuple[str, Any]:
    """The next server-sent event's name and data (JSON) from a stream's lines."""
    event, data = "message", None
    for line in lines:
        if line.startswith("event:"):
            event = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data = json.loads(line.partition(":")[2])
        elif not line and data is not None:
            return event, data
    pytest.fail(f"the stream ended before an event (last: {event})")


# -- a server that accepts connections and never answers -------------------------------------


@pytest.fixture
def hung_server() -> Iterator[int]:
    """A port whose listener never accepts: the kernel completes the TCP handshake, and a
    client's first message waits for an answer that never comes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_a_postgres_that_never_answers_is_a_503_not_a_hung_request(
    hung_server: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # kombu's filesystem transport keeps files in ./control
    url = f"postgresql+psycopg2://bnlab@127.0.0.1:{hung_server}/bnlab"
    answers: list[httpx.Response] = []
    with TestClient(create_app(make_settings(tmp_path, url))) as client:
        asking = threading.Thread(target=lambda: answers.append(client.get("/experiments")))
        asking.start()
        asking.join(timeout=300)  # only so that a hang fails the test instead of the suite
        hung = asking.is_alive()
        make_engine(url).dispose()
    assert not hung, "GET /experiments still waits for a server that never answers"
    assert answers[0].status_code == 503
    assert "timeout expired" in answers[0].json()["detail"]


@pytest.mark.parametrize(("query", "timeout"), [("", 5), ("?connect_timeout=2", "2")])
def test_libpq_is_given_the_connect_timeout_or_the_one_in_the_database_url(
    hung_server: int, query: str, timeout: int | str
) -> None:
    engine = make_engine(f"postgresql+psycopg2://bnlab@127.0.0.1:{hung_server}/bnlab{query}")
    given: dict[str, Any] = {}
    event.listen(engine, "do_connect", lambda _d, _r, _a, parameters: given.update(parameters))
    with pytest.raises(OperationalError, match="timeout expired"):
        engine.connect()
    engine.dispose()
    assert given["connect_timeout"] == timeout


def test_a_request_s_session_whose_connection_died_after_the_answer_closes_quietly(
    postgres_url: str, tmp_path: Path
) -> None:
    # The session closes after the answer went out; a rollback on a connection PostgreSQL cut
    # meanwhile used to raise there, and the client's answer was cut off mid-stream.
    request_session = get_session(make_settings(tmp_path, postgres_url))
    session = next(request_session)
    backend = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    admin = create_engine(postgres_url)
    with admin.connect() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    admin.dispose()
    with pytest.raises(StopIteration):  # the teardown ran, and raised nothing
        next(request_session)


def test_a_postgres_database_bnlab_migrate_has_not_set_up_is_a_503_saying_to_run_it(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL reports a missing table as a ProgrammingError (SQLite: an OperationalError).
    monkeypatch.chdir(tmp_path)
    with TestClient(create_app(make_settings(tmp_path, postgres_url))) as client:
        response = client.get("/experiments")
    assert response.status_code == 503
    assert "run `bnlab migrate`" in response.json()["detail"]
    assert 'relation "experiments" does not exist' in response.json()["detail"]
