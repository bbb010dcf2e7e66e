"""Why BN helps, as the API shows it: /landscape, /ics and /sharpness (and their PNGs) from rows
written the way the worker writes them (`why_rows` into `add_probe_rows`), an experiment whose
probes were off, a running one with nothing yet, and bad input."""

import math

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from bnlab.models.why import Landscape, LayerShift, Sharpness, WhySample
from bnlab.store import queries
from bnlab.store.tables import Experiment
from bnlab.worker.why_rows import why_rows
from tests.api.conftest import add_experiment

PROBES = {"landscape": True, "ics": True, "sharpness": True, "every": 2}
STEP_SIZES = (0.005, 0.01, 0.02)
WHAT = ("landscape", "ics", "sharpness")
SHORT = {"training_batches": 200, "batches_per_sample": 50}


def sample(step: int, variant: str) -> WhySample:
    """A net at `step`: plain's landscape rougher than bn's, numbers that say which is which."""
    rough = 10.0 if variant == "plain" else 1.0
    return WhySample(
        landscape=Landscape(
            step_sizes=STEP_SIZES,
            losses=tuple(2.0 - step / 1000 + rough * eta for eta in STEP_SIZES),
            grad_changes=(0.1 * rough, 0.2 * rough, math.inf if variant == "plain" else 0.4),
            beta_smoothness=rough * (1 + step / 100),
        ),
        ics=(LayerShift(norm=0.0, cosine=1.0), LayerShift(norm=0.01 * rough, cosine=0.9)),
        sharpness=Sharpness(eigenvalue=rough * 20.0, iterations=7, edge=200.0),
    )


def probed(session: Session, steps: list[int]) -> Experiment:
    experiment = add_experiment(session, status="running", learning_rate=0.01, probes=PROBES)
    for step in steps:
        rows = {variant: why_rows(sample(step, variant)) for variant in ("plain", "bn")}
        queries.add_probe_rows(session, experiment, step, rows)
    session.commit()
    return experiment


def test_landscape_is_a_band_per_variant_over_the_probed_steps(
    client: TestClient, session: Session
) -> None:
    experiment = probed(session, [100, 0])  # written in any order
    body = client.get(f"/experiments/{experiment.id}/landscape").json()
    assert body["measured"] is True and body["message"] is None and body["every"] == 2
    plain, bn = body["variants"]["plain"], body["variants"]["bn"]
    assert plain["step"] == bn["step"] == [0, 100]
    assert plain["step_sizes"] == list(STEP_SIZES)
    assert bn["loss_min"] == pytest.approx([2.0 + 0.005, 1.9 + 0.005])
    assert bn["loss_max"] == pytest.approx([2.0 + 0.02, 1.9 + 0.02])
    assert len(bn["losses"][0]) == len(STEP_SIZES)
    # the non-finite gradient change is unknown, and the band is over the values known
    assert plain["grad_change_max"] == pytest.approx([2.0, 2.0])
    assert plain["grad_changes"][0] == pytest.approx([1.0, 2.0, None])
    assert plain["beta_smoothness"] == pytest.approx([10.0, 20.0])
    assert bn["beta_smoothness"] == pytest.approx([1.0, 2.0])


def test_ics_is_a_series_per_layer(client: TestClient, session: Session) -> None:
    experiment = probed(session, [0, 100])
    body = client.get(f"/experiments/{experiment.id}/ics").json()
    layers = body["variants"]["plain"]
    assert [layer["layer"] for layer in layers] == [0, 1]
    assert layers[0]["norm"] == [0.0, 0.0] and layers[0]["cosine"] == [1.0, 1.0]
    assert layers[1]["norm"] == pytest.approx([0.1, 0.1])
    assert body["variants"]["bn"][1]["norm"] == pytest.approx([0.01, 0.01])


def test_sharpness_has_the_edge_of_stability(client: TestClient, session: Session) -> None:
    experiment = probed(session, [0, 100])
    body = client.get(f"/experiments/{experiment.id}/sharpness").json()
    assert body["edge"] == pytest.approx(2 / 0.01)
    assert body["variants"]["plain"]["eigenvalue"] == [200.0, 200.0]
    assert body["variants"]["bn"] == {
        "step": [0, 100],
        "eigenvalue": [20.0, 20.0],
        "iterations": [7, 7],
    }


