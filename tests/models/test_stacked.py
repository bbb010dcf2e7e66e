"""A cell trains bit for bit as it does alone, whatever it is grouped with.

On the CPU an MLP trains with `backprop`'s written-out step, which steps each net as a stack of
one of its own: the same calls on the same shapes as a lone net's, whichever kernels MKL and
ATen pick, so grouping cannot change a single bit of a curve or a weight. That holds in every
regime, chaotic ones included (lr 2 with BN, the "bad" weights, where rounding differences
would grow from step to step), so the comparisons here are exact: `==` on curves, `torch.equal`
on weights, no tolerance.
"""

import math
from pathlib import Path

import pytest
import torch

from bnlab.models.checkpoint import load_state, save_state
from bnlab.models.data import Splits
from bnlab.models.network import Architecture
from bnlab.models.trainer import Cell, Sample, Trainer, TrainingSpec, build_trainer
from bnlab.vocabulary import STUDY_VARIANTS
from tests.models.conftest import CPU, LONE, lone_trainer

RELU = Architecture(activation="relu")
STEPS, EVERY = 100, 20


def spec(learning_rate: float, weight_std: float, **more: int) -> TrainingSpec:
    fields = {"training_batches": STEPS, "batches_per_sample": EVERY} | more
    return TrainingSpec(learning_rate=learning_rate, weight_std=weight_std, **fields)


# Learning rates and initial weights as a sweep varies them; at std 5.0 the plain net diverges.
STABLE = [spec(0.05, 0.05), spec(0.05, 5.0), spec(0.2, 0.05), spec(2.0, 1.0)]
# The classic grid's chaotic corners: lr 1 and 2 with the "good" and the "bad" weights.
CHAOTIC = [spec(1.0, 0.05), spec(2.0, 0.05), spec(2.0, 5.0)]


def run(trainer: Trainer, **hooks) -> list[Sample]:
    samples: list[Sample] = []
    trainer.run(samples.append, **hooks)
    return samples


def cells_of(specs: list[TrainingSpec]) -> list[Cell]:
    return [Cell(f"c{i}", s) for i, s in enumerate(specs)]


def assert_same_curve(alone: list[Sample], grouped: list[Sample], cell: str) -> None:
    """The cell in the group's samples, against its lone run's: every number equal."""
    assert [s.step for s in alone] == [s.step for s in grouped]
    for lone, batched in zip(alone, grouped, strict=True):
        assert batched.cells[cell] == lone.cells[LONE], f"cell {cell}, step {lone.step}"


def assert_same_nets(alone: Trainer, grouped: Trainer, cell: str) -> None:
    for variant in STUDY_VARIANTS:
        mine = grouped.net_state(cell, variant)
        for name, tensor in alone.net_state(LONE, variant).items():
            # bit for bit; a diverged net's frozen weights may hold NaNs, equal as well
            assert torch.equal(mine[name], tensor) or (
                torch.equal(mine[name].isnan(), tensor.isnan())
                and torch.equal(mine[name].nan_to_num(), tensor.nan_to_num())
            ), f"cell {cell} {variant} {name}"


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "elu"])
def test_a_grouped_cell_trains_bit_for_bit_as_it_does_alone(
    splits: Splits, activation: str
) -> None:
    arch = Architecture(activation=activation)
    specs = STABLE + CHAOTIC
    group = build_trainer(arch, cells_of(specs), splits, CPU, "torch")
    assert [lane.stack.size for lane in group.lanes] == [7, 7]  # a plain and a bn stack
    assert all(lane.written_out for lane in group.lanes)
    grouped = run(group)
    for i, cell_spec in enumerate(specs):
        alone = lone_trainer(arch, cell_spec, splits, bn_impl="torch")
        assert_same_curve(run(alone), grouped, f"c{i}")
        assert_same_nets(alone, group, f"c{i}")
    if activation == "relu":  # as the lone runs say: these plain nets diverge
        diverged = {c for c, cell in grouped[-1].cells.items() if "plain" in cell.diverged_at}
        assert {"c1", "c3"} <= diverged
    # the nets really learned something (chance is a loss of ln 10 = 2.3): this is not
    # agreement on untrained curves
    loss = grouped[-1].cells["c0"].nets["bn"].train_loss
    assert loss is not None and loss < 1.5


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_through_autograd_one_step_of_every_regime_agrees_to_rounding(
    splits: Splits, activation: str
) -> None:
    """The written-out BN (and conv nets, and GPUs) train through autograd, a group's nets in
    batched kernels that sum in another order than a lone net's. After one step, from the same
    weights and batch, that order is all that differs: each value rounds by ~sqrt(K) float32
    epsilons of its tensor's scale, sqrt(784) * 1.2e-7 = 3.3e-6 for the widest sums; 1e-5 of
    the scale allows 3x. (Over many steps chaotic regimes grow it; the written-out step above
    is the one that holds bit for bit.)"""
    arch = Architecture(activation=activation)
    one_step = [
        spec(rate, std, training_batches=1, batches_per_sample=1)
        for rate in (0.01, 1.0, 2.0)
        for std in (0.05, 5.0)
    ]
    group = build_trainer(arch, cells_of(one_step), splits, CPU, "bnlab")
    assert not group.lanes[1].written_out  # the bn lane: autograd
    run(group)
    for i, cell_spec in enumerate(one_step):
        alone = lone_trainer(arch, cell_spec, splits, bn_impl="bnlab")
        run(alone)
        for variant in STUDY_VARIANTS:
            mine = group.net_state(f"c{i}", variant)
            for name, tensor in alone.net_state(LONE, variant).items():
                scale = tensor.abs().max().item() or 1.0
                difference = (mine[name] - tensor).abs().max().item()
                assert difference <= 1e-5 * scale, f"cell {i} {variant} {name}: {difference}"


