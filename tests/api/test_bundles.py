"""GET /experiments/{id}/bundle and POST /experiments/import: what a bundle holds (every file's
sha256 in its manifest, the checkpoints' bytes as stored), an import into ANOTHER bnlab (its own
database and checkpoint folder) that then answers /curve and /predict as the original does, and
every bad bundle refused with a 4xx that says what is wrong."""

import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from bnlab.api.main import create_app
from bnlab.store import queries
from bnlab.store.migrate import upgrade
from bnlab.store.tables import Experiment
from tests.api.conftest import add_checkpoints, add_experiment, make_settings, tamper
from tests.api.test_why import probed

PROVENANCE = {"torch": "2.x", "cpu": {"model": "a CPU", "capability": "AVX2"}, "seed": 3}
# Finite floats that a decimal rendering with fewer digits would not give back exactly.
POINTS = {
    "plain": [(0, 0.1, None), (50, 0.3000000000000001, 2.1234567890123457)],
    "bn": [(0, 0.1, None), (50, 0.7123456789012345, 0.9876543210987654)],
}


@pytest.fixture
def ended(session: Session, settings: Any) -> Experiment:
    """A succeeded experiment as a worker leaves it: curve, layer statistics, results, both
    checkpoints (the bn one in two versions, as recalibration makes), provenance."""
    experiment = add_experiment(session, "succeeded", learning_rate=0.5, seed=3)
    for step in (0, 50):
        points = {v: (acc, loss) for v, pts in POINTS.items() for s, acc, loss in pts if s == step}
        queries.add_curve_points(session, experiment, step, points)
        row = {"layer": 0, "p15": -1.5, "p50": 0.25, "p85": 1.0 / 3, "dead_fraction": 0.125}
        stats = {v: [{**row, "grad_norm": None if step == 0 else 0.1 * step}] for v in POINTS}
        queries.add_layer_stats(session, experiment, step, stats)
    for variant, accuracy in (("plain", 0.81), ("bn", 0.93)):
        run = queries.run_of(experiment, variant)
        run.test_accuracy, run.final_val_accuracy, run.steps_to_90 = accuracy, accuracy, 50
    experiment.provenance = PROVENANCE
    experiment.name, experiment.notes = "relu at lr 0.5", "*plain* is slower"
    queries.annotate(experiment, tags=["lesson"])
    session.commit()
    add_checkpoints(session, experiment, Path(settings.checkpoint_dir))
    bn = queries.latest_checkpoint(session, experiment.id, "bn")
    assert bn is not None
    queries.add_checkpoint(
        session, queries.run_of(experiment, "bn"), 50, bn.path, bn.sha256, bn.size_bytes
    )
    session.commit()
    return experiment


@pytest.fixture
def other(tmp_path: Path) -> Iterator[TestClient]:
    """Another bnlab: its own database file and checkpoint folder."""
    url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(url)
    with TestClient(create_app(make_settings(tmp_path / "other", url))) as client:
        yield client


def bundle_of(client: TestClient, experiment_id: int) -> bytes:
    response = client.get(f"/experiments/{experiment_id}/bundle")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    return response.content


def import_(client: TestClient, data: bytes, name: str = "run.zip") -> Any:
    return client.post("/experiments/import", files={"bundle": (name, data, "application/zip")})


