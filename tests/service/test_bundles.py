"""Bundles end to end, with a real worker on both stacks: the provenance the worker records, a
bundle of a finished run, `bnlab reproduce` training it again on the service (bit for bit: the
same worker, the same CPU kind), a bundle whose curve is not what training gives refused as not
reproduced, and the bundle imported and served."""

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner, Result

from bnlab.cli import app
from bnlab.vocabulary import TERMINAL
from tests.service.conftest import SMALL, STEPS, Service

pytestmark = pytest.mark.service


def bnlab(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def finished(service: Service) -> dict[str, Any]:
    created = service.client.post("/experiments", json=SMALL)
    assert created.status_code == 202, created.text
    done = service.wait_for(created.json()["id"], lambda e: e["status"] in TERMINAL)
    assert done["status"] == "succeeded", done
    return done


@pytest.fixture(scope="module")
def bundle_file(service: Service, finished: dict[str, Any], tmp_path_factory: Any) -> Path:
    response = service.client.get(f"/experiments/{finished['id']}/bundle")
    assert response.status_code == 200, response.text
    path: Path = tmp_path_factory.mktemp("bundle") / "run.zip"
    path.write_bytes(response.content)
    return path


def url_of(service: Service) -> str:
    return str(service.client.base_url).rstrip("/")


def test_the_worker_records_what_trained_the_run(
    finished: dict[str, Any], idx_data_dir: Path
) -> None:
    provenance = finished["provenance"]
    assert provenance["torch"] == torch.__version__
    assert provenance["cuda"] == torch.version.cuda
    assert provenance["device"]["type"] == "cpu"
    assert provenance["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert provenance["cpu"]["model"]
    assert provenance["bnlab"]["version"] and provenance["seed"] == SMALL["seed"]
    raw = idx_data_dir / "MNIST" / "raw"
    files = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in raw.iterdir()}
    assert provenance["dataset"] == {"name": "mnist", "files": files}


def test_reproduce_reruns_the_bundle_and_finds_the_same_curve_bit_for_bit(
    service: Service, bundle_file: Path, finished: dict[str, Any]
) -> None:
    result = bnlab("reproduce", str(bundle_file), "--url", url_of(service))

    assert result.exit_code == 0, result.output
    assert "same CPU kind" in result.stdout
    assert "reproduced bit for bit" in result.stdout
    rerun = service.client.get("/experiments", params={"limit": 1}).json()["items"][0]
    assert rerun["id"] != finished["id"] and rerun["spec"] == finished["spec"]
    original = service.client.get(f"/experiments/{finished['id']}/curve").json()
    assert service.client.get(f"/experiments/{rerun['id']}/curve").json() == original
    assert original["series"]["bn"]["step"] == STEPS


def test_a_curve_training_does_not_give_is_not_reproduced(
    service: Service, bundle_file: Path, tmp_path: Path
) -> None:
    # The bundle of a run that came out otherwise: one point off by 1/200 (one validation image).
    with zipfile.ZipFile(bundle_file) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    curve = json.loads(files["curve.json"])
    curve["series"]["plain"]["val_accuracy"][3] += 0.005
    files["curve.json"] = json.dumps(curve).encode()
    manifest = json.loads(files["manifest.json"])
    manifest["files"]["curve.json"] = hashlib.sha256(files["curve.json"]).hexdigest()
    files["manifest.json"] = json.dumps(manifest).encode()
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)

    result = bnlab("reproduce", str(other), "--url", url_of(service), "--json")

    assert result.exit_code == 1, result.output
    verdict = json.loads(result.stdout)
    assert verdict["same_cpu_kind"] and not verdict["reproduced"]
    assert verdict["variants"]["plain"]["differing"] == 1
    assert verdict["variants"]["plain"]["val_accuracy"] == pytest.approx(0.005)
    assert verdict["variants"]["bn"]["differing"] == 0
    assert "not reproduced: plain" in result.stderr


def test_an_imported_bundle_is_served_like_the_original(
    service: Service, bundle_file: Path, finished: dict[str, Any]
) -> None:
    result = bnlab("experiment", "import", str(bundle_file), "--url", url_of(service), "--json")
    assert result.exit_code == 0, result.output
    imported = json.loads(result.stdout)
    assert imported["imported_from"]["experiment_id"] == finished["id"]
    assert imported["provenance"] == finished["provenance"]

    client, new, old = service.client, imported["id"], finished["id"]
    assert client.get(f"/experiments/{new}/curve").json() == (
        client.get(f"/experiments/{old}/curve").json()
    )
    pixels = {"pixels": [[0.5 if 10 < col < 18 else 0.0 for col in range(28)] for _ in range(28)]}
    for mode in ("population", "batch"):
        query = {"variant": "bn", "mode": mode}
        asked = client.post("/predict", params={"experiment_id": old, **query}, json=pixels)
        answered = client.post("/predict", params={"experiment_id": new, **query}, json=pixels)
        assert answered.status_code == 200, answered.text
        assert answered.json() == asked.json()
    compared = client.get("/compare", params={"experiments": f"{old},{new}"})
    assert compared.status_code == 200, compared.text
