"""PATCH /experiments/{id} and /sweeps/{id}: a name, markdown notes and tags, shown wherever the
row is, and ?tag= filtering the lists; bad values refused saying why. On SQLite and PostgreSQL:
the tag filter is SQL that both must answer the same."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bnlab.api.main import create_app
from bnlab.store.db import make_sessionmaker
from bnlab.store.migrate import upgrade
from tests.api.conftest import add_experiment, make_settings

SHORT = {"training_batches": 200, "batches_per_sample": 50}


@pytest.fixture
def app_client(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.chdir(tmp_path)  # the filesystem broker's control folder
    upgrade(database_url)
    with TestClient(create_app(make_settings(tmp_path, database_url))) as client:
        yield client


def new_experiment(client: TestClient) -> int:
    database_url = client.app.state.settings.database_url  # type: ignore[attr-defined]
    with make_sessionmaker(database_url)() as session:
        return add_experiment(session).id


def new_sweep(client: TestClient) -> int:
    body = {"grid": {"learning_rate": [0.5, 1]}, "base": SHORT}
    response = client.post("/sweeps", json=body)
    assert response.status_code == 202, response.text
    sweep_id: int = response.json()["id"]
    return sweep_id


def patch(client: TestClient, path: str, body: Any) -> Any:
    response = client.patch(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(params=["experiments", "sweeps"])
def owner(request: pytest.FixtureRequest, app_client: TestClient) -> str:
    """`/experiments/{id}` or `/sweeps/{id}` of a new row: both behave the same."""
    make = new_experiment if request.param == "experiments" else new_sweep
    return f"/{request.param}/{make(app_client)}"


def test_a_new_row_has_no_name_no_notes_and_no_tags(app_client: TestClient, owner: str) -> None:
    shown = app_client.get(owner).json()
    assert (shown["name"], shown["notes"], shown["tags"]) == (None, "", [])


def test_patch_sets_what_it_sends_and_keeps_the_rest(app_client: TestClient, owner: str) -> None:
    notes = "# lr 1\n\nThe plain net *died* at step 400."
    answer = patch(app_client, owner, {"name": "first try", "notes": notes, "tags": ["b", "a"]})
    assert (answer["name"], answer["notes"], answer["tags"]) == ("first try", notes, ["a", "b"])

    answer = patch(app_client, owner, {"tags": ["a", "lesson-1"]})
    assert (answer["name"], answer["notes"], answer["tags"]) == (
        "first try",
        notes,
        ["a", "lesson-1"],
    )
    assert app_client.get(owner).json()["tags"] == ["a", "lesson-1"]

    answer = patch(app_client, owner, {"name": None, "notes": "", "tags": []})
    assert (answer["name"], answer["notes"], answer["tags"]) == (None, "", [])


def test_the_same_patch_twice_gives_the_same_answer(app_client: TestClient, owner: str) -> None:
    body = {"name": "n", "tags": ["x"]}
    first = patch(app_client, owner, body)
    assert patch(app_client, owner, body) == first


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "at least one of name, notes and tags"),
        ({"tags": ["has space"]}, "a tag is 1 to 40 letters"),
        ({"tags": ["-leading"]}, "starting with a letter or digit"),
        ({"tags": ["a" * 41]}, "at most 40 characters"),
        ({"tags": ["a", "b", "a"]}, "a listed more than once"),
        ({"tags": [str(n) for n in range(21)]}, "at most 20 items"),
        ({"tags": None}, "send [] to remove them"),
        ({"notes": None}, 'send "" to remove them'),
        ({"notes": "x" * 20_001}, "at most 20000 characters"),
        ({"name": "x" * 201}, "at most 200 characters"),
        ({"name": "two\nlines"}, "one line of text"),
        ({"name": "  "}, "send null to remove it"),
        ({"title": "typo"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_422_saying_what_to_send(
    app_client: TestClient, owner: str, body: dict[str, Any], says: str
) -> None:
    response = app_client.patch(owner, json=body)
    assert response.status_code == 422
    assert says in str(response.json()["detail"])
    assert app_client.get(owner).json()["tags"] == []  # nothing written


def test_unknown_ids_are_404(app_client: TestClient) -> None:
    for kind in ("experiment", "sweep"):
        response = app_client.patch(f"/{kind}s/999", json={"name": "x"})
        assert response.status_code == 404
        assert response.json()["detail"] == f"no {kind} with id 999"


def test_a_body_that_is_not_json_is_415(app_client: TestClient) -> None:
    path = f"/experiments/{new_experiment(app_client)}"
    response = app_client.patch(path, content="name=x", headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_tag_filters_the_experiment_list(app_client: TestClient) -> None:
    first, second, third = (new_experiment(app_client) for _ in range(3))
    patch(app_client, f"/experiments/{first}", {"tags": ["lesson", "relu"]})
    patch(app_client, f"/experiments/{second}", {"tags": ["lesson"]})
    patch(app_client, f"/experiments/{third}", {"tags": ["relu_2"]})  # '_' is no wildcard

    def ids(query: str) -> tuple[list[int], int]:
        page = app_client.get(f"/experiments?{query}").json()
        return [item["id"] for item in page["items"]], page["total"]

    assert ids("tag=lesson") == ([second, first], 2)
    assert ids("tag=lesson&tag=relu") == ([first], 1)
    assert ids("tag=relu") == ([first], 1)
    assert ids("tag=nobody") == ([], 0)
    assert ids("tag=lesson&status=running") == ([], 0)
    assert ids("tag=lesson&limit=1") == ([second], 2)
    assert app_client.get("/experiments?tag=bad%20tag").status_code == 422


def test_tag_filters_the_sweep_list_which_shows_annotations(app_client: TestClient) -> None:
    tagged, untagged = new_sweep(app_client), new_sweep(app_client)
    patch(app_client, f"/sweeps/{tagged}", {"name": "seeds", "tags": ["study"]})
    page = app_client.get("/sweeps?tag=study").json()
    assert [(s["id"], s["name"], s["tags"]) for s in page["items"]] == [
        (tagged, "seeds", ["study"])
    ]
    assert page["total"] == 1
    assert {s["id"] for s in app_client.get("/sweeps").json()["items"]} == {tagged, untagged}
    # a sweep's tags are its own: its cells stay untagged
    cell = app_client.get(f"/sweeps/{tagged}").json()["cells"][0]["id"]
    assert app_client.get(f"/experiments/{cell}").json()["tags"] == []
