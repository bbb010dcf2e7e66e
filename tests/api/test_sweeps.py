"""/sweeps: a grid (or the classic preset) stored as ordinary experiments and queued a message
per batched group; bad grids refused saying why; progress, cancel; the report in JSON, CSV and
Markdown (with seeds aggregated) and the PNG. Cells are finished here the way a worker would
write them; tests/service/test_sweeps.py runs real workers."""

import csv
import io
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bnlab.jobs import TRAIN
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.tables import CurvePoint, Experiment, Sweep, utc_now
from tests.api.test_experiments import message_args, queued_messages

SHORT = {"training_batches": 200, "batches_per_sample": 50}


def post(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/sweeps", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/sweeps/{response.json()['id']}"
    return response.json()


def finish(
    session: Session,
    experiment_id: int,
    plain: dict[str, Any],
    bn: dict[str, Any],
    curve: dict[str, list[float]] | None = None,
) -> None:
    """Write a cell's results as the worker does when it succeeds."""
    experiment = queries.get_experiment(session, experiment_id)
    assert experiment is not None
    for variant, results in (("plain", plain), ("bn", bn)):
        run = queries.run_of(experiment, variant)
        for name, value in results.items():
            setattr(run, name, value)
        for step, accuracy in enumerate((curve or {}).get(variant, [])):
            session.add(CurvePoint(run_id=run.id, step=50 * step, val_accuracy=accuracy))
    experiment.status, experiment.finished_at = "succeeded", utc_now()
    experiment.progress_step = experiment.progress_total
    session.commit()


def count(session: Session, table: type) -> int:
    return session.scalar(select(func.count()).select_from(table)) or 0


# -- submitting


def test_a_grid_becomes_queued_experiments_and_one_message_per_batched_group(
    client: TestClient, settings: Settings, session: Session
) -> None:
    body = post(
        client,
        {
            "grid": {"activation": ["relu", "sigmoid"], "learning_rate": [0.01, 1.0]},
            "base": SHORT,
        },
    )
    assert body["status"] == "queued"
    assert body["varying"] == ["activation", "learning_rate"]
    assert [cell["values"] for cell in body["cells"]] == [
        {"activation": "relu", "learning_rate": 0.01},
        {"activation": "relu", "learning_rate": 1.0},
        {"activation": "sigmoid", "learning_rate": 0.01},
        {"activation": "sigmoid", "learning_rate": 1.0},
    ]
    assert body["progress"] == {"steps_done": 0, "steps_total": 800, "fraction": 0.0}
    ids = [cell["id"] for cell in body["cells"]]

    # ordinary experiments, listed under /experiments, each knowing its sweep
    listed = client.get("/experiments").json()
    assert sorted(e["id"] for e in listed["items"]) == ids
    for cell in body["cells"]:
        experiment = client.get(cell["url"]).json()
        assert experiment["status"] == "queued" and experiment["spec"]["training_batches"] == 200
        assert experiment["sweep_id"] == body["id"]
    assert {e.sweep_id for e in session.scalars(select(Experiment))} == {body["id"]}

    # relu cells share a batched model, so do sigmoid ones: two jobs
    jobs = sorted(message_args(m) for m in queued_messages(settings))
    assert jobs == [(TRAIN, [ids[:2]]), (TRAIN, [ids[2:]])]


def test_the_classic_preset_is_the_studys_fifteen_cells(
    client: TestClient, settings: Settings
) -> None:
    body = post(client, {"preset": "classic"})

    cells = [cell["values"] for cell in body["cells"]]
    long = [c for c in cells if c["training_batches"] == 50_000]
    short = [c for c in cells if c["training_batches"] == 2_000]
    assert len(long) == 12 and len(short) == 3
    assert {(c["activation"], c["learning_rate"], c["use_bad_weights"]) for c in long} == {
        (a, lr, bad) for a in ("relu", "sigmoid") for lr in (0.01, 1.0, 2.0) for bad in (0, 1)
    }
    assert all(c["batches_per_sample"] == 500 for c in long)
    assert {(c["activation"], c["learning_rate"], c["use_bad_weights"]) for c in short} == {
        ("relu", 0.01, False),
        ("sigmoid", 1.0, False),
        ("sigmoid", 2.0, False),
    }
    assert all(c["batches_per_sample"] == 50 for c in short)
    # 50,000-batch relu, 50,000-batch sigmoid, the 2,000-batch sigmoid pair: batched groups;
    # the lone 2,000-batch relu cell: a group of one, as an ordinary experiment's job
    sizes = sorted(
        (name, len(args[0])) for name, args in map(message_args, queued_messages(settings))
    )
    assert sizes == [(TRAIN, 1), (TRAIN, 2), (TRAIN, 6), (TRAIN, 6)]


def test_a_preset_crossed_with_seeds_and_a_base(client: TestClient) -> None:
    body = post(client, {"preset": "classic", "grid": {"seed": [0, 1]}, "base": {"device": "gpu"}})
    assert len(body["cells"]) == 30
    assert all(client.get(c["url"]).json()["queue"] == "gpu" for c in body["cells"][:3])
    assert body["notice"] == (
        "no worker serves the 'gpu' queue; start one with `bnlab worker --queue gpu`"
    )


def test_without_stacking_every_cell_is_its_own_experiment_job(
    client: TestClient, settings: Settings
) -> None:
    body = post(client, {"grid": {"learning_rate": [0.01, 1.0]}, "base": SHORT, "stack": False})
    jobs = sorted(message_args(m) for m in queued_messages(settings))
    assert jobs == [(TRAIN, [[cell["id"]]]) for cell in body["cells"]]


def test_groups_are_split_at_the_stacked_cells_limit(
    settings: Settings, tmp_path: Any, sqlite_url: str
) -> None:
    from bnlab.api.main import create_app
    from tests.api.conftest import make_settings

    small = make_settings(tmp_path, sqlite_url, max_stacked_cells=2)
    with TestClient(create_app(small)) as client:
        post(client, {"grid": {"learning_rate": [0.01, 0.1, 1.0]}, "base": SHORT})
    jobs = sorted(message_args(m) for m in queued_messages(small))
    # 3 cells: a batched pair and a lone one
    assert sorted(len(ids) for _, (ids,) in jobs) == [1, 2]


BAD_SWEEPS = [
    ({"grid": {"lr": [0.1]}}, "grid: unknown field 'lr'; an experiment's fields are: dataset,"),
    ({"grid": {"learning_rate": [0.1]}, "base": {"colour": "red"}}, "base: unknown field 'colour'"),
    ({"grid": {"learning_rate": []}}, "grid: 'learning_rate' lists no values"),
    ({"grid": {}}, "give a grid"),
    ({}, "give a grid"),
    (
        {"grid": {"learning_rate": [0.1]}, "base": {"learning_rate": 1.0}},
        "'learning_rate' is in both grid and base",
    ),
    ({"preset": "classic", "grid": {"activation": ["tanh"]}}, "the classic preset sets"),
    ({"preset": "classic", "base": {"training_batches": 10}}, "cannot be set too"),
    (
        {"grid": {"learning_rate": [0.1, -1.0]}},
        "the cell learning_rate=-1.0 is not a valid experiment: learning_rate: Input should be",
    ),
    (
        {"grid": {"use_bad_weights": [False, True]}, "base": {"weight_std": 1.0}},
        "the cell use_bad_weights=true is not a valid experiment",
    ),
    ({"grid": {"seed": [1, 1]}}, "cells 1 and 2 are the same experiment"),
    ({"grid": {"learning_rate": [1, 1.0]}}, "are the same experiment"),
]


@pytest.mark.parametrize(
    ("body", "message"), BAD_SWEEPS, ids=[json.dumps(b) for b, _ in BAD_SWEEPS]
)
def test_bad_sweeps_are_refused_saying_why_and_store_nothing(
    client: TestClient, settings: Settings, session: Session, body: dict, message: str
) -> None:
    response = client.post("/sweeps", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert count(session, Sweep) == count(session, Experiment) == 0
    assert queued_messages(settings) == []


def test_a_grid_over_the_cell_limit_is_refused_with_its_count(
    client: TestClient, session: Session
) -> None:
    body = {"grid": {"seed": list(range(20)), "learning_rate": [0.01, 0.1, 1.0, 2.0]}}
    body["grid"]["batch_size"] = [30, 60, 120, 240]  # 20 x 4 x 4 = 320 cells
    response = client.post("/sweeps", json=body)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(
        "the sweep has 320 cells; at most 256 are allowed (BNLAB_MAX_SWEEP_CELLS)"
    )
    assert count(session, Experiment) == 0


def test_a_grid_that_is_not_lists_is_a_422(client: TestClient) -> None:
    response = client.post("/sweeps", json={"grid": {"learning_rate": 0.1}})
    assert response.status_code == 422
    assert "valid list" in json.dumps(response.json()["detail"])


def test_sweeps_are_listed_newest_first(client: TestClient, session: Session) -> None:
    first = post(client, {"grid": {"learning_rate": [0.01, 0.1]}, "base": SHORT})
    second = post(client, {"grid": {"seed": [1]}, "base": SHORT})
    finish(session, first["cells"][0]["id"], {}, {})

    page = client.get("/sweeps").json()
    assert page["total"] == 2 and [s["id"] for s in page["items"]] == [second["id"], first["id"]]
    listed = page["items"][1]
    assert listed["url"] == f"/sweeps/{first['id']}" and listed["cells"] == 2
    assert listed["status"] == "running" and listed["counts"]["succeeded"] == 1
    assert listed["progress"] == {"steps_done": 200, "steps_total": 400, "fraction": 0.5}
    assert [s["id"] for s in client.get("/sweeps?limit=1&offset=1").json()["items"]] == [
        first["id"]
    ]


def test_an_unknown_sweep_is_a_404(client: TestClient) -> None:
    for path in ("/sweeps/99", "/sweeps/99/report", "/sweeps/99/report.png"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["detail"] == "no sweep with id 99"


# -- following and cancelling


def test_progress_sums_the_cells_and_cancel_stops_every_unfinished_one(
    client: TestClient, session: Session
) -> None:
    body = post(client, {"grid": {"learning_rate": [0.01, 0.1, 1.0]}, "base": SHORT})
    first, second, third = (cell["id"] for cell in body["cells"])
    finish(session, first, {}, {})
    running = session.get(Experiment, second)
    assert running is not None
    running.status, running.progress_step = "running", 100
    session.commit()

    now = client.get(f"/sweeps/{body['id']}").json()
    assert now["status"] == "running"
    assert now["counts"]["succeeded"] == 1 and now["counts"]["running"] == 1
    assert now["progress"]["steps_done"] == 300 and now["progress"]["fraction"] == 0.5

    cancelled = client.post(f"/sweeps/{body['id']}/cancel").json()
    statuses = {cell["id"]: cell["status"] for cell in cancelled["cells"]}
    assert statuses == {first: "succeeded", second: "running", third: "cancelled"}
    assert cancelled["cancel_requested"] is True
    assert client.get(f"/experiments/{second}").json()["cancel_requested"] is True

    session.expire_all()
    running = session.get(Experiment, second)
    assert running is not None
    running.status = "cancelled"
    session.commit()
    assert client.get(f"/sweeps/{body['id']}").json()["status"] == "cancelled"
    again = client.post(f"/sweeps/{body['id']}/cancel")
    assert again.status_code == 409 and "has finished" in again.json()["detail"]


# -- the report


def grid_with_results(client: TestClient, session: Session) -> tuple[int, list[int]]:
    """relu x lr {0.01, 2.0}: the first cell succeeded, BN better and 2x faster to 0.90; the
    second still running."""
    body = post(client, {"grid": {"learning_rate": [0.01, 2.0]}, "base": SHORT})
    ids = [cell["id"] for cell in body["cells"]]
    finish(
        session,
        ids[0],
        plain={"final_val_accuracy": 0.90, "test_accuracy": 0.90, "steps_to_90": 200},
        bn={"final_val_accuracy": 0.97, "test_accuracy": 0.96, "steps_to_90": 100},
        curve={"plain": [0.1, 0.5, 0.8, 0.9, 0.9], "bn": [0.1, 0.8, 0.9, 0.95, 0.97]},
    )
    return body["id"], ids


def test_the_json_report_says_what_is_done_and_what_bn_did(
    client: TestClient, session: Session
) -> None:
    sweep_id, ids = grid_with_results(client, session)
    report = client.get(f"/sweeps/{sweep_id}/report").json()

    assert report["complete"] is False
    assert report["columns"] == ["learning_rate"] and report["tolerance"] == 0.01
    done, pending = report["rows"]
    assert done["values"] == {"learning_rate": 0.01} and done["experiment_ids"] == [ids[0]]
    assert done["plain"]["test_accuracy"] == 0.90 and done["bn"]["test_accuracy"] == 0.96
    assert done["plain"]["steps_to_90"] == 200 and done["bn"]["reached_90"] == 1.0
    assert done["plain"]["test_accuracy_std"] is None  # one seed
    assert done["verdict"] == "BN better" and done["speedup_90"] == 2.0
    assert done["test_accuracy_gain"] == pytest.approx(0.06)
    assert pending["done"] == 0 and pending["verdict"] is None
    assert pending["plain"]["test_accuracy"] is None

    # within the tolerance it is "same"
    lenient = client.get(f"/sweeps/{sweep_id}/report", params={"tolerance": 0.1}).json()
    assert lenient["rows"][0]["verdict"] == "same"


def test_the_report_as_csv_and_markdown(client: TestClient, session: Session) -> None:
    sweep_id, ids = grid_with_results(client, session)

    as_csv = client.get(f"/sweeps/{sweep_id}/report", headers={"Accept": "text/csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == 2
    assert rows[0]["learning_rate"] == "0.01" and rows[0]["bn_test_accuracy"] == "0.96"
    assert rows[0]["verdict"] == "BN better" and rows[0]["speedup_90"] == "2.0"
    assert rows[0]["experiment_ids"] == str(ids[0]) and rows[0]["complete"] == "false"
    assert rows[1]["verdict"] == "" and rows[1]["plain_test_accuracy"] == ""

    as_md = client.get(f"/sweeps/{sweep_id}/report", params={"format": "md"})
    assert as_md.headers["content-type"].startswith("text/markdown")
    text = as_md.text
    assert f"# Sweep {sweep_id}" in text
    assert "1 of 2 cells succeeded (still running" in text
    assert "`same` within ±0.01" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| learning_rate | plain test | BN test |")
    # test, val (plain, BN), steps to 0.90, to 0.95, diverged, verdict, speed-up
    assert table[2] == (
        "| 0.01 | 0.900 | 0.960 | 0.900 | 0.970 | 200 | 100 | never | never | no / no "
        "| BN better | 2.0x |"
    )
    assert table[3].startswith("| 2.0 | … |")


def test_seeds_are_summarized_as_mean_sd_and_fraction_reaching_090(
    client: TestClient, session: Session
) -> None:
    body = post(client, {"grid": {"use_bad_weights": [True], "seed": [0, 1, 2]}, "base": SHORT})
    ids = [cell["id"] for cell in body["cells"]]
    # BN reaches 0.90 on two seeds of three; the plain net diverges on one
    results = [
        ({"test_accuracy": 0.10}, {"test_accuracy": 0.92, "steps_to_90": 100}),
        ({"diverged_at_step": 7}, {"test_accuracy": 0.90, "steps_to_90": 150}),
        ({"test_accuracy": 0.12}, {"test_accuracy": 0.11}),
    ]
    for experiment_id, (plain, bn) in zip(ids, results, strict=True):
        finish(session, experiment_id, plain, bn)

    report = client.get(f"/sweeps/{body['id']}/report").json()
    assert report["complete"] is True and report["columns"] == []
    (row,) = report["rows"]
    assert row["seeds"] == [0, 1, 2] and row["done"] == 3
    assert row["bn"]["test_accuracy"] == pytest.approx((0.92 + 0.90 + 0.11) / 3)
    assert row["bn"]["test_accuracy_std"] == pytest.approx(0.4619, abs=1e-4)
    assert row["bn"]["reached_90"] == pytest.approx(2 / 3)
    assert row["bn"]["steps_to_90"] == 125
    assert row["plain"]["test_accuracy"] == pytest.approx(0.11)  # over the 2 that trained
    assert row["plain"]["diverged"] == pytest.approx(1 / 3)
    assert row["plain"]["diverged_at_step"] == 7 and row["plain"]["reached_90"] == 0
    assert row["verdict"] == "BN better" and row["speedup_90"] is None

    text = client.get(f"/sweeps/{body['id']}/report?format=md").text
    assert "| seeds |" in text and "| 3/3 | 0.110 ± 0.014 | 0.643 ± 0.462 |" in text
    assert "| never (0/3) | 125 (2/3) |" in text and "| 1/3 / no |" in text
    assert "only BN reached 0.90" in text


def test_the_report_png_has_a_panel_per_cell(client: TestClient, session: Session) -> None:
    sweep_id, _ = grid_with_results(client, session)
    response = client.get(f"/sweeps/{sweep_id}/report.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
