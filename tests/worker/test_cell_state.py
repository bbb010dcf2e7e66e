"""A cell's training state, saved by a sweep group, in the lone experiment's format: the cell
queued again on its own resumes from it, and so does the group from all of its cells'."""

from pathlib import Path

import torch

from bnlab.models.checkpoint import load_state, save_state
from bnlab.models.data import Splits
from bnlab.models.network import VARIANTS
from bnlab.models.stacked import Cell, net_label, stacked_trainer
from bnlab.models.trainer import Trainer, paired_trainer
from bnlab.worker.sweep_job import CellView, restore_cells
from tests.models.conftest import CPU
from tests.models.test_stacked import RELU, STABLE


def interrupted_group(splits: Splits, at: int) -> Trainer:
    trainer = stacked_trainer(RELU, [Cell("7", STABLE[1]), Cell("8", STABLE[2])], splits, CPU)
    trainer.run(lambda sample: None, should_cancel=lambda: trainer.step == at)
    return trainer


def test_a_cells_state_resumes_as_a_lone_experiment(splits: Splits, tmp_path: Path) -> None:
    group = interrupted_group(splits, at=40)
    save_state(tmp_path / "7.safetensors", *CellView(group, "7").state())

    alone = paired_trainer(RELU, STABLE[1], splits, CPU)
    alone.restore(*load_state(tmp_path / "7.safetensors"))

    assert alone.step == 40
    assert alone.diverged_at == {"plain": group.diverged_at["7:plain"]}  # it diverged early
    for variant in VARIANTS:
        for name, tensor in alone.net_state(variant).items():
            expected = group.net_state(net_label("7", variant))[name]
            assert torch.equal(tensor, expected) or torch.isnan(expected).any(), name
    alone.run(lambda sample: None)
    assert alone.step == STABLE[1].training_batches


def test_a_group_resumes_from_its_cells_states(splits: Splits, tmp_path: Path) -> None:
    uninterrupted = interrupted_group(splits, at=-1)
    group = interrupted_group(splits, at=40)
    states = {}
    for cell in ("7", "8"):
        save_state(tmp_path / f"{cell}.safetensors", *CellView(group, cell).state())
        states[cell] = load_state(tmp_path / f"{cell}.safetensors")

    resumed = stacked_trainer(RELU, [Cell("7", STABLE[1]), Cell("8", STABLE[2])], splits, CPU)
    assert restore_cells(resumed, states)
    resumed.run(lambda sample: None)

    assert resumed.diverged_at == uninterrupted.diverged_at
    for name, tensor in uninterrupted.net_state("8:bn").items():
        assert torch.equal(resumed.net_state("8:bn")[name], tensor), name


def test_cells_at_different_steps_do_not_resume_as_a_group(splits: Splits) -> None:
    early, late = interrupted_group(splits, at=20), interrupted_group(splits, at=40)
    fresh = stacked_trainer(RELU, [Cell("7", STABLE[1]), Cell("8", STABLE[2])], splits, CPU)
    states = {"7": CellView(early, "7").state(), "8": CellView(late, "8").state()}
    assert not restore_cells(fresh, states)
    assert fresh.step == 0
