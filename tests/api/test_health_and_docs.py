"""/health tells what is down without leaking secrets; the OpenAPI document shows examples."""

from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from bnlab.api.core.redact import reason
from bnlab.api.main import create_app
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.db import make_engine
from bnlab.store.tables import Worker, utc_now
from bnlab.vocabulary import VARIANTS
from tests.api.conftest import make_settings


def test_healthy_with_live_workers_counted_per_queue(client: TestClient, session: Session) -> None:
    for hostname, queue in [("a", "cpu"), ("b", "cpu"), ("c", "gpu")]:
        queries.heartbeat(session, hostname, queue)
    stale = utc_now() - timedelta(minutes=10)
    session.add(Worker(hostname="gone", queue="gpu", started_at=stale, last_seen=stale))
    session.commit()

    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {
        "database": "ok",
        "broker": "ok",
        "workers": {"cpu": 2, "gpu": 1},
        "worker": None,
    }


def test_no_workers_is_still_healthy(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["workers"] == {"cpu": 0, "gpu": 0}


def test_a_missing_broker_folder_is_503(client: TestClient, settings: Settings) -> None:
    (settings.broker_dir / "queue").rmdir()
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["database"] == "ok"
    assert "does not exist" in response.json()["broker"]


def test_an_unmigrated_database_is_503(unmigrated: TestClient) -> None:
    response = unmigrated.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["database"].startswith("unreachable or not migrated: OperationalError")
    assert body["broker"] == "ok"
    assert body["workers"] is None


def test_requests_to_an_unmigrated_database_are_503_not_500(unmigrated: TestClient) -> None:
    response = unmigrated.get("/experiments")
    assert response.status_code == 503
    assert "no such table" in response.json()["detail"]
    assert "GET /health" in response.json()["detail"]


def test_unreachable_servers_are_503_and_their_passwords_stay_hidden(
    tmp_path: Path, settings: Settings
) -> None:
    # Nothing listens on port 1.
    down = make_settings(
        tmp_path,
        "postgresql+psycopg2://bnlab:s3cret@127.0.0.1:1/bnlab",
        broker_url="redis://:hunter2@127.0.0.1:1/0",
    )
    try:
        with TestClient(create_app(down)) as client:
            response = client.get("/health")
    finally:
        make_engine(down.database_url).dispose()
    assert response.status_code == 503
    assert response.json()["database"].startswith("unreachable")
    assert response.json()["broker"].startswith("unreachable")
    assert "s3cret" not in response.text and "hunter2" not in response.text


def test_error_texts_lose_their_passwords() -> None:
    url = "redis://:p%40ss@broker:6379/0"
    error = ConnectionError(f"cannot reach {url} (password p@ss)\nmore detail")
    assert (
        reason(error, url)
        == "ConnectionError: cannot reach redis://:***@broker:6379/0 (password ***)"
    )


def test_every_request_body_has_an_example(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    bodies = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            for media_type, content in operation["requestBody"]["content"].items():
                bodies += 1
                schema = _resolve(document, content.get("schema", {}))
                has_example = "examples" in content or "example" in content or "examples" in schema
                assert has_example, f"{method.upper()} {path} ({media_type}) shows no example"
    # /experiments and /sweeps JSON; /predict JSON and multipart; PATCH of an experiment, a sweep;
    # a fork; a bundle's import
    assert bodies == 8
    predict = document["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(predict) == {"application/json", "multipart/form-data"}
    parameters = {p["name"]: p for p in document["paths"]["/predict"]["post"]["parameters"]}
    assert parameters["experiment_id"]["required"] is True
    assert parameters["variant"]["schema"]["enum"] == list(VARIANTS)
    assert parameters["mode"]["schema"]["enum"] == ["population", "batch", "fused"]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return document["components"]["schemas"][name]  # type: ignore[no-any-return]
    return schema