def unzipped(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_bundle_holds_everything_each_file_with_its_sha256(
    client: TestClient, ended: Experiment, session: Session
) -> None:
    files = unzipped(bundle_of(client, ended.id))
    manifest = json.loads(files.pop("manifest.json"))

    assert manifest["format"] == "bnlab-bundle" and manifest["format_version"] == 1
    assert manifest["files"] == {name: hashlib.sha256(d).hexdigest() for name, d in files.items()}
    assert manifest["provenance"] == PROVENANCE
    told = manifest["experiment"]
    assert (told["id"], told["status"], told["name"], told["tags"]) == (
        ended.id,
        "succeeded",
        "relu at lr 0.5",
        ["lesson"],
    )
    assert json.loads(files["spec.json"]) == ended.spec
    assert json.loads(files["curve.json"]) == client.get(f"/experiments/{ended.id}/curve").json()
    assert (
        json.loads(files["results.json"])
        == client.get(f"/experiments/{ended.id}").json()["results"]
    )
    rows = list(csv.DictReader(io.StringIO(files["curve.csv"].decode())))
    assert [(r["variant"], int(r["step"]), float(r["val_accuracy"])) for r in rows] == [
        (variant, step, accuracy)
        for variant in ("plain", "bn")
        for step, accuracy, _ in POINTS[variant]
    ]
    assert json.loads(files["layer_stats.json"])["bn"][1] == {
        "step": 50, "layer": 0, "p15": -1.5, "p50": 0.25, "p85": 1.0 / 3,
        "dead_fraction": 0.125, "grad_norm": 5.0,
    }  # fmt: skip
    # Every checkpoint, every version, byte for byte what the store holds.
    names = sorted(name for name in files if name.startswith("checkpoints/"))
    assert names == [
        "checkpoints/bn-v1.safetensors",
        "checkpoints/bn-v2.safetensors",
        "checkpoints/plain-v1.safetensors",
    ]
    for entry in manifest["checkpoints"]:
        stored = queries.checkpoint_of(session, ended.id, entry["variant"], entry["version"])
        assert stored is not None
        data = files[f"checkpoints/{entry['variant']}-v{entry['version']}.safetensors"]
        assert data == Path(stored.path).read_bytes()
        assert entry["sha256"] == stored.sha256 == hashlib.sha256(data).hexdigest()


def test_the_same_experiment_makes_the_same_bundle(client: TestClient, ended: Experiment) -> None:
    assert bundle_of(client, ended.id) == bundle_of(client, ended.id)


def test_an_imported_experiment_answers_as_the_original(
    client: TestClient, other: TestClient, ended: Experiment
) -> None:
    data = bundle_of(client, ended.id)
    response = import_(other, data)
    assert response.status_code == 201, response.text
    imported = response.json()
    assert response.headers["location"] == f"/experiments/{imported['id']}"
    original = client.get(f"/experiments/{ended.id}").json()
    for field in ("status", "spec", "results", "name", "notes", "tags", "provenance"):
        assert imported[field] == original[field], field
    origin = imported["imported_from"]
    assert origin["experiment_id"] == ended.id and origin["file"] == "run.zip"
    assert origin["sha256"] == hashlib.sha256(data).hexdigest()

    new = imported["id"]
    for path in ("curve", "activations", "checkpoints/plain", "checkpoints/bn"):
        there = other.get(f"/experiments/{new}/{path}")
        assert there.status_code == 200, there.text
        assert there.content == client.get(f"/experiments/{ended.id}/{path}").content, path
    image = {"pixels": [[(row * col % 7) / 6 for col in range(28)] for row in range(28)]}
    for variant, mode, version in (
        ("bn", "population", 1),
        ("bn", "batch", 2),
        ("plain", "population", None),
    ):
        query = {"variant": variant, "mode": mode} | ({"version": version} if version else {})
        asked = client.post("/predict", params={"experiment_id": ended.id, **query}, json=image)
        answered = other.post("/predict", params={"experiment_id": new, **query}, json=image)
        assert asked.status_code == answered.status_code == 200, answered.text
        assert answered.json() == asked.json()
    # Its bundle holds the same files again (the manifest says where it came from).
    again = unzipped(bundle_of(other, new))
    assert {k: v for k, v in again.items() if k != "manifest.json"} == {
        k: v for k, v in unzipped(data).items() if k != "manifest.json"
    }


def test_a_forks_bundle_names_its_parent_and_step(
    client: TestClient, other: TestClient, session: Session
) -> None:
    parent = add_experiment(session, "succeeded")
    fork = add_experiment(session, "succeeded", learning_rate=0.5)
    fork.parent_id, fork.fork_step = parent.id, 100
    fork.fork_changes = {"learning_rate": {"parent": 0.01, "fork": 0.5}}
    session.commit()

    data = bundle_of(client, fork.id)
    told = json.loads(unzipped(data)["manifest.json"])["experiment"]
    assert told["fork"] == {
        "parent_id": parent.id,
        "step": 100,
        "changes": {"learning_rate": {"parent": 0.01, "fork": 0.5}},
    }
    imported = import_(other, data).json()
    assert imported["imported_from"]["fork"] == told["fork"]
    assert imported["parent"] is None  # its parent is not in this bnlab


def test_a_running_experiment_has_no_bundle_yet(client: TestClient, session: Session) -> None:
    running = add_experiment(session, "running")
    response = client.get(f"/experiments/{running.id}/bundle")
    assert response.status_code == 409
    assert "running" in response.json()["detail"] and "ended" in response.json()["detail"]
    assert client.get("/experiments/999/bundle").status_code == 404


def test_a_checkpoint_changed_on_disk_is_not_bundled(
    client: TestClient, ended: Experiment, session: Session
) -> None:
    checkpoint = queries.latest_checkpoint(session, ended.id, "plain")
    assert checkpoint is not None
    tamper(Path(checkpoint.path))
    response = client.get(f"/experiments/{ended.id}/bundle")
    assert response.status_code == 409
    assert "sha256" in response.json()["detail"]


def refused(client: TestClient, data: bytes, status: int = 422) -> str:
    response = import_(client, data)
    assert response.status_code == status, response.text
    detail: str = response.json()["detail"]
    return detail


def test_what_is_not_a_bundle_is_refused_saying_so(other: TestClient) -> None:
    assert "not a zip" in refused(other, b"PK? no, a text file")
    assert "not a bnlab bundle" in refused(other, zipped({"notes.txt": b"hello"}))
    foreign = zipped({"manifest.json": json.dumps({"format": "something-else"}).encode()})
    assert "not a bnlab bundle" in refused(other, foreign)
    no_file = other.post("/experiments/import", files={"other": ("x.zip", b"", "application/zip")})
    assert no_file.status_code == 422 and "'bundle'" in no_file.json()["detail"]
    as_json = other.post("/experiments/import", json={"bundle": "x"})
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]


