"""Cells of a sweep stacked into one trainer train as each would alone.

Batched kernels round differently from a lone net's (a sum over 60 images in another order), by
about 1e-7. Where training is stable that changes nothing a user sees; where it is chaotic (high
learning rates with BN on this small stand-in) such differences grow from step to step, as any
change of BLAS or thread count would make them grow. The cells here are stable ones, one of
which diverges; `test_one_step_of_every_regime_agrees` covers the chaotic regimes at the point
where rounding is all that differs.
"""

import math
from pathlib import Path

import pytest
import torch

from bnlab.models.checkpoint import load_state, save_state
from bnlab.models.data import Splits
from bnlab.models.network import VARIANTS, Architecture
from bnlab.models.stacked import Cell, drop_cells, net_label, stacked_trainer
from bnlab.models.trainer import Sample, Trainer, TrainingSpec, paired_trainer
from tests.models.conftest import CPU

RELU = Architecture(activation="relu")
STEPS, EVERY = 100, 20


def spec(learning_rate: float, weight_std: float, **more: int) -> TrainingSpec:
    fields = {"training_batches": STEPS, "batches_per_sample": EVERY} | more
    return TrainingSpec(learning_rate=learning_rate, weight_std=weight_std, **fields)


# Learning rates and initial weights as a sweep varies them; at std 5.0 the plain net diverges.
STABLE = [spec(0.05, 0.05), spec(0.05, 5.0), spec(0.2, 0.05), spec(2.0, 1.0)]


def run(trainer: Trainer, **hooks) -> list[Sample]:
    samples: list[Sample] = []
    trainer.run(samples.append, **hooks)
    return samples


def cells_of(specs: list[TrainingSpec]) -> list[Cell]:
    return [Cell(f"c{i}", s) for i, s in enumerate(specs)]


def assert_same_curve(alone: list[Sample], stacked: list[Sample], cell: str) -> None:
    """The cell's nets in the stacked samples, against the lone pair's samples."""
    assert [s.step for s in alone] == [s.step for s in stacked]
    for lone, batched in zip(alone, stacked, strict=True):
        mine = {v: batched.nets[net_label(cell, v)] for v in VARIANTS if v in lone.nets}
        assert set(mine) == set(lone.nets), f"step {lone.step}: nets still training"
        for variant, net in lone.nets.items():
            assert mine[variant].val_accuracy == pytest.approx(net.val_accuracy, abs=1e-4)
            if net.train_loss is not None:
                assert mine[variant].train_loss == pytest.approx(net.train_loss, rel=1e-4)
        diverged = {
            v: batched.diverged_at[net_label(cell, v)]
            for v in VARIANTS
            if net_label(cell, v) in batched.diverged_at
        }
        assert diverged == lone.diverged_at


def test_stacked_cells_give_the_curves_each_gives_alone(splits: Splits) -> None:
    stacked = stacked_trainer(RELU, cells_of(STABLE), splits, CPU)
    assert [lane.stack.size for lane in stacked.lanes] == [4, 4]  # a plain and a bn stack
    batched = run(stacked)
    for i, cell_spec in enumerate(STABLE):
        alone = run(paired_trainer(RELU, cell_spec, splits, CPU))
        assert_same_curve(alone, batched, f"c{i}")
    assert set(stacked.diverged_at) == {"c1:plain", "c3:plain"}  # as the lone runs say
    # the nets really learned something: this is not agreement on chance-level curves
    assert batched[-1].nets["c0:bn"].val_accuracy > 0.5


def test_stacked_lanes_draw_the_same_batches_as_a_lone_pair(splits: Splits) -> None:
    stacked = stacked_trainer(RELU, cells_of(STABLE), splits, CPU)
    alone = paired_trainer(RELU, STABLE[2], splits, CPU)
    for step in (0, 1, 17, 99, 5000):
        expected = alone.lanes[0].order.indices(step)
        for lane in stacked.lanes:
            assert torch.equal(lane.order.indices(step), expected)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_one_step_of_every_regime_agrees(splits: Splits, activation: str) -> None:
    """Every learning rate x initial weights of the classic grid, chaotic ones included: after
    one step the nets differ from their lone twins by rounding only."""
    arch = Architecture(activation=activation)
    one_step = [
        spec(rate, std, training_batches=1, batches_per_sample=1)
        for rate in (0.01, 1.0, 2.0)
        for std in (0.05, 5.0)
    ]
    stacked = stacked_trainer(arch, cells_of(one_step), splits, CPU)
    run(stacked)
    for i, cell_spec in enumerate(one_step):
        alone = paired_trainer(arch, cell_spec, splits, CPU)
        run(alone)
        for variant in VARIANTS:
            mine = stacked.net_state(net_label(f"c{i}", variant))
            for name, tensor in alone.net_state(variant).items():
                # relative to the tensor's scale: single entries near zero differ by rounding
                scale = tensor.abs().max().item() or 1.0
                difference = (mine[name] - tensor).abs().max().item()
                assert difference <= 1e-5 * scale, f"cell {i} {variant} {name}: {difference}"


def test_a_dropped_cell_leaves_and_the_others_train_on(splits: Splits) -> None:
    stacked = stacked_trainer(RELU, cells_of(STABLE), splits, CPU)
    samples: list[Sample] = []

    def drop_c2_at_40() -> bool:
        if stacked.step == 40:
            drop_cells(stacked, ["c2"])
        return False

    stacked.run(samples.append, should_cancel=drop_c2_at_40)
    after = [s for s in samples if s.step > 40]
    assert after and all(not any(k.startswith("c2:") for k in s.nets) for s in after)
    assert "c2:plain" not in stacked.labels
    for i in (0, 1, 3):
        alone = run(paired_trainer(RELU, STABLE[i], splits, CPU))
        assert_same_curve(alone, samples, f"c{i}")


def test_resumed_stacked_training_equals_uninterrupted(splits: Splits, tmp_path: Path) -> None:
    uninterrupted = stacked_trainer(RELU, cells_of(STABLE), splits, CPU)
    full = run(uninterrupted)

    interrupted = stacked_trainer(RELU, cells_of(STABLE), splits, CPU)
    interrupted.run(lambda s: None, should_cancel=lambda: interrupted.step == 40)
    save_state(tmp_path / "state.safetensors", *interrupted.state())
    resumed = stacked_trainer(RELU, cells_of(STABLE), splits, CPU)
    resumed.restore(*load_state(tmp_path / "state.safetensors"))

    assert run(resumed) == [s for s in full if s.step > 40]
    assert resumed.diverged_at == uninterrupted.diverged_at
    for label in uninterrupted.labels:
        for name, tensor in uninterrupted.net_state(label).items():
            assert torch.equal(resumed.net_state(label)[name], tensor) or (
                tensor.is_floating_point() and not math.isfinite(tensor.sum().item())
            )


def test_cells_with_another_batch_order_are_refused(splits: Splits) -> None:
    other_seed = spec(0.05, 0.05, seed=1)
    with pytest.raises(ValueError, match="differs from cell c0 in seed"):
        stacked_trainer(RELU, cells_of([STABLE[0], other_seed]), splits, CPU)
