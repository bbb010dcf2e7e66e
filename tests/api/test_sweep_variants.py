"""A sweep that varies `variants`: each cell trains its own, and the report compares every
variant with plain where the cell trained plain, else with the first variant it trained."""

import csv
import io

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from bnlab.store import queries
from bnlab.store.tables import utc_now
from tests.api.test_sweeps import SHORT, post

GRID = {"variants": [["plain", "bn", "layer_norm"], ["bn", "group_norm"]]}


def succeed(session: Session, experiment_id: int, test_accuracy: dict[str, float]) -> None:
    experiment = queries.get_experiment(session, experiment_id)
    assert experiment is not None
    for variant, accuracy in test_accuracy.items():
        run = queries.run_of(experiment, variant)
        run.test_accuracy, run.final_val_accuracy = accuracy, accuracy
        run.steps_to_90 = round(100 / accuracy)
    experiment.status, experiment.finished_at = "succeeded", utc_now()
    session.commit()


def test_a_sweep_over_variants_compares_each_with_plain_or_says_against_which(
    client: TestClient, session: Session
) -> None:
    body = post(client, {"grid": GRID, "base": SHORT})
    first, second = (cell["id"] for cell in body["cells"])
    for cell, variants in ((first, ["plain", "bn", "layer_norm"]), (second, ["bn", "group_norm"])):
        experiment = queries.get_experiment(session, cell)
        assert experiment is not None
        assert sorted(run.variant for run in experiment.runs) == sorted(variants)
    succeed(session, first, {"plain": 0.90, "bn": 0.96, "layer_norm": 0.905})
    succeed(session, second, {"bn": 0.96, "group_norm": 0.80})

    report = client.get(f"/sweeps/{body['id']}/report").json()
    with_plain, without = report["rows"]
    assert with_plain["against"] == "plain" and with_plain["verdict"] == "BN better"
    assert with_plain["comparisons"]["layer_norm"]["verdict"] == "same"  # within 0.01
    assert set(with_plain["variants"]) == {"plain", "bn", "layer_norm"}
    assert without["against"] == "bn" and without["verdict"] is None  # no plain to compare with
    assert without["comparisons"]["group_norm"]["verdict"] == "worse"
    assert without["comparisons"]["group_norm"]["speedup_90"] == round(100 / 0.96) / round(
        100 / 0.8
    )

    rows = list(
        csv.DictReader(
            io.StringIO(client.get(f"/sweeps/{body['id']}/report", params={"format": "csv"}).text)
        )
    )
    assert [row["against"] for row in rows] == ["plain", "bn"]
    assert [row["group_norm_verdict"] for row in rows] == ["", "worse"]
    markdown = client.get(f"/sweeps/{body['id']}/report", params={"format": "md"}).text
    assert "Each variant against `plain`" in markdown and "group_norm verdict" in markdown
