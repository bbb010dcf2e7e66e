"""What a worker records as an experiment's provenance (bnlab/worker/provenance.py): the
checkout's commit when there is one and none, without an error, when git cannot say; the
dataset's files by sha256, each hashed once per process; the CPU kind torch runs on."""

import hashlib
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import torch

from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.worker import provenance
from tests.idx import write_idx_dataset


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    caches = (provenance._software, provenance._hashed, provenance.cpu_kind)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


def recorded(data_dir: Path, seed: int = 4) -> dict[str, object]:
    spec = ExperimentSpec(seed=seed)
    settings = Settings(data_dir=data_dir, download=False)
    return provenance.provenance_of(spec, torch.device("cpu"), settings)


def test_it_names_the_checkout_commit_the_versions_the_cpu_and_the_seed(tmp_path: Path) -> None:
    found = recorded(tmp_path)
    checkout = Path(provenance.__file__).parents[2]
    # From a checkout, its commit; from a copy without .git (a tarball, an sdist), none.
    head = None
    if (checkout / ".git").exists():
        asked = ["git", "rev-parse", "HEAD"]
        head = subprocess.run(asked, cwd=checkout, capture_output=True, text=True).stdout.strip()
    assert found["bnlab"] == {"version": metadata.version("bnlab"), "git_commit": head}
    assert found["torch"] == torch.__version__ and found["seed"] == 4
    assert found["device"] == {"type": "cpu", "name": None}
    cpu = found["cpu"]
    assert isinstance(cpu, dict) and cpu["model"]
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability()


def test_without_git_the_commit_is_unknown_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to run
    found = recorded(tmp_path)
    assert found["bnlab"] == {"version": metadata.version("bnlab"), "git_commit": None}


def test_the_dataset_files_are_named_by_sha256_and_hashed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = write_idx_dataset(tmp_path, n_train=120, n_test=30)
    raw = data_dir / "MNIST" / "raw"
    expected = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in raw.iterdir()}
    hashed: list[Path] = []
    real = provenance._sha256
    monkeypatch.setattr(provenance, "_sha256", lambda path: hashed.append(path) or real(path))

    first = recorded(data_dir, seed=1)
    second = recorded(data_dir, seed=2)

    assert first["dataset"] == second["dataset"] == {"name": "mnist", "files": expected}
    assert len(hashed) == len(expected) == 4


def test_an_uninstalled_source_tree_records_its_version_as_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert recorded(tmp_path)["bnlab"]["version"] == "unknown"  # type: ignore[index]


def test_a_resumed_job_adds_its_machine_and_keeps_the_first() -> None:
    first = {"cpu": {"model": "A"}, "torch": "2.5", "seed": 1}
    second = {**first, "cpu": {"model": "B"}}
    assert provenance.trained_by(None, first, 0) == first
    assert provenance.trained_by(second, first, 0) == first  # nothing trained before it
    on_b = provenance.trained_by(first, second, 300)
    assert on_b == {**first, "resumed_on": [{"step": 300, **second}]}
    # Back on a machine already named: nothing new to say.
    assert provenance.trained_by(on_b, first, 500) == on_b
    assert provenance.trained_by(on_b, second, 500) == on_b
