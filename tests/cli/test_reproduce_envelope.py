"""`bnlab reproduce`'s verdict on two curves, no server: bit for bit counts every difference;
the cross-CPU envelope takes a training loss off by up to step x 2^-24 (relative) and a
validation accuracy off by one validation image, and nothing more. And a fork's bundle, which
no rerun from its spec can reproduce, refused before anything is queued."""

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bnlab import bundle
from bnlab.cli import app
from bnlab.commands.reproduce import ROUNDING, difference, same_kind

VALIDATION = 200
ORIGINAL: dict[str, list[Any]] = {
    "step": [0, 100, 200],
    "val_accuracy": [0.1, 0.6, 0.8],
    "train_loss": [None, 1.5, 0.75],
}


def rerun(**changes: list[Any]) -> dict[str, list[Any]]:
    return {**ORIGINAL, **changes}


def test_an_identical_curve_is_identical() -> None:
    found = difference(ORIGINAL, rerun(), VALIDATION)
    assert found.identical and found.in_envelope and found.differing == 0


def test_a_loss_one_envelope_off_is_inside_and_twice_that_is_not() -> None:
    edge = 0.75 * (1 + 200 * ROUNDING * 0.99)
    found = difference(ORIGINAL, rerun(train_loss=[None, 1.5, edge]), VALIDATION)
    assert found.in_envelope and not found.identical and found.differing == 1
    assert found.train_loss == abs(edge - 0.75)

    past = 0.75 * (1 + 200 * ROUNDING * 2)
    assert not difference(ORIGINAL, rerun(train_loss=[None, 1.5, past]), VALIDATION).in_envelope


def test_an_accuracy_one_image_off_is_inside_and_two_are_not() -> None:
    one = difference(ORIGINAL, rerun(val_accuracy=[0.1, 0.605, 0.8]), VALIDATION)
    assert one.in_envelope and one.val_accuracy == abs(0.605 - 0.6)
    two = difference(ORIGINAL, rerun(val_accuracy=[0.1, 0.61, 0.8]), VALIDATION)
    assert not two.in_envelope


def test_other_sample_points_are_never_the_same_curve() -> None:
    shorter = {key: values[:2] for key, values in ORIGINAL.items()}
    found = difference(ORIGINAL, shorter, VALIDATION)
    assert not found.same_steps and not found.identical and not found.in_envelope


def test_the_cpu_kind_is_the_cpu_the_device_torch_and_bn() -> None:
    cpu = {"model": "EPYC", "capability": "AVX2", "kernels": {"MKL_ENABLE_INSTRUCTIONS": None}}
    here = {"cpu": cpu, "device": {"type": "cpu"}, "torch": "2.5", "bn_impl": "torch", "seed": 0}
    assert same_kind(here, {**here, "seed": 1, "python": "3.12"})
    assert not same_kind(here, {**here, "cpu": {**cpu, "capability": "DEFAULT"}})
    assert not same_kind(here, {**here, "torch": "2.6"})
    assert not same_kind(here, None)


def test_a_forks_bundle_is_refused_saying_why(tmp_path: Path) -> None:
    fork = {"id": 7, "status": "succeeded", "fork": {"parent_id": 3, "step": 100, "changes": {}}}
    made = bundle.Bundle(fork, {"validation_size": VALIDATION}, None, {}, {}, {}, [], {})
    path = tmp_path / "fork.zip"
    path.write_bytes(bundle.write(made))

    # Nothing listens on port 9: had it asked the server anything, the error would say so.
    result = CliRunner().invoke(app, ["reproduce", str(path), "--url", "http://127.0.0.1:9"])

    assert result.exit_code == 1
    assert "a fork" in result.stderr and "experiment 3" in result.stderr
    assert "step 100" in result.stderr and "cannot reach" not in result.stderr


@pytest.mark.parametrize("status", ["cancelled", "failed"])
def test_an_experiment_that_stopped_early_is_refused_saying_why(
    tmp_path: Path, status: str
) -> None:
    told = {"id": 7, "status": status, "error": "cancelled at step 150", "fork": None}
    made = bundle.Bundle(told, {"validation_size": VALIDATION}, None, {}, {}, {}, [], {})
    path = tmp_path / "stopped.zip"
    path.write_bytes(bundle.write(made))

    result = CliRunner().invoke(app, ["reproduce", str(path), "--url", "http://127.0.0.1:9"])

    assert result.exit_code == 1
    assert f"a {status} experiment" in result.stderr and "step 150" in result.stderr
    assert "cannot reach" not in result.stderr


def test_bit_for_bit_is_claimed_only_when_every_machine_that_trained_it_is_the_reruns_kind() -> (
    None
):
    cpu = {"model": "EPYC", "capability": "AVX2", "kernels": {"MKL_ENABLE_INSTRUCTIONS": None}}
    here = {"cpu": cpu, "device": {"type": "cpu"}, "torch": "2.5", "bn_impl": "torch", "seed": 0}
    elsewhere = {**here, "cpu": {**cpu, "model": "Xeon"}}
    resumed = {**here, "resumed_on": [{"step": 300, **elsewhere}]}
    assert not same_kind(resumed, here) and not same_kind(resumed, elsewhere)
    assert same_kind({**here, "resumed_on": [{"step": 300, **here, "python": "3.13"}]}, here)
