"""BNLAB_API_TOKEN: with it set, every route but /health, the docs and the dashboard's files
needs `Authorization: Bearer <token>`; a missing or wrong one is a 401 that is logged without
the token; the token shows up nowhere a client or a log can read it."""

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.orm import Session

from bnlab.api.core.auth import access_notice, is_open
from bnlab.api.main import create_app
from bnlab.settings import Settings
from bnlab.store.tables import Experiment
from tests.api.conftest import add_checkpoints, add_experiment
from tests.api.test_predict import pixels

TOKEN = "k3y-of-the-lab_8a1f.Z~+/="
WRONG = "not-the-k3y"


@pytest.fixture
def guarded_app(settings: Settings) -> FastAPI:
    return create_app(Settings(**(settings.model_dump() | {"api_token": TOKEN})))


@pytest.fixture
def guarded(guarded_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(guarded_app) as client:
        yield client


@pytest.fixture
def served(session: Session, tmp_path: Path) -> Experiment:
    experiment = add_experiment(session, status="succeeded")
    add_checkpoints(session, experiment, tmp_path / "checkpoints")
    return experiment


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def every_route(app: FastAPI, experiment_id: int) -> list[tuple[str, str]]:
    """(method, URL) for each operation of the app's OpenAPI document, path parameters filled."""
    calls = []
    for path, operations in app.openapi()["paths"].items():
        url = re.sub(r"\{[^}]+\}", "1", path).replace(
            "/experiments/1", f"/experiments/{experiment_id}"
        )
        calls += [(method.upper(), url) for method in operations]
    return calls


def test_every_route_but_the_open_ones_needs_the_token(
    guarded: TestClient, guarded_app: FastAPI, served: Experiment
) -> None:
    calls = every_route(guarded_app, served.id)
    closed = [(method, url) for method, url in calls if not is_open(url)]
    assert ("POST", "/experiments") in closed and ("POST", "/predict") in closed
    assert len(closed) >= 8

    for method, url in closed:
        for headers in ({}, bearer(WRONG), {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
            response = guarded.request(method, url, headers=headers)
            assert response.status_code == 401, (method, url, headers, response.text)
            assert "Authorization: Bearer" in response.json()["detail"]
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in response.text


def test_with_the_token_the_routes_answer(guarded: TestClient, served: Experiment) -> None:
    for scheme in ("Bearer", "bearer"):
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        assert guarded.get("/experiments", headers=headers).status_code == 200
        prediction = guarded.post(
            "/predict",
            params={"experiment_id": served.id},
            json={"pixels": pixels("7")},
            headers=headers,
        )
        assert prediction.status_code == 200, prediction.text
    posted = guarded.post("/experiments", json={}, headers=bearer(TOKEN))
    assert posted.status_code == 202


def test_health_docs_and_dashboard_are_open(guarded: TestClient) -> None:
    assert guarded.get("/health").status_code == 200
    assert guarded.get("/docs").status_code == 200
    assert guarded.get("/openapi.json").status_code == 200
    assert guarded.get("/").status_code != 401
    assert guarded.get("/static/nothing-here.js").status_code != 401


def test_an_open_prefix_does_not_open_the_api_behind_it(guarded: TestClient) -> None:
    for url in ("/static/%2e%2e/experiments", "/health/../experiments", "/healthz", "/docs/x"):
        response = guarded.get(url)
        assert response.status_code in (401, 404), (url, response.status_code)
        assert "items" not in response.text


def test_a_request_without_the_token_is_refused_before_its_body_is_read(
    guarded: TestClient, served: Experiment
) -> None:
    # 401, not 413: the body (declared larger than any limit) is never looked at.
    response = guarded.post(
        "/predict",
        params={"experiment_id": served.id},
        content=b"{}",
        headers={"content-type": "application/json", "content-length": "999999999"},
    )
    assert response.status_code == 401


def test_refusals_are_logged_without_the_token(
    guarded: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bnlab.api.core.auth"):
        guarded.get("/experiments", headers=bearer(WRONG))
        guarded.get("/experiments")
        guarded.get("/experiments", headers=bearer(TOKEN))
    lines = [
        record.getMessage() for record in caplog.records if record.name == "bnlab.api.core.auth"
    ]
    assert len(lines) == 2
    assert "/experiments" in lines[0] and "wrong token" in lines[0]
    assert "no token" in lines[1]
    assert not any(TOKEN in line or WRONG in line for line in caplog.messages)


def test_the_openapi_document_asks_for_the_token(guarded: TestClient) -> None:
    document = guarded.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["security"] == [{"bearer": []}]
    assert document["paths"]["/health"]["get"]["security"] == []
    assert "401" in document["paths"]["/experiments"]["post"]["responses"]
    assert TOKEN not in guarded.get("/openapi.json").text


def test_without_a_token_the_api_is_open_and_says_nothing_of_one(client: TestClient) -> None:
    assert client.get("/experiments").status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_the_token_is_in_no_answer(guarded: TestClient, guarded_app: FastAPI) -> None:
    assert TOKEN not in guarded.get("/health").text
    settings = guarded_app.state.settings
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


@pytest.mark.parametrize("token", ["", "has space", "new\nline", "ünïcode"])
def test_a_token_that_cannot_travel_in_a_header_is_refused_without_echoing_it(
    token: str,
) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(api_token=token)
    assert "BNLAB_API_TOKEN must be" in str(refused.value)
    if token:
        assert token not in str(refused.value)


def test_on_start_the_api_says_who_can_use_it() -> None:
    level, line = access_notice(Settings(api_token=TOKEN, host="0.0.0.0"))
    assert level == logging.INFO and "needs 'Authorization: Bearer" in line
    assert TOKEN not in line
    level, line = access_notice(Settings())
    assert level == logging.INFO and "bound to 127.0.0.1 only" in line
    level, line = access_notice(Settings(host="0.0.0.0"))
    assert level == logging.WARNING and "WITHOUT A TOKEN" in line
