"""Checkpoints: a saved net predicts in a fresh process exactly as it did live; bad files are
refused with a `CheckpointError` that says what is wrong."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bnlab.models.checkpoint import (
    CheckpointError,
    load_net,
    load_state,
    save_net,
    save_state,
    sha256_of,
)
from bnlab.models.data import Splits
from bnlab.models.inference import ServedNet
from bnlab.models.trainer import Trainer
from bnlab.vocabulary import MODES, STUDY_VARIANTS
from tests.models.conftest import LONE, MLP, stack_of_one

PREDICT_IN_FRESH_PROCESS = """
import json, sys
import torch
from safetensors.torch import load_file
from bnlab.models.checkpoint import load_net
from bnlab.models.inference import ServedNet
from bnlab.vocabulary import MODES

torch.set_num_threads(1)  # as the live nets ran: exact equality assumes the same threading
images = load_file(sys.argv[1])["images"]
out = {}
for path in sys.argv[2:]:
    stack, meta = load_net(path)
    served = ServedNet(stack)
    out[path] = {"variant": meta["variant"]}
    for mode in MODES:
        p = served.predict(images, mode)
        out[path][mode] = {"classes": p.classes, "probabilities": p.probabilities}
print(json.dumps(out))
"""


def save_pair(trainer: Trainer, folder: Path) -> dict[str, Path]:
    paths = {}
    for label in STUDY_VARIANTS:
        paths[label] = folder / f"{label}.safetensors"
        save_net(
            paths[label],
            trainer.net_state(LONE, label),
            variant=label,
            arch=MLP,
            spec=asdict(trainer.spec),
            step=trainer.step,
            dataset="mnist",
        )
    return paths


def test_saved_nets_predict_in_a_fresh_process_exactly_as_live(
    trained_pair: Trainer, splits: Splits, tmp_path: Path
) -> None:
    paths = save_pair(trained_pair, tmp_path)
    images = splits.test.images[:20]
    save_file({"images": images.contiguous()}, tmp_path / "images.safetensors")
    result = subprocess.run(
        [sys.executable, "-c", PREDICT_IN_FRESH_PROCESS, str(tmp_path / "images.safetensors")]
        + [str(p) for p in paths.values()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    saved = json.loads(result.stdout)
    for label, path in paths.items():
        live = ServedNet(stack_of_one(trained_pair, label))
        assert saved[str(path)]["variant"] == label
        for mode in MODES:
            prediction = live.predict(images, mode)
            assert saved[str(path)][mode]["classes"] == prediction.classes, (label, mode)
            assert saved[str(path)][mode]["probabilities"] == prediction.probabilities
    # the bn net's batch mode differs from its population mode, so the check above means something
    bn = saved[str(paths["bn"])]
    assert bn["batch"]["probabilities"] != bn["population"]["probabilities"]


def test_saved_net_keeps_its_description(trained_pair: Trainer, tmp_path: Path) -> None:
    path = save_pair(trained_pair, tmp_path)["bn"]
    stack, meta = load_net(path)
    assert meta["variant"] == "bn"
    assert meta["architecture"] == {
        "activation": "relu",
        "hidden_layers": [100, 100, 100],
        "conv_channels": [],
    }
    assert meta["step"] == trained_pair.step
    assert meta["spec"]["learning_rate"] == trained_pair.spec.learning_rate
    assert "255" in meta["preprocessing"]
    assert stack.variant == "bn"
    live = trained_pair.net_state(LONE, "bn")
    for name, tensor in stack.net_state(0).items():
        assert torch.equal(tensor, live[name]), name


def test_save_net_returns_the_files_hash_and_size(trained_pair: Trainer, tmp_path: Path) -> None:
    path = tmp_path / "bn.safetensors"
    digest, size = save_net(path, trained_pair.net_state(LONE, "bn"), variant="bn", arch=MLP)
    assert digest == sha256_of(path)
    assert size == path.stat().st_size
    assert not list(tmp_path.glob("*.partial"))


def random_bytes(path: Path, trainer: Trainer) -> None:
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())


def truncated(path: Path, trainer: Trainer) -> None:
    save_net(path, trainer.net_state(LONE, "bn"), variant="bn", arch=MLP)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def without_bnlab_metadata(path: Path, trainer: Trainer) -> None:
    save_file(trainer.net_state(LONE, "bn"), path, metadata={"format": "pt"})


def bnlab_metadata_not_an_object(path: Path, trainer: Trainer) -> None:
    save_file(trainer.net_state(LONE, "bn"), path, metadata={"bnlab": "[1, 2]"})


def unknown_variant(path: Path, trainer: Trainer) -> None:
    save_net(path, trainer.net_state(LONE, "bn"), variant="resnet", arch=MLP)


def training_state(path: Path, trainer: Trainer) -> None:
    save_state(path, *trainer.state(LONE))


def missing(path: Path, trainer: Trainer) -> None:
    pass


@pytest.mark.parametrize(
    "make_file",
    [
        random_bytes,
        truncated,
        without_bnlab_metadata,
        bnlab_metadata_not_an_object,
        unknown_variant,
        training_state,
        missing,
    ],
)
def test_load_net_refuses_a_bad_file_with_a_clear_error(
    trained_pair: Trainer, tmp_path: Path, make_file
) -> None:
    path = tmp_path / "net.safetensors"
    make_file(path, trained_pair)
    with pytest.raises(CheckpointError) as raised:
        load_net(path)
    assert str(path) in str(raised.value)
    assert_no_chained_traceback(raised.value)


def assert_no_chained_traceback(error: BaseException) -> None:
    """The error stands alone: no "during handling of the above exception" soup."""
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_load_net_says_a_training_state_is_not_a_net(trained_pair: Trainer, tmp_path: Path) -> None:
    path = tmp_path / "state.safetensors"
    save_state(path, *trained_pair.state(LONE))
    with pytest.raises(CheckpointError, match=r"'bnlab-training-state', not a 'bnlab-net'"):
        load_net(path)


def test_load_state_refuses_a_net_file(trained_pair: Trainer, tmp_path: Path) -> None:
    path = save_pair(trained_pair, tmp_path)["plain"]
    with pytest.raises(CheckpointError, match="not a 'bnlab-training-state'"):
        load_state(path)


def test_load_net_refuses_tensors_that_do_not_fit_the_architecture(
    trained_pair: Trainer, tmp_path: Path
) -> None:
    path = tmp_path / "bn.safetensors"
    state = trained_pair.net_state(LONE, "bn")
    del state["weight.1"]
    save_net(path, state, variant="bn", arch=MLP)
    with pytest.raises(CheckpointError, match="does not hold a bnlab net that loads"):
        load_net(path)