def test_a_changed_file_is_refused_by_name(
    client: TestClient, other: TestClient, ended: Experiment
) -> None:
    files = unzipped(bundle_of(client, ended.id))
    curve = json.loads(files["curve.json"])
    curve["series"]["bn"]["val_accuracy"][1] = 0.99
    detail = refused(other, zipped({**files, "curve.json": json.dumps(curve).encode()}))
    assert "curve.json" in detail and "sha256" in detail

    weights = bytearray(files["checkpoints/bn-v2.safetensors"])
    weights[-1] ^= 0xFF
    detail = refused(other, zipped({**files, "checkpoints/bn-v2.safetensors": bytes(weights)}))
    assert "checkpoints/bn-v2.safetensors" in detail
    assert other.get("/experiments").json()["total"] == 0  # nothing of them was kept


def test_a_newer_format_is_refused_saying_what_it_needs(
    client: TestClient, other: TestClient, ended: Experiment
) -> None:
    files = unzipped(bundle_of(client, ended.id))
    manifest = json.loads(files["manifest.json"])
    manifest["format_version"], manifest["made_by"] = 2, {"bnlab": "9.0.0"}
    detail = refused(other, zipped({**files, "manifest.json": json.dumps(manifest).encode()}))
    assert "format 2" in detail and "bnlab 9.0.0" in detail and "upgrade" in detail


def test_a_bundle_over_the_limit_is_413(
    client: TestClient, ended: Experiment, tmp_path: Path
) -> None:
    data = bundle_of(client, ended.id)
    url = f"sqlite:///{tmp_path / 'small.db'}"
    upgrade(url)
    small = make_settings(tmp_path / "small", url, max_bundle_bytes=len(data) - 1)
    with TestClient(create_app(small)) as limited:
        detail = refused(limited, data, 413)
    assert "BNLAB_MAX_BUNDLE_BYTES" in detail


def test_a_store_that_cannot_be_written_is_503_and_imports_nothing(
    client: TestClient, ended: Experiment, tmp_path: Path
) -> None:
    data = bundle_of(client, ended.id)
    url = f"sqlite:///{tmp_path / 'nowhere.db'}"
    upgrade(url)
    (tmp_path / "a-file").write_text("not a folder")
    broken = make_settings(tmp_path / "nowhere", url, checkpoint_dir=str(tmp_path / "a-file" / "x"))
    with TestClient(create_app(broken)) as nowhere:
        detail = refused(nowhere, data, 503)
        assert "nothing was imported" in detail
        assert nowhere.get("/experiments").json()["total"] == 0


def test_a_spec_this_bnlab_does_not_take_is_refused(
    client: TestClient, other: TestClient, ended: Experiment
) -> None:
    files = unzipped(bundle_of(client, ended.id))
    spec = json.loads(files["spec.json"]) | {"learning_rate": -1}
    files["spec.json"] = json.dumps(spec).encode()
    manifest = json.loads(files["manifest.json"])
    manifest["files"]["spec.json"] = hashlib.sha256(files["spec.json"]).hexdigest()
    files["manifest.json"] = json.dumps(manifest).encode()
    detail = refused(other, zipped(files))
    assert "spec" in detail and "learning_rate" in detail


