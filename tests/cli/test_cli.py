"""The `bnlab` client commands as a person runs them, against a real `bnlab api` and worker (the
embedded stack) over HTTP: live progress, result tables, JSON output, exit codes, and one clear
line instead of a traceback when something is wrong."""

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel
from typer.testing import CliRunner, Result

from bnlab.cli import app
from bnlab.models.data import load_splits
from tests.service.conftest import Service, running_service, service_env

pytestmark = pytest.mark.service

TINY = [
    "--learning-rate", "0.5", "--training-batches", "300", "--batches-per-sample", "50",
    "--validation-size", "200", "--seed", "3",
]  # fmt: skip


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, idx_data_dir: Path) -> Iterator[Service]:
    """The embedded stack: what the CLI talks to by default (it is the same over HTTP on
    PostgreSQL and Redis, which tests/service covers)."""
    tmp_path = tmp_path_factory.mktemp("cli")
    with running_service(tmp_path, service_env(tmp_path, idx_data_dir)) as service:
        yield service


@pytest.fixture(scope="module")
def url(service: Service) -> str:
    return str(service.client.base_url).rstrip("/")


def bnlab(*args: str, **env: str) -> Result:
    # Wide enough that rich keeps each table row on one line.
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **env})


def json_of(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def succeeded(url: str) -> dict[str, Any]:
    """An experiment run to the end with `--wait --json`."""
    result = bnlab(
        "experiment", "run", "--activation", "relu", *TINY, "--wait", "--json", "--url", url
    )
    experiment = json_of(result)
    assert experiment["status"] == "succeeded"
    return experiment


def test_run_wait_shows_progress_per_variant_then_a_results_table(url: str) -> None:
    result = bnlab(
        "experiment", "run", "--activation", "sigmoid", "--bad-weights", *TINY, "--wait",
        "--url", url,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "queued" in out
    # One bar per variant, run to the end, with the latest validation accuracy.
    for variant in ("plain", "bn"):
        bar = next(line for line in out.splitlines() if line.strip().startswith(variant))
        assert "300/300" in bar and "val acc" in bar and "%" in bar
    assert "test acc" in out and "steps to 90%" in out
    rows = [line for line in out.splitlines() if line.strip("│ ").startswith(("plain", "bn"))]
    assert len(rows) >= 4  # two bars and two table rows
    assert "succeeded" in out


def test_run_wait_json_prints_the_finished_experiment(succeeded: dict[str, Any]) -> None:
    assert succeeded["spec"]["activation"] == "relu"
    assert succeeded["spec"]["learning_rate"] == 0.5
    assert succeeded["progress"]["step"] == 300
    for variant in ("plain", "bn"):
        assert 0.5 < succeeded["results"][variant]["test_accuracy"] <= 1


def test_a_failed_experiment_exits_non_zero_with_its_reason(url: str) -> None:
    result = bnlab("experiment", "run", "--dataset", "fashion-mnist", *TINY, "--wait", "--url", url)

    assert result.exit_code == 1
    assert "failed" in result.stderr and "FashionMNIST" in result.stderr
    assert "Traceback" not in result.output


def test_list_show_and_curve_read_the_experiment(
    url: str, succeeded: dict[str, Any], tmp_path: Path
) -> None:
    experiment_id = str(succeeded["id"])

    listed = json_of(bnlab("experiment", "list", "--json", "--url", url))
    assert experiment_id in {str(item["id"]) for item in listed["items"]}
    table = bnlab("experiment", "list", "--status", "succeeded", "--url", url)
    assert table.exit_code == 0 and experiment_id in table.stdout and "relu" in table.stdout

    assert json_of(bnlab("experiment", "show", experiment_id, "--json", "--url", url)) == succeeded
    shown = bnlab("experiment", "show", experiment_id, "--url", url)
    assert shown.exit_code == 0 and "succeeded" in shown.stdout and "step 300/300" in shown.stdout

    curve = json_of(bnlab("experiment", "curve", experiment_id, "--json", "--url", url))
    assert curve["series"]["bn"]["step"] == [0, 50, 100, 150, 200, 250, 300]
    png = tmp_path / "curve.png"
    plotted = bnlab("experiment", "curve", experiment_id, "--png", str(png), "--url", url)
    assert plotted.exit_code == 0, plotted.output
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "300" in plotted.stdout  # the table's last row


def test_run_trains_the_variants_asked_for_and_show_and_curve_print_each(url: str) -> None:
    asked = ["plain", "layer_norm", "group_norm"]
    options = [option for variant in asked for option in ("--variant", variant)]
    result = bnlab(
        "experiment", "run", *TINY, *options, "--groups", "4", "--wait", "--json", "--url", url
    )
    experiment = json_of(result)
    assert experiment["status"] == "succeeded"
    assert experiment["spec"]["variants"] == asked and experiment["spec"]["groups"] == 4
    assert list(experiment["results"]) == asked

    shown = bnlab("experiment", "show", str(experiment["id"]), "--url", url)
    assert shown.exit_code == 0, shown.output
    rows = {line.strip("│ ").split()[0] for line in shown.stdout.splitlines() if "│" in line}
    assert set(asked) <= rows  # a results row per variant
    curve = bnlab("experiment", "curve", str(experiment["id"]), "--url", url)
    assert curve.exit_code == 0, curve.output
    for variant in asked:
        assert f"{variant} val acc" in curve.stdout and f"{variant} loss" in curve.stdout


def test_annotate_names_notes_and_tags_an_experiment_shown_and_listed_by_tag(
    url: str, succeeded: dict[str, Any]
) -> None:
    experiment = str(succeeded["id"])
    tag = f"lesson-{experiment}"
    result = bnlab(
        "experiment", "annotate", experiment, "--name", "relu, lr 0.5", "--notes",
        "BN *wins*", "--tag", tag, "--tag", "relu", "--url", url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = bnlab("experiment", "show", experiment, "--url", url)
    assert shown.exit_code == 0, shown.output
    assert "name: relu, lr 0.5" in shown.stdout
    assert tag in shown.stdout and "BN wins" in shown.stdout  # the notes, rendered
    listed = json_of(bnlab("experiment", "list", "--tag", tag, "--json", "--url", url))
    assert [item["id"] for item in listed["items"]] == [succeeded["id"]]

    bad = bnlab("experiment", "annotate", experiment, "--tag", "not a tag", "--url", url)
    assert bad.exit_code == 1
    assert bad.stderr.startswith("bnlab: ") and "a tag is" in bad.stderr


def test_bnlab_url_in_the_environment_chooses_the_server(url: str) -> None:
    listed = json_of(bnlab("experiment", "list", "--json", BNLAB_URL=url))
    assert "items" in listed


def test_cancel_stops_an_experiment(url: str, service: Service) -> None:
    queued = json_of(
        bnlab("experiment", "run", "--training-batches", "200000", "--json", "--url", url)
    )
    result = bnlab("experiment", "cancel", str(queued["id"]), "--url", url)
    assert result.exit_code == 0, result.output
    assert f"experiment {queued['id']}" in result.stdout
    # Queued: cancelled now; running: at its next sample point. Either way it ends cancelled.
    ended = service.wait_for(
        queued["id"], lambda e: e["status"] != "running" and e["status"] != "queued"
    )
    assert ended["status"] == "cancelled"


def test_predict_an_image_in_both_modes(
    url: str, succeeded: dict[str, Any], idx_data_dir: Path, tmp_path: Path
) -> None:
    image = load_splits("mnist", idx_data_dir, False, 200).test.images[0].numpy().astype(np.uint8)
    path = tmp_path / "digit.png"
    Image.fromarray(image).save(path)
    experiment = str(succeeded["id"])

    population = json_of(
        bnlab("predict", str(path), "--experiment", experiment, "--json", "--url", url)
    )
    assert population["mode"] == "population" and population["variant"] == "bn"
    assert 0 <= population["prediction"] <= 9
    batch = bnlab("predict", str(path), "--experiment", experiment, "--mode", "batch", "--url", url)
    assert batch.exit_code == 0, batch.output
    assert "statistics of this one image" in batch.stdout


def test_collapse_shows_one_class_for_every_image_with_batch_statistics(
    url: str, succeeded: dict[str, Any]
) -> None:
    result = bnlab("collapse", str(succeeded["id"]), "--n", "50", "--url", url)
    assert result.exit_code == 0, result.output
    batch_row = next(line for line in result.stdout.splitlines() if "one image" in line)
    assert "all " in batch_row  # every image got the same class
    population_row = next(line for line in result.stdout.splitlines() if "population" in line)
    assert "different" in population_row
    collapsed = json_of(bnlab("collapse", str(succeeded["id"]), "--json", "--url", url))
    assert len(set(collapsed["one_at_a_time"]["batch"]["predictions"])) == 1


def test_sweep_run_wait_then_its_report_as_markdown_csv_and_json(url: str) -> None:
    result = bnlab(
        "sweep", "run", "--grid", "learning_rate=0.5,1", "--set", "training_batches=100",
        "--set", "batches_per_sample=50", "--set", "validation_size=200", "--wait", "--url", url,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    sweep_id = re.search(r"sweep (\d+)", result.stdout).group(1)  # type: ignore[union-attr]
    assert "2/2" in result.stdout  # the bar of finished cells
    assert "| learning_rate |" in result.stdout.replace("  ", " ")  # the Markdown report
    csv = bnlab("sweep", "report", sweep_id, "--format", "csv", "--url", url)
    assert csv.exit_code == 0, csv.output
    header, *rows = csv.stdout.strip().splitlines()
    assert "learning_rate" in header and len(rows) == 2
    report = json_of(bnlab("sweep", "report", sweep_id, "--json", "--url", url))
    assert report["complete"] is True
    assert sorted(row["values"]["learning_rate"] for row in report["rows"]) == [0.5, 1]


def test_an_unknown_id_gets_one_clear_line(url: str) -> None:
    for args in (["experiment", "show", "987654"], ["experiment", "curve", "987654"]):
        result = bnlab(*args, "--url", url)
        assert result.exit_code == 1
        assert result.stderr.strip() == "bnlab: no experiment with id 987654"
    report = bnlab("sweep", "report", "987654", "--url", url)
    assert report.exit_code == 1
    assert report.stderr.strip() == "bnlab: no sweep with id 987654"


def test_a_server_that_is_down_gets_one_clear_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket closes
    result = bnlab("experiment", "list", "--url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"bnlab: cannot reach the bnlab API at http://127.0.0.1:{port}")
    assert "Traceback" not in result.output


def test_invalid_choices_are_refused_by_the_cli_listing_the_valid_ones() -> None:
    result = bnlab("experiment", "run", "--activation", "swish", "--url", "http://127.0.0.1:1")
    assert result.exit_code == 2
    for choice in ("relu", "sigmoid", "tanh", "leaky_relu", "elu"):
        assert choice in result.output
    mode = bnlab("predict", __file__, "--experiment", "1", "--mode", "average")
    assert mode.exit_code == 2 and "population" in mode.output and "batch" in mode.output


def offered(*args: str) -> list[str]:
    """The choices the CLI lists when it refuses the value of an option in `args`."""
    result = bnlab(*args)
    assert result.exit_code == 2, result.output
    listed = re.search(r"is not one of (.+?)\.\s", result.output)
    assert listed, result.output
    return re.findall(r"'([^']*)'", listed.group(1))


def test_the_clis_choices_are_the_apis() -> None:
    from bnlab.api.experiments.schemas import ExperimentOut, PredictQuery
    from bnlab.spec import ExperimentSpec

    def api(model: type[BaseModel], field: str) -> list[str]:
        return list(get_args(model.model_fields[field].annotation))

    run, predict = ("experiment", "run"), ("predict", __file__, "--experiment", "1")
    assert offered(*run, "--activation", "x") == api(ExperimentSpec, "activation")
    assert offered(*run, "--dataset", "x") == api(ExperimentSpec, "dataset")
    assert offered(*run, "--device", "x") == api(ExperimentSpec, "device")
    [variant] = api(ExperimentSpec, "variants")  # a list of them
    assert offered(*run, "--variant", "x") == list(get_args(variant))
    assert offered("experiment", "list", "--status", "x") == api(ExperimentOut, "status")
    assert offered(*predict, "--variant", "x") == api(PredictQuery, "variant")
    assert offered(*predict, "--mode", "x") == api(PredictQuery, "mode")
