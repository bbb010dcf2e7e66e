"""/compare and /compare.png: several experiments' nets on one plot, labelled with only the spec
fields that differ, and a table of their results; bad id lists refused saying what to send."""

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from tests.api.conftest import add_experiment
from tests.api.test_sweeps import finish


@pytest.fixture
def three(session: Session) -> list[int]:
    """Experiments 1-3: lr 1 and 2 with good weights, lr 1 with bad ones; 1 and 2 finished."""
    ids = [
        add_experiment(session, learning_rate=1.0).id,
        add_experiment(session, learning_rate=2.0).id,
        add_experiment(session, learning_rate=1.0, use_bad_weights=True).id,
    ]
    curve = {"plain": [0.1, 0.5, 0.7], "bn": [0.1, 0.8, 0.9]}
    finish(session, ids[0], {"test_accuracy": 0.7}, {"test_accuracy": 0.9}, curve)
    finish(session, ids[1], {"test_accuracy": 0.1, "diverged_at_step": 50}, {"test_accuracy": 0.92})
    return ids


def test_the_comparison_names_only_what_differs(client: TestClient, three: list[int]) -> None:
    first, second, third = three
    answer = client.get(f"/compare?experiments={third},{first},{second}").json()
    assert answer["differing"] == ["learning_rate", "use_bad_weights"]
    assert [e["id"] for e in answer["experiments"]] == [third, first, second]
    by_id = {e["id"]: e for e in answer["experiments"]}
    assert by_id[first]["values"] == {"learning_rate": 1.0, "use_bad_weights": False}
    assert by_id[third]["label"] == f"#{third} lr 1, bad init"
    assert by_id[first]["series"]["bn"]["val_accuracy"] == [0.1, 0.8, 0.9]
    assert by_id[first]["series"]["bn"]["step"] == [0, 50, 100]
    assert by_id[third]["series"]["plain"]["step"] == []  # queued: no points yet
    assert [(n["experiment_id"], n["variant"]) for n in answer["legend"]] == [
        (third, "plain"),
        (third, "bn"),
        (first, "plain"),
        (first, "bn"),
        (second, "plain"),
        (second, "bn"),
    ]
    assert answer["legend"][3]["label"] == f"#{first} lr 1, good init, with BN"
    rows = {(r["experiment_id"], r["variant"]): r for r in answer["table"]}
    assert rows[(second, "plain")]["diverged_at_step"] == 50
    assert rows[(second, "bn")]["test_accuracy"] == 0.92
    assert rows[(third, "bn")]["test_accuracy"] is None


def test_two_experiments_differing_in_one_field_are_labelled_by_it(
    client: TestClient, three: list[int]
) -> None:
    answer = client.get(f"/compare?experiments={three[0]},{three[1]}").json()
    assert answer["differing"] == ["learning_rate"]
    assert [e["label"] for e in answer["experiments"]] == [f"#{three[0]} lr 1", f"#{three[1]} lr 2"]


def test_the_png_is_one_plot(client: TestClient, three: list[int]) -> None:
    response = client.get(f"/compare.png?experiments={','.join(map(str, three))}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (900, 550)


@pytest.mark.parametrize("path", ["/compare", "/compare.png"])
@pytest.mark.parametrize(
    ("ids", "status", "says"),
    [
        ("1", 422, "1 experiment(s) asked for: send 2 to 8 experiment ids"),
        (",".join(str(n) for n in range(1, 10)), 422, "9 experiment(s) asked for"),
        ("1,x", 422, "is not a list of ids"),
        ("1,,2", 422, "is not a list of ids"),
        ("1;2", 422, "is not a list of ids"),
        ("1,-2", 422, "is not a list of ids"),
        ("1,0", 422, "between 1 and 2147483647"),
        ("1,99999999999", 422, "between 1 and 2147483647"),
        ("1,2,1", 422, "names an experiment twice"),
        ("1,98,2,99", 404, "no experiment with id 98, 99"),
    ],
)
def test_bad_lists_say_what_to_send(
    client: TestClient, three: list[int], path: str, ids: str, status: int, says: str
) -> None:
    response = client.get(path, params={"experiments": ids})
    assert response.status_code == status
    assert says in response.json()["detail"]


def test_without_a_list_it_is_422(client: TestClient) -> None:
    response = client.get("/compare")
    assert response.status_code == 422
    assert "experiments" in str(response.json()["detail"])