@pytest.mark.parametrize("what", WHAT)
def test_pngs_are_plots(client: TestClient, session: Session, what: str) -> None:
    experiment = probed(session, [0, 100, 200])
    response = client.get(f"/experiments/{experiment.id}/{what}.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "no-store"
    assert response.content.startswith(b"\x89PNG")


@pytest.mark.parametrize("what", WHAT)
def test_probes_off_answer_empty_saying_so(client: TestClient, session: Session, what: str) -> None:
    experiment = add_experiment(session, status="succeeded")  # the default spec: probes off
    body = client.get(f"/experiments/{experiment.id}/{what}").json()
    assert body["measured"] is False
    assert "probes were off" in body["message"] and f'"{what}": true' in body["message"]
    assert set(body["variants"]) == {"plain", "bn"}
    assert all(not series or not series.get("step") for series in body["variants"].values())
    png = client.get(f"/experiments/{experiment.id}/{what}.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_one_probe_on_leaves_the_others_off(client: TestClient, session: Session) -> None:
    experiment = add_experiment(session, status="queued", probes={"sharpness": True})
    assert client.get(f"/experiments/{experiment.id}/sharpness").json()["measured"] is True
    assert client.get(f"/experiments/{experiment.id}/ics").json()["measured"] is False


def test_probed_experiment_with_nothing_yet_is_empty(client: TestClient, session: Session) -> None:
    experiment = add_experiment(session, status="queued", probes=PROBES)
    body = client.get(f"/experiments/{experiment.id}/landscape").json()
    assert body["measured"] is True and body["message"] is None
    assert body["variants"]["bn"]["step"] == []


@pytest.mark.parametrize("what", [*WHAT, *(f"{w}.png" for w in WHAT)])
def test_unknown_experiment_is_404(client: TestClient, what: str) -> None:
    response = client.get(f"/experiments/999999/{what}")
    assert response.status_code == 404
    assert "999999" in response.json()["detail"]


def test_bad_id_is_422(client: TestClient) -> None:
    response = client.get("/experiments/abc/landscape")
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("probes", "problem"),
    [
        ({"every": 0}, "every"),
        ({"landscape": "maybe"}, "landscape"),
        ({"hessian": True}, "hessian"),
    ],
)
def test_bad_probes_are_refused_saying_which(
    client: TestClient, probes: dict[str, object], problem: str
) -> None:
    response = client.post("/experiments", json={"probes": probes, "training_batches": 100})
    assert response.status_code == 422
    assert problem in response.text


def test_the_why_preset_probes_its_cells_and_fixes_them(client: TestClient) -> None:
    response = client.post("/sweeps", json={"preset": "why", "base": {"dataset": "fashion-mnist"}})
    assert response.status_code == 202, response.text
    cells = [client.get(cell["url"]).json()["spec"] for cell in response.json()["cells"]]
    assert len(cells) == 5 and all(spec["dataset"] == "fashion-mnist" for spec in cells)
    assert all(spec["probes"] == PROBES for spec in cells)
    assert all(spec["variants"] == ["plain", "bn", "bn_noisy"] for spec in cells)
    assert {(s["activation"], s["learning_rate"], s["use_bad_weights"]) for s in cells} == {
        ("relu", 0.01, False),
        ("relu", 1.0, False),
        ("sigmoid", 0.01, False),
        ("sigmoid", 1.0, False),
        ("relu", 0.01, True),
    }
    refused = client.post("/sweeps", json={"preset": "why", "base": {"probes": {"ics": True}}})
    assert refused.status_code == 422 and "probes" in refused.text


def test_the_report_of_a_probed_sweep_says_it_in_numbers(
    client: TestClient, session: Session
) -> None:
    body = {"grid": {"learning_rate": [0.01, 0.1]}, "base": SHORT | {"probes": PROBES}}
    posted = client.post("/sweeps", json=body).json()
    sweep_id, cells = posted["id"], posted["cells"]
    for cell in cells:
        experiment = queries.get_experiment(session, cell["id"])
        assert experiment is not None
        for step in (0, 100, 200):
            rows = {variant: why_rows(sample(step, variant)) for variant in ("plain", "bn")}
            queries.add_probe_rows(session, experiment, step, rows)
        experiment.status = "succeeded"
    session.commit()

    report = client.get(f"/sweeps/{sweep_id}/report").json()
    for row in report["rows"]:
        # beta: plain 10, 20, 30 at steps 0, 100, 200; bn a tenth of it: medians 20 and 2
        assert row["why"]["plain"] == {"beta_smoothness": 20.0, "sharpness": 200.0}
        assert row["why"]["bn"] == {"beta_smoothness": 2.0, "sharpness": 20.0}
        assert row["beta_smoothness_plain_over_bn"] == pytest.approx(10.0)
    csv = client.get(f"/sweeps/{sweep_id}/report", params={"format": "csv"}).text
    header, first = csv.splitlines()[:2]
    columns = dict(zip(header.split(","), first.split(","), strict=True))
    assert float(columns["plain_beta_smoothness"]) == 20.0
    assert float(columns["beta_smoothness_plain_over_bn"]) == pytest.approx(10.0)
    markdown = client.get(f"/sweeps/{sweep_id}/report", params={"format": "md"}).text
    assert "β plain / BN" in markdown and "| 10.0x |" in markdown


def test_the_report_of_a_sweep_without_probes_has_no_such_numbers(client: TestClient) -> None:
    body = {"grid": {"learning_rate": [0.01, 0.1]}, "base": SHORT}
    sweep_id = client.post("/sweeps", json=body).json()["id"]
    report = client.get(f"/sweeps/{sweep_id}/report").json()
    assert all(row["why"] == {} for row in report["rows"])
    assert "beta_smoothness" not in client.get(f"/sweeps/{sweep_id}/report?format=csv").text
    assert "β plain / BN" not in client.get(f"/sweeps/{sweep_id}/report?format=md").text