def test_stacked_lanes_draw_the_same_batches_as_a_lone_pair(splits: Splits) -> None:
    stacked = build_trainer(RELU, cells_of(STABLE), splits, CPU)
    alone = lone_trainer(RELU, STABLE[2], splits)
    for step in (0, 1, 17, 99, 5000):
        expected = alone.lanes[0].order.indices(step)
        for lane in stacked.lanes:
            assert torch.equal(lane.order.indices(step), expected)


def test_a_dropped_cell_leaves_and_the_others_train_on_exactly(splits: Splits) -> None:
    group = build_trainer(RELU, cells_of(STABLE), splits, CPU, "torch")
    samples: list[Sample] = []

    def drop_c2_at_40() -> bool:
        if group.step == 40:
            group.drop(["c2"])
        return False

    group.run(samples.append, should_cancel=drop_c2_at_40)
    after = [s for s in samples if s.step > 40]
    assert after and all("c2" not in s.cells for s in after)
    assert group.cells == ["c0", "c1", "c3"]
    for i in (0, 1, 3):
        alone = lone_trainer(RELU, STABLE[i], splits, bn_impl="torch")
        assert_same_curve(run(alone), samples, f"c{i}")
        assert_same_nets(alone, group, f"c{i}")


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
        for variant in STUDY_VARIANTS:
            for name, tensor in uninterrupted.net_state(cell, variant).items():
                assert torch.equal(resumed.net_state(cell, variant)[name], tensor) or (
                    tensor.is_floating_point() and not math.isfinite(tensor.sum().item())
                )


def test_a_group_resumes_only_from_states_of_all_its_cells_at_one_step(splits: Splits) -> None:
    group = build_trainer(RELU, cells_of(STABLE[:2]), splits, CPU, "torch")
    run(group)
    states = {cell: group.state(cell) for cell in group.cells}
    fresh = build_trainer(RELU, cells_of(STABLE[:2]), splits, CPU, "torch")
    before = fresh.net_state("c0", "bn")
    tensors, meta = states["c1"]
    assert not fresh.restore({"c0": states["c0"]})  # c1 has no state
    assert not fresh.restore({"c0": states["c0"], "c1": (tensors, {**meta, "step": 20})})
    assert fresh.step == 0
    assert all(torch.equal(t, before[name]) for name, t in fresh.net_state("c0", "bn").items())
    assert fresh.restore(states) and fresh.step == STEPS


def test_cells_with_another_batch_order_are_refused(splits: Splits) -> None:
    other_seed = spec(0.05, 0.05, seed=1)
    with pytest.raises(ValueError, match="differs from cell c0 in seed"):
        build_trainer(RELU, cells_of([STABLE[0], other_seed]), splits, CPU)
