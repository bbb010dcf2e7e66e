"""`bnlab.Client` as a notebook user drives it, against a real running service (API and worker
processes, real HTTP): run and wait, curves as a DataFrame and a plot, checkpoints, predictions
from numpy arrays, PIL images and files, the collapse, sweeps and their report, and errors that
say what went wrong in one line."""

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bnlab import Client
from bnlab.client import ApiError, Experiment, ExperimentCancelled, ExperimentFailed, Unreachable
from bnlab.models.data import load_splits
from tests.service.conftest import SMALL, STEPS, Service

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def succeeded(client: Client) -> Experiment:
    return client.run(activation="relu", **SMALL).wait(progress=False)


@pytest.fixture(scope="module")
def test_images(idx_data_dir: Path) -> np.ndarray:
    """The first test images as 8-bit greys, 28x28 each, white on black like MNIST."""
    images = load_splits("mnist", idx_data_dir, False, 200).test.images[:8]
    return images.numpy().astype(np.uint8)


def test_importing_the_client_imports_neither_torch_nor_the_optional_libraries() -> None:
    check = (
        "import sys, bnlab, bnlab.client; from bnlab import Client; "
        "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'matplotlib', 'PIL', 'tqdm') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_wait_shows_a_progress_bar_and_returns_the_finished_experiment(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = client.run(activation="sigmoid", **SMALL)
    assert experiment.wait() is experiment
    assert experiment.status == "succeeded"
    bar = capsys.readouterr().err  # tqdm.auto outside Jupyter: a text bar on stderr
    assert f"experiment {experiment.id}" in bar
    assert "300/300" in bar and "bn=" in bar and "plain=" in bar


def test_without_tqdm_wait_shows_no_bar(
    client: Client, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # `from tqdm.auto import` now fails
    experiment = client.run(**{**SMALL, "training_batches": 50}).wait()
    assert experiment.status == "succeeded"
    assert capsys.readouterr().err == ""


def test_experiments_lists_them_newest_first(client: Client, succeeded: Experiment) -> None:
    listed = client.experiments(status="succeeded")
    assert succeeded.id in [experiment.id for experiment in listed]
    assert [experiment.id for experiment in listed] == sorted(
        (experiment.id for experiment in listed), reverse=True
    )
    assert all(experiment.status == "succeeded" for experiment in listed)


def test_results_hold_both_nets_test_accuracies(succeeded: Experiment) -> None:
    for variant in ("plain", "bn"):
        assert 0 <= succeeded.results[variant]["test_accuracy"] <= 1
        assert succeeded.results[variant]["final_val_accuracy"] is not None


def test_curve_is_a_dataframe_with_a_row_per_variant_and_sample_point(
    succeeded: Experiment,
) -> None:
    curve = succeeded.curve()
    assert isinstance(curve, pd.DataFrame)
    assert list(curve.columns) == ["step", "variant", "val_accuracy", "train_loss"]
    for variant in ("plain", "bn"):
        assert curve[curve.variant == variant].step.tolist() == STEPS
    assert curve.val_accuracy.between(0, 1).all()


def test_curve_without_pandas_is_plain_lists(
    succeeded: Experiment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now fails
    curve = succeeded.curve()
    assert isinstance(curve, dict)
    assert curve["step"] == STEPS + STEPS
    assert curve["variant"] == ["plain"] * len(STEPS) + ["bn"] * len(STEPS)


def test_plot_draws_both_curves_on_the_current_axes(succeeded: Experiment) -> None:
    figure, ax = plt.subplots()
    try:
        assert succeeded.plot() is ax
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"plain", "bn"}
        curve = succeeded.curve()
        bn = curve[curve.variant == "bn"]
        assert list(lines["bn"].get_xdata()) == bn.step.tolist()
        assert list(lines["bn"].get_ydata()) == bn.val_accuracy.tolist()
        assert ax.get_ylabel() == "validation accuracy"
    finally:
        plt.close(figure)


def test_checkpoint_as_bytes_or_written_to_a_path(succeeded: Experiment, tmp_path: Path) -> None:
    content = succeeded.checkpoint("bn")
    assert isinstance(content, bytes)
    header_length = int.from_bytes(content[:8], "little")  # safetensors: a JSON header first
    assert content[8:9] == b"{" and header_length < len(content)
    path = succeeded.checkpoint("plain", tmp_path / "plain.safetensors")
    assert path == tmp_path / "plain.safetensors"
    assert path.read_bytes()[8:9] == b"{"


def test_predict_takes_numpy_arrays_pil_images_and_paths_alike(
    succeeded: Experiment, test_images: np.ndarray, tmp_path: Path
) -> None:
    image = test_images[0]
    path = tmp_path / "digit.png"
    Image.fromarray(image).save(path)
    answers = [
        succeeded.predict(image),  # 28x28 grey levels
        succeeded.predict(image.reshape(784) / 255.0),  # 784 values in [0, 1]
        succeeded.predict(Image.fromarray(image)),
        succeeded.predict(path),
        succeeded.predict(str(path)),
    ]
    assert len({answer["prediction"] for answer in answers}) == 1
    assert all(answer["mode"] == "population" and answer["variant"] == "bn" for answer in answers)
    assert all(len(answer["probabilities"]) == 10 for answer in answers)


def test_predict_a_batch_gets_an_answer_per_image(
    succeeded: Experiment, test_images: np.ndarray
) -> None:
    one_by_one = [succeeded.predict(image)["prediction"] for image in test_images]
    for batch in (test_images, test_images.reshape(len(test_images), 784), list(test_images)):
        answers = succeeded.predict(batch)
        assert [answer["prediction"] for answer in answers] == one_by_one


def test_one_image_in_batch_mode_gets_the_same_class_whatever_the_image(
    succeeded: Experiment, test_images: np.ndarray
) -> None:
    population = {succeeded.predict(image)["prediction"] for image in test_images}
    batch = {succeeded.predict(image, mode="batch")["prediction"] for image in test_images}
    assert len(population) > 1
    assert len(batch) == 1


def test_predict_refuses_an_array_of_another_shape_saying_which(succeeded: Experiment) -> None:
    with pytest.raises(ValueError, match=r"shape \(27, 27\).*28x28 or 784"):
        succeeded.predict(np.zeros((27, 27)))


def test_collapse_gives_one_class_with_batch_statistics(succeeded: Experiment) -> None:
    collapse = succeeded.collapse(n=50)
    assert collapse["n"] == 50
    assert len(set(collapse["one_at_a_time"]["batch"]["predictions"])) == 1
    assert len(set(collapse["one_at_a_time"]["population"]["predictions"])) > 1


def test_a_failed_experiment_raises_with_the_servers_reason(client: Client) -> None:
    # The stand-in data has no Fashion-MNIST: the job fails saying which files are missing.
    experiment = client.run(**{**SMALL, "dataset": "fashion-mnist"})
    with pytest.raises(ExperimentFailed) as raised:
        experiment.wait(progress=False)
    message = str(raised.value)
    assert message.startswith(f"experiment {experiment.id} failed: ")
    assert "FashionMNIST" in message and "train-images-idx3-ubyte" in message
    assert raised.value.experiment["status"] == "failed"


def test_a_cancelled_experiment_raises_saying_so(client: Client, service: Service) -> None:
    experiment = client.run(**{**SMALL, "training_batches": 200_000, "batches_per_sample": 100})
    service.wait_for(experiment.id, lambda e: e["status"] == "running")
    experiment.cancel()
    with pytest.raises(ExperimentCancelled, match=f"experiment {experiment.id} cancelled"):
        experiment.wait(progress=False)
    assert experiment.status == "cancelled"


def test_a_4xx_surfaces_as_an_exception_whose_text_is_the_servers_message(
    client: Client, service: Service
) -> None:
    with pytest.raises(ApiError) as raised:
        client.experiment(987654)
    served = service.client.get("/experiments/987654")
    assert served.status_code == 404
    assert str(raised.value) == served.json()["detail"] == "no experiment with id 987654"
    with pytest.raises(ApiError, match=r"^learning_rate: .*greater than 0"):
        client.run(learning_rate=-1)


def test_finished_experiment_cannot_be_cancelled_and_says_why(succeeded: Experiment) -> None:
    with pytest.raises(ApiError, match="is succeeded: only a queued or running experiment"):
        succeeded.cancel()


def test_a_server_that_is_down_is_one_clear_exception() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket closes
    with pytest.raises(Unreachable) as raised:
        Client(f"http://127.0.0.1:{port}").run(activation="relu")
    assert str(raised.value).startswith(f"cannot reach the bnlab API at http://127.0.0.1:{port}")
    assert "bnlab up" in str(raised.value)
    # One exception, not a chain of httpx's: nothing shown above it in a traceback.
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_the_environment_chooses_the_server_and_token(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BNLAB_URL", url)
    monkeypatch.setenv("BNLAB_API_TOKEN", "secret")
    client = Client()
    assert client.url == url
    assert client.http.headers["Authorization"] == "Bearer secret"
    monkeypatch.delenv("BNLAB_URL")
    assert Client().url == "http://127.0.0.1:8000"


def test_update_names_notes_and_tags_an_experiment_found_by_its_tags(
    client: Client, succeeded: Experiment
) -> None:
    tag = f"lesson-{succeeded.id}"
    assert succeeded.update(name="relu, lr 0.5", notes="**BN** wins", tags=[tag, "relu"]) is (
        succeeded
    )
    again = client.experiment(succeeded.id)  # as the server keeps it
    assert (again.name, again.notes, set(again.tags)) == (
        "relu, lr 0.5",
        "**BN** wins",
        {tag, "relu"},
    )

    succeeded.update(notes="BN wins, again")  # what is left out stays
    assert (succeeded.name, succeeded.notes) == ("relu, lr 0.5", "BN wins, again")
    assert set(succeeded.tags) == {tag, "relu"}
    assert succeeded.update(name=None).name is None

    assert [experiment.id for experiment in client.experiments(tag=tag)] == [succeeded.id]
    assert [experiment.id for experiment in client.experiments(tag=[tag, "relu"])] == [succeeded.id]
    assert client.experiments(tag=[tag, "sigmoid"]) == []
    with pytest.raises(ApiError, match=r"a tag is 1 to .* letters, digits"):
        succeeded.update(tags=["not a tag"])


def test_compare_puts_experiments_side_by_side_naming_what_differs(
    client: Client, succeeded: Experiment
) -> None:
    other = client.run(activation="sigmoid", **SMALL).wait(progress=False)
    comparison = client.compare([succeeded.id, other.id])
    assert comparison.info["differing"] == ["activation"]

    table = comparison.table()
    assert isinstance(table, pd.DataFrame)
    assert sorted(zip(table.experiment_id, table.variant, strict=True)) == sorted(
        (experiment, variant)
        for experiment in (succeeded.id, other.id)
        for variant in ("plain", "bn")
    )
    assert table.test_accuracy.between(0, 1).all()

    figure, ax = plt.subplots()
    try:
        assert comparison.plot() is ax
        labels = [line.get_label() for line in ax.get_lines()]
        assert sorted(labels) == sorted(table.label)
        assert sum("sigmoid" in label for label in labels) == 2
    finally:
        plt.close(figure)
    assert comparison.png().startswith(b"\x89PNG")

    with pytest.raises(ApiError, match="987654"):
        client.compare([succeeded.id, 987654])


def test_a_sweep_waits_for_its_cells_and_reports_plain_next_to_bn(client: Client) -> None:
    base = {key: SMALL[key] for key in ("batches_per_sample", "validation_size", "seed")}
    sweep = client.sweep(grid={"learning_rate": [0.5, 1]}, base={**base, "training_batches": 100})
    assert sweep.wait(progress=False) is sweep
    assert sweep.status == "succeeded"

    report = sweep.report()
    assert isinstance(report, pd.DataFrame)
    assert sorted(report.learning_rate) == [0.5, 1]
    for column in ("plain_test_accuracy", "bn_test_accuracy", "bn_steps_to_90", "verdict"):
        assert column in report.columns
    assert report.verdict.isin(["BN better", "same", "BN worse"]).all()

    sweep.update(name="learning rates", tags=["lr-grid"])
    assert [found.id for found in client.sweeps(tag="lr-grid")] == [sweep.id]
    assert client.existing_sweep(sweep.id).name == "learning rates"

    cells = sweep.experiments
    assert [cell.status for cell in cells] == ["succeeded", "succeeded"]
    figure = sweep.plot()
    try:
        panels = [ax for ax in figure.axes if ax.get_visible()]
        assert len(panels) == 2
        for panel in panels:
            assert {line.get_label() for line in panel.get_lines()} == {"plain", "bn"}
    finally:
        plt.close(figure)


def test_a_sweep_with_a_failed_cell_raises_naming_it(client: Client) -> None:
    base: dict[str, Any] = {**SMALL, "training_batches": 100}
    sweep = client.sweep(grid={"dataset": ["mnist", "fashion-mnist"]}, base=base)
    with pytest.raises(ApiError) as raised:
        sweep.wait(progress=False)
    failed = next(cell for cell in sweep.info["cells"] if cell["values"]["dataset"] != "mnist")
    assert f"experiment {failed['id']} failed (" in str(raised.value)
    assert "FashionMNIST" in str(raised.value)
