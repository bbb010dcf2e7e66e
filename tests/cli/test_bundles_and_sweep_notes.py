"""`bnlab experiment bundle | import`, `bnlab reproduce` refusing what is no bundle, and `bnlab
sweep annotate`, as a person runs them against a real `bnlab api` and worker (embedded stack)."""

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from bnlab.cli import app
from bnlab.vocabulary import TERMINAL
from tests.service.conftest import SMALL, Service, running_service, service_env

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, idx_data_dir: Path) -> Iterator[Service]:
    tmp_path = tmp_path_factory.mktemp("cli-bundles")
    with running_service(tmp_path, service_env(tmp_path, idx_data_dir)) as service:
        yield service


@pytest.fixture(scope="module")
def url(service: Service) -> str:
    return str(service.client.base_url).rstrip("/")


def bnlab(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def finished(service: Service) -> dict[str, Any]:
    created = service.client.post("/experiments", json=SMALL).json()
    done = service.wait_for(created["id"], lambda e: e["status"] in TERMINAL)
    assert done["status"] == "succeeded", done
    return done


def test_bundle_writes_the_zip_and_import_takes_it_in(
    url: str, finished: dict[str, Any], tmp_path: Path, service: Service
) -> None:
    target = tmp_path / "mine.zip"
    result = bnlab("experiment", "bundle", str(finished["id"]), "-o", str(target), "--url", url)
    assert result.exit_code == 0, result.output
    assert f"wrote {target}" in result.stderr
    with zipfile.ZipFile(target) as archive:
        assert "manifest.json" in archive.namelist()
        assert json.loads(archive.read("spec.json")) == finished["spec"]

    result = bnlab("experiment", "import", str(target), "--url", url)
    assert result.exit_code == 0, result.output
    assert "imported from mine.zip" in result.stdout
    assert f"(experiment {finished['id']} there)" in result.stdout
    newest = service.client.get("/experiments", params={"limit": 1}).json()["items"][0]
    assert newest["imported_from"]["file"] == "mine.zip"
    assert newest["status"] == "succeeded"
    shown = bnlab("experiment", "show", str(newest["id"]), "--url", url)
    assert shown.exit_code == 0, shown.output
    assert f"imported from: experiment {finished['id']} of mine.zip" in shown.stdout
    cpu = finished["provenance"]["cpu"]
    assert f"trained on: {cpu['model']} ({cpu['capability']})" in shown.stdout


def test_what_cannot_be_done_is_one_line_and_exit_1(
    url: str, service: Service, tmp_path: Path
) -> None:
    queued = service.client.post("/experiments", json={**SMALL, "device": "gpu"}).json()
    result = bnlab("experiment", "bundle", str(queued["id"]), "--url", url)
    assert result.exit_code == 1
    assert "queued" in result.stderr and "ended" in result.stderr
    service.client.post(f"/experiments/{queued['id']}/cancel")

    text = tmp_path / "notes.zip"
    text.write_text("not a zip at all")
    for command in (["experiment", "import"], ["reproduce"]):
        result = bnlab(*command, str(text), "--url", url)
        assert result.exit_code == 1, command
        assert "not a zip" in result.stderr and "Traceback" not in result.output


def test_sweep_annotate_sets_name_notes_and_tags(url: str, service: Service) -> None:
    base = {key: value for key, value in SMALL.items() if key != "learning_rate"}
    body = {"grid": {"learning_rate": [0.5, 1]}, "base": {**base, "device": "gpu"}}
    created = service.client.post("/sweeps", json=body)  # waits on a GPU worker: none here
    assert created.status_code == 202, created.text
    sweep = created.json()
    try:
        result = bnlab(
            "sweep", "annotate", str(sweep["id"]), "--name", "lr grid", "--notes", "*two* cells",
            "--tag", "lesson", "--tag", "grid", "--url", url,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "name: lr grid" in result.stdout and "tags: grid, lesson" in result.stdout
        assert "two cells" in result.stdout  # the notes, rendered

        result = bnlab("sweep", "annotate", str(sweep["id"]), "--tag", "x", "--url", url, "--json")
        shown = json.loads(result.stdout)
        assert (shown["name"], shown["notes"], shown["tags"]) == ("lr grid", "*two* cells", ["x"])
        assert service.client.get(f"/sweeps/{sweep['id']}").json()["tags"] == ["x"]

        result = bnlab("sweep", "annotate", str(sweep["id"]), "--tag", "no spaces", "--url", url)
        assert result.exit_code == 1 and "tag" in result.stderr
    finally:
        service.client.post(f"/sweeps/{sweep['id']}/cancel")
