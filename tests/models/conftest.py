"""The engine's fixtures: the IDX stand-in loaded as the study's splits, and a trained pair."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bnlab.models.batchnorm import BNImpl
from bnlab.models.data import Splits, load_splits
from bnlab.models.network import Architecture, NetStack
from bnlab.models.trainer import Cell, Trainer, TrainingSpec, build_trainer
from bnlab.vocabulary import Variant

CPU = torch.device("cpu")
LONE = "lone"  # the name of a lone experiment's one cell
VALIDATION_SIZE = 200


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These tensors are tiny: a second intra-op thread buys nothing, and on a busy two-core
    machine its barrier waits cost seconds per test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def splits(idx_data_dir: Path) -> Splits:
    return load_splits("mnist", idx_data_dir, download=False, validation_size=VALIDATION_SIZE)


MLP = Architecture()


@pytest.fixture(scope="session")
def trained_pair(splits: Splits) -> Trainer:
    """The study's MLP pair (relu), trained to high accuracy on the stand-in. Read it, don't run
    it again: the session shares it."""
    spec = TrainingSpec(learning_rate=0.5, training_batches=300, batches_per_sample=100)
    trainer = lone_trainer(MLP, spec, splits)
    trainer.run(lambda sample: None)
    return trainer


def lone_trainer(
    arch: Architecture,
    spec: TrainingSpec,
    splits: Splits,
    device: torch.device = CPU,
    bn_impl: BNImpl = "bnlab",
) -> Trainer:
    """A lone experiment: a trainer of one cell, named `LONE`."""
    return build_trainer(arch, [Cell(LONE, spec)], splits, device, bn_impl)


def stack_of_one(
    trainer: Trainer, label: Variant, arch: Architecture = MLP, bn_impl: BNImpl = "bnlab"
) -> NetStack:
    """One of a trainer's nets on its own, as serving holds it."""
    return NetStack.from_net_states(arch, label, [trainer.net_state(LONE, label)], bn_impl)
