"""`Experiment.bundle`, `Experiment.provenance` and `Client.import_bundle` against a real service:
a bundle as bytes or a file, taken in again as an experiment with the same curve, and a bad one
refused with the server's words."""

import zipfile
from pathlib import Path

import pytest

from bnlab.client import ApiError, Client, Experiment
from tests.service.conftest import SMALL


@pytest.fixture(scope="module")
def succeeded(client: Client) -> Experiment:
    return client.run(**SMALL).wait(progress=False)


def test_a_bundle_as_bytes_or_a_file_and_imported_again(
    client: Client, succeeded: Experiment, tmp_path: Path
) -> None:
    data = succeeded.bundle()
    assert isinstance(data, bytes)
    written = succeeded.bundle(tmp_path / "run.zip")
    assert written == tmp_path / "run.zip" and written.read_bytes() == data
    with zipfile.ZipFile(written) as archive:
        assert {"manifest.json", "curve.csv", "checkpoints/bn-v1.safetensors"} <= set(
            archive.namelist()
        )

    for source in (data, written):
        imported = client.import_bundle(source)
        assert imported.id != succeeded.id and imported.status == "succeeded"
        assert imported.info["imported_from"]["experiment_id"] == succeeded.id
        assert imported.provenance == succeeded.provenance
        assert imported.series() == succeeded.series()
    assert imported.info["imported_from"]["file"] == "run.zip"


def test_the_provenance_says_what_trained_it(succeeded: Experiment) -> None:
    provenance = succeeded.provenance
    assert provenance is not None
    assert provenance["seed"] == SMALL["seed"] and provenance["dataset"]["name"] == "mnist"


def test_a_bad_bundle_raises_with_the_servers_message(client: Client) -> None:
    with pytest.raises(ApiError, match="not a zip file"):
        client.import_bundle(b"certainly not a zip")
