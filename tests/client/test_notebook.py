"""examples/study.ipynb, executed cell by cell in a real kernel (nbclient) against the real
service of tests/client, on its small data, so the example cannot rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.service

NOTEBOOK = Path(__file__).parents[2] / "examples" / "study.ipynb"


def outputs(cell: nbformat.NotebookNode) -> str:
    """What a cell showed as text: its printed output and its value's text form."""
    texts = [output.get("text", "") for output in cell.outputs]
    texts += [output.get("data", {}).get("text/plain", "") for output in cell.outputs]
    return "\n".join(texts)


def cell_with(cells: list[nbformat.NotebookNode], fragment: str) -> nbformat.NotebookNode:
    return next(cell for cell in cells if fragment in cell.source)


def shows_an_image(cell: nbformat.NotebookNode) -> bool:
    return any("image/png" in output.get("data", {}) for output in cell.outputs)


def test_the_study_notebook_runs_start_to_finish(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel inherits this environment: the test service, and the small data's sizes.
    monkeypatch.setenv("BNLAB_URL", url)
    monkeypatch.setenv("BNLAB_EXAMPLE_TRAINING_BATCHES", "200")
    monkeypatch.setenv("BNLAB_EXAMPLE_VALIDATION_SIZE", "200")
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert f"Client('{url}')" in outputs(cell_with(code, "client = Client()"))
    assert "succeeded" in outputs(cell_with(code, "experiment.wait()"))
    assert shows_an_image(cell_with(code, "experiment.plot()"))
    assert shows_an_image(cell_with(code, "sweep.plot("))
    # The three strokes: answers vary with population statistics, never with the batch's.
    header, *rows = outputs(cell_with(code, "digits = stroke_digits()")).strip().splitlines()
    assert header.split() == ["population", "batch"] and len(rows) == 3
    assert len({row.split()[-1] for row in rows}) == 1
    assert "the whole test set in batches of" in outputs(cell_with(code, "whole = collapse"))
    report = outputs(cell_with(code, "report = sweep.report()"))
    assert report.count("relu") == 2 and report.count("sigmoid") == 2
    compared = cell_with(code, "client.compare(")
    assert shows_an_image(compared) and "lr 0.1" in outputs(compared)
    assert "['relu at lr 1']" in outputs(cell_with(code, "experiment.update("))
