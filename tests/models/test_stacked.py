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
from bnlab.models.trainer import Cell, Sample, Trainer, TrainingSpec, build_trainer
from tests.models.conftest import CPU, LONE, lone_trainer

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
        mine, alone_cell = batched.cells[cell].nets, lone.cells[LONE]
        assert set(mine) == set(alone_cell.nets), f"step {lone.step}: nets still training"
        for variant, net in alone_cell.nets.items():
            assert mine[variant].val_accuracy == pytest.approx(net.val_accuracy, abs=1e-4)
            if net.train_loss is not None:
                assert mine[variant].train_loss == pytest.approx(net.train_loss, rel=1e-4)
        assert batched.cells[cell].diverged_at == alone_cell.diverged_at


def test_stacked_cells_give_the_curves_each_gives_alone(splits: Splits) -> None:
    stacked = build_trainer(RELU, cells_of(STABLE), splits, CPU)
    assert [lane.stack.size for lane in stacked.lanes] == [4, 4]  # a plain and a bn stack
    batched = run(stacked)
    for i, cell_spec in enumerate(STABLE):
        alone = run(lone_trainer(RELU, cell_spec, splits))
        assert_same_curve(alone, batched, f"c{i}")
    diverged = {c: cell.diverged_at for c, cell in batched[-1].cells.items() if cell.diverged_at}
    assert set(diverged) == {"c1", "c3"} and all(set(d) == {"plain"} for d in diverged.values())
    # the nets really learned something: this is not agreement on chance-level curves
    assert batched[-1].cells["c0"].nets["bn"].val_accuracy > 0.5


def test_stacked_lanes_draw_the_same_batches_as_a_lone_pair(splits: Splits) -> None:
    stacked = build_trainer(RELU, cells_of(STABLE), splits, CPU)
    alone = lone_trainer(RELU, STABLE[2], splits)
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
    stacked = build_trainer(arch, cells_of(one_step), splits, CPU)
    run(stacked)
    for i, cell_spec in enumerate(one_step):
        alone = lone_trainer(arch, cell_spec, splits)
        run(alone)
        for variant in VARIANTS:
            mine = stacked.net_state(f"c{i}", variant)
            for name, tensor in alone.net_state(LONE, variant).items():
                # relative to the tensor's scale: single entries near zero differ by rounding
                scale = tensor.abs().max().item() or 1.0
                difference = (mine[name] - tensor).abs().max().item()
                assert difference <= 1e-5 * scale, f"cell {i} {variant} {name}: {difference}"


def test_a_dropped_cell_leaves_and_the_others_train_on(splits: Splits) -> None:
    stacked = build_trainer(RELU, cells_of(STABLE), splits, CPU)
    samples: list[Sample] = []

    def drop_c2_at_40() -> bool:
        if stacked.step == 40:
            stacked.drop(["c2"])
        return False

    stacked.run(samples.append, should_cancel=drop_c2_at_40)
    after = [s for s in samples if s.step > 40]
    assert after and all("c2" not in s.cells for s in after)
    assert stacked.cells == ["c0", "c1", "c3"]
    for i in (0, 1, 3):
        alone = run(lone_trainer(RELU, STABLE[i], splits))
        assert_same_curve(alone, samples, f"c{i}")


def test_resumed_stacked_training_equals_uninterrupted(splits: Splits, tmp_path: Path) -> None:
    uninterrupted = build_trainer(RELU, cells_of(STABLE), splits, CPU)
    full = run(uninterrupted)

    interrupted = build_trainer(RELU, cells_of(STABLE), splits, CPU)
    interrupted.run(lambda s: None, should_cancel=lambda: interrupted.step == 40)
    for cell in interrupted.cells:
        save_state(tmp_path / f"{cell}.safetensors", *interrupted.state(cell))
    resumed = build_trainer(RELU, cells_of(STABLE), splits, CPU)
    assert resumed.restore(
        {cell: load_state(tmp_path / f"{cell}.safetensors") for cell in resumed.cells}
    )

    assert run(resumed) == [s for s in full if s.step > 40]
    for cell in uninterrupted.cells:
        for variant in VARIANTS:
            for name, tensor in uninterrupted.net_state(cell, variant).items():
                assert torch.equal(resumed.net_state(cell, variant)[name], tensor) or (
                    tensor.is_floating_point() and not math.isfinite(tensor.sum().item())
                )


def test_cells_with_another_batch_order_are_refused(splits: Splits) -> None:
    other_seed = spec(0.05, 0.05, seed=1)
    with pytest.raises(ValueError, match="differs from cell c0 in seed"):
        build_trainer(RELU, cells_of([STABLE[0], other_seed]), splits, CPU)