def with_file(files: dict[str, bytes], name: str, value: Any) -> bytes:
    """The bundle with `name` replaced by `value` as JSON, its sha256 in the manifest to match:
    what a bundle edited by hand (or by another program) looks like."""
    data = json.dumps(value).encode()
    manifest = json.loads(files["manifest.json"])
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    return zipped({**files, name: data, "manifest.json": json.dumps(manifest).encode()})


def test_rows_that_cannot_be_stored_are_422_naming_what_is_wrong(
    client: TestClient, other: TestClient, ended: Experiment
) -> None:
    files = unzipped(bundle_of(client, ended.id))
    curve = json.loads(files["curve.json"])
    bn = curve["series"]["bn"]
    cases: list[tuple[str, Any, tuple[str, ...]]] = [
        ("curve.json", {"series": {**curve["series"], "bn": {**bn, "step": [0]}}}, ("bn", "1, 2")),
        ("curve.json", {"series": {**curve["series"], "bn": {**bn, "step": [50, 50]}}}, ("[50]",)),
        ("curve.json", {"series": ["bn"]}, ("curve", "dictionary")),
        ("layer_stats.json", {"bn": "rows"}, ("layer_stats", "list")),
    ]
    layers = json.loads(files["layer_stats.json"])
    twice = {**layers, "plain": layers["plain"] + layers["plain"][:1]}
    cases.append(("layer_stats.json", twice, ("plain", "(step, layer)", "(0, 0)")))
    for name, value, said in cases:
        detail = refused(other, with_file(files, name, value))
        assert all(part in detail for part in said), (name, detail)
    assert other.get("/experiments").json()["total"] == 0


def test_what_would_break_reading_it_back_is_refused(
    client: TestClient, other: TestClient, ended: Experiment
) -> None:
    files = unzipped(bundle_of(client, ended.id))
    manifest = json.loads(files["manifest.json"])
    listed = json.dumps(manifest | {"provenance": ["a", "list"]}).encode()
    assert "provenance" in refused(other, zipped({**files, "manifest.json": listed}))
    curve = files["curve.json"].decode().replace("0.7123456789012345", "NaN", 1)
    assert "NaN" in curve
    detail = refused(other, with_file(files, "curve.json", json.loads(curve)))
    assert "curve" in detail and "finite" in detail
    results = json.loads(files["results.json"])
    results["bn"]["test_accuracy"] = float("inf")
    assert "finite" in refused(other, with_file(files, "results.json", results))
    # Nothing got in: the list still answers.
    listing = other.get("/experiments")
    assert listing.status_code == 200 and listing.json()["total"] == 0


def test_a_probed_experiment_answers_the_same_after_import(
    client: TestClient, other: TestClient, session: Session
) -> None:
    original = probed(session, [0, 100])
    original.status = "succeeded"
    session.commit()
    data = bundle_of(client, original.id)
    assert "probes.json" in json.loads(unzipped(data)["manifest.json"])["files"]
    response = import_(other, data)
    assert response.status_code == 201, response.text
    new = response.json()["id"]
    for what in ("landscape", "ics", "sharpness"):
        there = other.get(f"/experiments/{new}/{what}").json()
        here = client.get(f"/experiments/{original.id}/{what}").json()
        assert there.pop("experiment_id") == new and here.pop("experiment_id") == original.id
        assert there == here and any(there["variants"]["bn"]), what


def test_a_bundle_from_before_the_probes_imports_without_them(
    client: TestClient, other: TestClient, ended: Experiment
) -> None:
    files = unzipped(bundle_of(client, ended.id))
    del files["probes.json"]
    manifest = json.loads(files["manifest.json"])
    del manifest["files"]["probes.json"]
    files["manifest.json"] = json.dumps(manifest).encode()
    response = import_(other, zipped(files))
    assert response.status_code == 201, response.text
    sharpness = other.get(f"/experiments/{response.json()['id']}/sharpness").json()
    assert sharpness["variants"] == {
        "plain": {"step": [], "eigenvalue": [], "iterations": []},
        "bn": {"step": [], "eigenvalue": [], "iterations": []},
    }
