"""Many experiments in one trainer: the nets of several cells of a sweep, stacked.

Cells that share an architecture, a batch order (seed, batch size) and a schedule (training
batches, sample interval) train as two lanes: one `NetStack` of all their `plain` nets and one of
all their `bn` nets, one batched matmul per layer. Each net keeps its own learning rate (its loss
is weighted by it), its own initial weights and its own divergence handling, so every cell gets
the curve it would get trained alone, up to float rounding of the batched kernels.

A net is labelled "<cell>:<variant>", e.g. "12:bn"; a cell is whatever its caller names it by
(the worker uses the experiment id).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from bnlab.models.batchnorm import BNImpl
from bnlab.models.data import Splits
from bnlab.models.network import VARIANTS, Architecture, NetStack, Variant, initial_weights
from bnlab.models.trainer import Lane, Net, Trainer, TrainingSpec

# What stacked cells must share; learning_rate and weight_std may differ from net to net.
SHARED_FIELDS = ("training_batches", "batches_per_sample", "batch_size", "seed")


@dataclass(frozen=True)
class Cell:
    name: str
    spec: TrainingSpec


def net_label(cell: str, variant: Variant) -> str:
    return f"{cell}:{variant}"


def split_label(label: str) -> tuple[str, str]:
    """(cell, variant) of a net label."""
    cell, variant = label.rsplit(":", 1)
    return cell, variant


class SweepLane(Lane):
    """A lane whose cells can be dropped part-way (a cancelled cell stops costing steps)."""

    def drop(self, cells: Iterable[str]) -> None:
        """Take the nets of `cells` out of this lane at a sample point; the others carry on
        from exactly where they were."""
        gone = {label for label in self.nets if split_label(label)[0] in set(cells)}
        if not gone:
            return
        keep = {label: self.net_state(label) for label in self.active if label not in gone}
        for label in gone:
            del self.nets[label]
            self.frozen.pop(label, None)
            self.diverged_at.pop(label, None)
        self._rebuild(keep)


def stacked_trainer(
    arch: Architecture,
    cells: Sequence[Cell],
    splits: Splits,
    device: torch.device,
    bn_impl: BNImpl = "bnlab",
) -> Trainer:
    """A `plain` lane and a `bn` lane holding every cell's net of that variant; each cell's pair
    starts from the same initial weights, as `paired_trainer` draws them."""
    if not cells:
        raise ValueError("a stacked trainer needs at least one cell")
    schedule = cells[0].spec
    for cell in cells:
        differing = [f for f in SHARED_FIELDS if getattr(cell.spec, f) != getattr(schedule, f)]
        if differing:
            raise ValueError(
                f"cell {cell.name} differs from cell {cells[0].name} in {', '.join(differing)}: "
                "stacked cells must share their batch order and schedule"
            )
    weights = [initial_weights(arch, cell.spec.weight_std, cell.spec.seed) for cell in cells]
    train = splits.train.to(device)
    lanes = [
        SweepLane(
            NetStack(arch, variant, weights, bn_impl).to(device),
            [Net(net_label(cell.name, variant), cell.spec.learning_rate) for cell in cells],
            train,
            schedule,
        )
        for variant in VARIANTS
    ]
    return Trainer(lanes, splits.validation.to(device), schedule)


def drop_cells(trainer: Trainer, cells: Iterable[str]) -> None:
    """Stop training `cells` (at a sample point): their nets leave the stacks."""
    names = set(cells)
    for lane in trainer.lanes:
        assert isinstance(lane, SweepLane), "only a stacked trainer's lanes drop cells"
        lane.drop(names)
