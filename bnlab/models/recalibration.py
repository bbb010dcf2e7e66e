"""Recalibration ("precise BN"): population statistics that are true averages over the training
split, instead of the running estimate training leaves behind.

The running estimate averages batch statistics of nets that kept changing, weighted by a decay of
0.99 per step; after a fast-moving stretch of training (large learning rates, bad initial
weights) it can lag behind the final net. Recalibration measures the final net itself.

What it measures: for each BN layer in turn, the mean and the unbiased variance of the layer's
input over every training image, with the BN layers before it already on their recalibrated
statistics. So in `population` mode every BN layer normalizes its inputs by exactly the mean and
variance those inputs have over the training split: the same numbers as a direct computation
with the whole split as one batch (tested). That takes one pass over the split per BN layer
(the study's nets are small); a single pass with batch statistics upstream, as the precise-BN
paper makes, would measure inputs that the served net never sees.

How batches combine: each batch contributes its count, mean and sum of squared deviations, merged
in float64 with Chan et al.'s parallel formula. That is the two-pass computation up to float64
rounding, whatever the batch size, and unlike sums of squares it loses nothing when a feature's
mean dwarfs its spread (as with the study's "bad" initial weights).
"""

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from bnlab.models.batchnorm import BatchNorm
from bnlab.models.data import Split, to_inputs
from bnlab.models.network import NetStack, Stack


@torch.no_grad()
def recalibrate(stack: Stack, train: Split, batch_size: int = 1000) -> NetStack:
    """A copy of the `bn` nets in `stack` with their BN population statistics measured over the
    `train` images; `batch_size` only bounds memory, the result does not depend on it."""
    if not isinstance(stack, NetStack):
        raise ValueError("recalibration covers MLP and conv nets; an rnn's BN is per time step")
    if not stack.batch_norms:
        raise ValueError(f"a {stack.variant} net has no BN statistics to recalibrate")
    if len(train) < 2:
        raise ValueError("recalibration needs at least two training images")
    recalibrated = copy.deepcopy(stack)
    device = recalibrated.output_bias.device
    for norm in recalibrated.batch_norms:
        moments = _input_moments(recalibrated, norm, train, batch_size, device)
        assert moments.mean is not None, "a split of two images or more has a mean"
        norm.running_mean.copy_(moments.mean)
        norm.running_var.copy_(moments.unbiased_variance)
    return recalibrated


@dataclass
class Moments:
    """Count, mean and sum of squared deviations of each feature, merged batch by batch."""

    count: int = 0
    mean: Tensor | None = None
    squared_deviations: Tensor | None = None

    def add(self, x: Tensor, reduce_dims: tuple[int, ...]) -> None:
        x = x.double()
        mean = x.mean(dim=reduce_dims, keepdim=True)
        squared_deviations = (x - mean).square().sum(dim=reduce_dims, keepdim=True)
        count = x.numel() // mean.numel()
        if self.mean is None or self.squared_deviations is None:
            self.count, self.mean, self.squared_deviations = count, mean, squared_deviations
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.squared_deviations = (
            self.squared_deviations
            + squared_deviations
            + delta.square() * (self.count * count / total)
        )
        self.count = total

    @property
    def unbiased_variance(self) -> Tensor:
        assert self.squared_deviations is not None and self.count > 1
        return self.squared_deviations / (self.count - 1)


def _input_moments(
    stack: NetStack, norm: BatchNorm, train: Split, batch_size: int, device: torch.device
) -> Moments:
    """The moments of `norm`'s input over the whole split, the net in population mode."""
    moments = Moments()

    def record(_module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        moments.add(args[0], norm.reduce_dims)

    hook = norm.register_forward_pre_hook(record)
    try:
        for start in range(0, len(train), batch_size):
            images = train.images[start : start + batch_size].to(device)
            stack(to_inputs(images).to(stack.output_bias.dtype), "population")  # a float64 net too
    finally:
        hook.remove()
    return moments
