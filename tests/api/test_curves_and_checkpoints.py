"""Following an experiment: its curve as JSON and as a plot, and its checkpoint files."""

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from bnlab.api.core.plotting import curve_png, title
from bnlab.api.experiments.schemas import Series
from bnlab.store import queries
from bnlab.store.tables import CurvePoint, Experiment
from bnlab.vocabulary import VARIANTS
from tests.api.conftest import add_checkpoints, add_experiment, tamper

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def add_points(session: Session, experiment: Experiment, variant: str, points: list[tuple]) -> None:
    run = queries.run_of(experiment, variant)
    for step, val_accuracy, train_loss in points:
        session.add(
            CurvePoint(run_id=run.id, step=step, val_accuracy=val_accuracy, train_loss=train_loss)
        )
    session.commit()


@pytest.fixture
def running(session: Session) -> Experiment:
    """A running experiment part-way through, its points written out of step order."""
    experiment = add_experiment(session, status="running", activation="sigmoid", learning_rate=1.0)
    add_points(session, experiment, "bn", [(100, 0.9, 0.3), (0, 0.1, None), (50, 0.8, 0.6)])
    add_points(session, experiment, "plain", [(50, 0.4, 1.9), (0, 0.12, None)])
    return experiment


def test_the_curve_comes_per_variant_in_step_order(client: TestClient, running: Experiment) -> None:
    response = client.get(f"/experiments/{running.id}/curve")

    assert response.status_code == 200
    assert response.json() == {
        "series": {
            "plain": {"step": [0, 50], "val_accuracy": [0.12, 0.4], "train_loss": [None, 1.9]},
            "bn": {
                "step": [0, 50, 100],
                "val_accuracy": [0.1, 0.8, 0.9],
                "train_loss": [None, 0.6, 0.3],
            },
        }
    }


def test_a_curve_with_no_points_yet_is_empty(client: TestClient, session: Session) -> None:
    experiment = add_experiment(session)
    series = client.get(f"/experiments/{experiment.id}/curve").json()["series"]
    empty = {"step": [], "val_accuracy": [], "train_loss": []}
    assert series == {"plain": empty, "bn": empty}


def test_the_curve_plot_is_a_png(client: TestClient, running: Experiment) -> None:
    response = client.get(f"/experiments/{running.id}/curve.png")

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (800, 500)
    # The two curves are drawn in colour over a white/grey chart.
    colours = {colour for _count, colour in image.convert("RGB").getcolors(maxcolors=1 << 24)}
    assert any(r > 200 and g < 180 and b < 100 for r, g, b in colours)  # plain, orange
    assert any(b > 150 and r < 100 for r, g, b in colours)  # bn, blue


def test_the_plot_of_an_empty_curve_is_still_a_png(client: TestClient, session: Session) -> None:
    experiment = add_experiment(session)
    response = client.get(f"/experiments/{experiment.id}/curve.png")
    assert response.status_code == 200
    assert response.content.startswith(PNG_SIGNATURE)
    Image.open(io.BytesIO(response.content)).verify()


def test_plots_drawn_at_the_same_time_do_not_draw_on_each_other() -> None:
    def series(n: int) -> dict[str, Series]:
        steps = list(range(0, 50 * (n + 2), 50))
        accuracy = [min(0.99, 0.1 + 0.2 * i / (n + 1)) for i in range(len(steps))]
        points = Series(step=steps, val_accuracy=accuracy, train_loss=[None] * len(steps))
        return {"plain": points, "bn": points}

    spec = {"activation": "relu", "learning_rate": 0.01, "training_batches": 500}
    alone = [curve_png(series(n), spec) for n in range(6)]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda n: curve_png(series(n), spec), range(6)))
    assert together == alone
    assert len(set(alone)) == 6


def test_the_plot_title_names_the_spec() -> None:
    spec = {
        "dataset": "mnist",
        "activation": "sigmoid",
        "learning_rate": 1.0,
        "use_bad_weights": True,
        "weight_std": None,
        "training_batches": 2000,
    }
    assert title(spec) == "mnist, sigmoid, lr 1.0, bad init, 2,000 batches"
    assert "good init" in title(spec | {"use_bad_weights": False})
    assert "init std 0.5" in title(spec | {"use_bad_weights": False, "weight_std": 0.5})
    rnn = spec | {"net": "rnn", "rnn_hidden": 64, "sequence": "pixels"}
    assert title(rnn) == "mnist, LSTM 64 by pixels, lr 1.0, bad init, 2,000 batches"


def test_a_checkpoint_downloads_as_a_safetensors_file(
    client: TestClient, session: Session, tmp_path: Path
) -> None:
    experiment = add_experiment(session, status="succeeded")
    paths = add_checkpoints(session, experiment, tmp_path / "checkpoints")

    response = client.get(f"/experiments/{experiment.id}/checkpoints/plain")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert (
        f'filename="experiment-{experiment.id}-plain.safetensors"'
        in (response.headers["content-disposition"])
    )
    assert response.content == paths["plain"].read_bytes()
    assert response.content != paths["bn"].read_bytes()


def test_no_checkpoint_yet_is_404(client: TestClient, session: Session) -> None:
    experiment = add_experiment(session, status="running")
    response = client.get(f"/experiments/{experiment.id}/checkpoints/bn")
    assert response.status_code == 404
    assert response.json()["detail"] == f"experiment {experiment.id} has no bn checkpoint yet"


@pytest.mark.parametrize(
    ("fault", "said"), [(Path.unlink, "missing on disk"), (tamper, "changed on disk")]
)
def test_download_and_predict_refuse_a_damaged_checkpoint_alike(
    client: TestClient, session: Session, tmp_path: Path, fault: Any, said: str
) -> None:
    # A 409 on both (it was a 404 on download): the checkpoint is recorded, so the URL is right;
    # what is wrong is the server's file.
    experiment = add_experiment(session, status="succeeded")
    fault(add_checkpoints(session, experiment, tmp_path / "checkpoints")["bn"])
    download = client.get(f"/experiments/{experiment.id}/checkpoints/bn")
    predict = client.post(
        "/predict", params={"experiment_id": experiment.id}, json={"pixels": [0.0] * 784}
    )
    assert download.status_code == predict.status_code == 409
    assert download.json() == predict.json()
    assert said in download.json()["detail"]


def test_checkpoint_variant_must_be_one_of_the_variants(
    client: TestClient, session: Session
) -> None:
    experiment = add_experiment(session, status="succeeded")
    response = client.get(f"/experiments/{experiment.id}/checkpoints/relu")
    assert response.status_code == 422
    *first, last = (repr(variant) for variant in VARIANTS)
    valid = f"{', '.join(first)} or {last}"  # every variant, bn_noisy included
    assert "'bn_noisy'" in valid
    assert valid in response.json()["detail"][0]["msg"]
