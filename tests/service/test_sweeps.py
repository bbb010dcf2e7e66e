"""Sweeps end to end, on both stacks: a grid posted over HTTP, its cells trained by a real worker
as batched groups, read back as ordinary experiments, reported as JSON, CSV, Markdown and PNG;
a cell cancelled inside a running group, a whole sweep cancelled, and a group handed back by a
worker that shuts down and resumed by the next one."""

import csv
import io
import signal

import pytest

from tests.service.conftest import Service

pytestmark = pytest.mark.service

SMALL = {"training_batches": 100, "batches_per_sample": 25, "validation_size": 200, "seed": 3}
# Learning rates where training on the stand-in is stable, so that a cell trained in a group
# and the same experiment trained alone give the same curve (see tests/models/test_stacked.py).
GRID = {"activation": ["relu", "sigmoid"], "learning_rate": [0.05, 0.2]}


def wait_for_sweep(service: Service, sweep_id: int, done, timeout: float = 180) -> dict:
    return service.poll(f"/sweeps/{sweep_id}", done, timeout)


def finished(sweep: dict) -> bool:
    return sweep["status"] in ("succeeded", "failed", "cancelled")


def test_a_grid_trains_as_batched_groups_and_reports(service: Service) -> None:
    posted = service.client.post("/sweeps", json={"grid": GRID, "base": SMALL})
    assert posted.status_code == 202, posted.text
    sweep_id = posted.json()["id"]

    sweep = wait_for_sweep(service, sweep_id, finished)
    assert sweep["status"] == "succeeded", sweep
    assert sweep["counts"]["succeeded"] == 4
    assert sweep["progress"] == {"steps_done": 400, "steps_total": 400, "fraction": 1.0}
    ids = [cell["id"] for cell in sweep["cells"]]
    listed = service.client.get("/experiments", params={"limit": 500}).json()["items"]
    assert set(ids) <= {experiment["id"] for experiment in listed}

    # Each cell reads as a lone experiment: results, curve, checkpoints.
    for cell in sweep["cells"]:
        experiment = service.client.get(cell["url"]).json()
        assert experiment["status"] == "succeeded"
        assert experiment["progress"]["step"] == 100
        for variant in ("plain", "bn"):
            results = experiment["results"][variant]
            assert results["test_accuracy"] is not None
            assert results["final_val_accuracy"] is not None
        series = service.client.get(f"{cell['url']}/curve").json()["series"]
        assert series["bn"]["step"] == [0, 25, 50, 75, 100]
        download = service.client.get(f"{cell['url']}/checkpoints/bn")
        assert download.status_code == 200 and len(download.content) > 1000
    # relu cells and sigmoid cells were trained as two batched models, not one by one
    assert service.log("worker-cpu").count("cells train as one batched model") >= 2

    # ... and gives the curve the same experiment gives alone.
    relu_fast = next(
        c for c in sweep["cells"] if c["values"] == {"activation": "relu", "learning_rate": 0.2}
    )
    alone = service.client.post(
        "/experiments", json={**SMALL, "activation": "relu", "learning_rate": 0.2}
    ).json()
    service.wait_for(alone["id"], lambda e: e["status"] in ("succeeded", "failed"))
    lone_curve = service.client.get(f"/experiments/{alone['id']}/curve").json()["series"]
    cell_curve = service.client.get(f"{relu_fast['url']}/curve").json()["series"]
    for variant in ("plain", "bn"):
        assert cell_curve[variant]["val_accuracy"] == pytest.approx(
            lone_curve[variant]["val_accuracy"], abs=1e-4
        )
    # what the worker records inside the nets at each sample point, too
    lone_inside = service.client.get(f"/experiments/{alone['id']}/activations").json()
    cell_inside = service.client.get(f"{relu_fast['url']}/activations").json()
    for variant in ("plain", "bn"):
        assert cell_inside["variants"][variant]
        assert len(cell_inside["variants"][variant]) == len(lone_inside["variants"][variant])

    report = service.client.get(f"/sweeps/{sweep_id}/report").json()
    assert report["complete"] is True
    assert report["columns"] == ["activation", "learning_rate"]
    assert [row["values"] for row in report["rows"]] == [
        {"activation": a, "learning_rate": lr} for a in ("relu", "sigmoid") for lr in (0.05, 0.2)
    ]
    assert all(row["verdict"] in ("BN better", "same", "BN worse") for row in report["rows"])
    as_csv = service.client.get(f"/sweeps/{sweep_id}/report", headers={"Accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["bn_test_accuracy"] for r in rows] == [
        str(row["bn"]["test_accuracy"]) for row in report["rows"]
    ]
    as_md = service.client.get(f"/sweeps/{sweep_id}/report?format=md").text
    assert "4 of 4 cells succeeded (complete)" in as_md and "| relu | 0.05 |" in as_md
    png = service.client.get(f"/sweeps/{sweep_id}/report.png")
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")


def test_a_cell_cancelled_in_a_running_group_leaves_it_and_the_others_finish(
    service: Service,
) -> None:
    long = {**SMALL, "training_batches": 2000, "batches_per_sample": 50}
    body = {"grid": {"learning_rate": [0.05, 0.1, 0.2]}, "base": long}
    sweep_id = service.client.post("/sweeps", json=body).json()["id"]
    sweep = wait_for_sweep(
        service, sweep_id, lambda s: all(c["progress"]["step"] > 0 for c in s["cells"])
    )
    middle = sweep["cells"][1]
    cancelled = service.client.post(f"{middle['url']}/cancel")
    assert cancelled.status_code == 200, cancelled.text

    sweep = wait_for_sweep(service, sweep_id, finished)
    statuses = [cell["status"] for cell in sweep["cells"]]
    assert statuses == ["succeeded", "cancelled", "succeeded"], sweep
    assert sweep["status"] == "cancelled"
    stopped = service.client.get(middle["url"]).json()
    assert 0 < stopped["progress"]["step"] < 2000
    report = service.client.get(f"/sweeps/{sweep_id}/report").json()
    assert [row["done"] for row in report["rows"]] == [1, 0, 1]


def test_cancelling_a_sweep_stops_every_cell(service: Service) -> None:
    body = {"grid": {"learning_rate": [0.05, 0.1]}, "base": {**SMALL, "training_batches": 200_000}}
    sweep_id = service.client.post("/sweeps", json=body).json()["id"]
    wait_for_sweep(service, sweep_id, lambda s: s["counts"]["running"] == 2)

    response = service.client.post(f"/sweeps/{sweep_id}/cancel")
    assert response.status_code == 200, response.text
    sweep = wait_for_sweep(service, sweep_id, finished, timeout=60)
    assert [cell["status"] for cell in sweep["cells"]] == ["cancelled", "cancelled"]
    report = service.client.get(f"/sweeps/{sweep_id}/report").json()
    assert report["complete"] is True and all(row["verdict"] is None for row in report["rows"])


def test_sigterm_hands_a_group_back_and_the_next_worker_resumes_it_as_one(
    service: Service,
) -> None:
    """Last in this module: it replaces the module's worker."""
    spec = {**SMALL, "training_batches": 600, "batches_per_sample": 20}
    body = {"grid": {"learning_rate": [0.05, 0.1]}, "base": spec}
    sweep_id = service.client.post("/sweeps", json=body).json()["id"]
    wait_for_sweep(
        service, sweep_id, lambda s: all(c["progress"]["step"] >= 100 for c in s["cells"])
    )
    worker = service.processes["worker-cpu"]

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    handed_back = service.client.get(f"/sweeps/{sweep_id}").json()
    assert [cell["status"] for cell in handed_back["cells"]] == ["queued", "queued"]
    (step,) = {cell["progress"]["step"] for cell in handed_back["cells"]}
    assert 100 <= step < 600

    service.start_worker("cpu", name="worker-next")
    sweep = wait_for_sweep(service, sweep_id, finished)
    assert sweep["status"] == "succeeded", sweep
    assert f"resumes at step {step}" in service.log("worker-next")
    for cell in sweep["cells"]:
        series = service.client.get(f"{cell['url']}/curve").json()["series"]
        assert series["plain"]["step"] == series["bn"]["step"] == list(range(0, 601, 20))
