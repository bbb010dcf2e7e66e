"""Inside the networks: what the study only describes, as numbers at every sample point.

Per hidden layer of each net, over a fixed probe batch (the first `PROBE_SIZE` validation images):

- the 15th, 50th and 85th percentiles of the input to the nonlinearity (after BN for a `bn` net,
  after the bias for a `plain` one), pooled over the layer's units and the probe images (and, in
  a conv layer, positions): the BN paper's Figure 1 picture of "internal covariate shift";
- the fraction of dead units (`DEAD`): for relu and its kin, units whose output is zero (input
  not positive) for every probe image, which no gradient will revive; for sigmoid and tanh, the
  share of (unit, probe image) pairs where the output is saturated, so that the derivative is
  below 0.01. A saturated sigmoid is rarely saturated for *every* image (different images push it
  to different sides, and it learns a little from the rest), but a layer with 90% of its outputs
  saturated learns slowly: that share is what "sigmoid saturates" means;
- the norm of the gradient of the layer's weight on the last training batch before the sample
  point (see `weight_grad_norms`).

The percentiles and dead units come from a forward pass with BN in `population` mode, as the
validation accuracy does: the net as it would be served, and no BN buffer is touched.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bnlab.models.data import to_inputs
from bnlab.models.network import Stack
from bnlab.vocabulary import ACTIVATIONS

PROBE_SIZE = 256
PERCENTILES = (0.15, 0.50, 0.85)
# Percentiles use at most this many values per layer and net, evenly spaced: a conv layer has
# one per unit, image and position (256 channels x 256 images x 784 positions = 51M), and 1M
# values pin a percentile far closer than a plot shows.
MAX_VALUES = 1 << 20
SATURATED = 0.99  # a sigmoid output above 0.99 or below 0.01, a tanh one beyond +-0.99


@dataclass(frozen=True)
class Dead:
    """What counts as dead for an activation, from a unit's pre-activation z on one image."""

    when: Callable[[Tensor], Tensor]
    every_image: bool  # a unit counts if `when` holds on every probe image; else each pair does
    means: str  # for a person reading the fraction


_NOT_POSITIVE = "units whose input is not positive for any probe image"
# leaky_relu and elu units never quite die: stuck in their negative part they carry 1% of the
# gradient (leaky) or a vanishing one (elu); they count like relus.
DEAD: dict[str, Dead] = {
    "relu": Dead(lambda z: z <= 0, True, f"{_NOT_POSITIVE} (zero output)"),
    "leaky_relu": Dead(lambda z: z <= 0, True, _NOT_POSITIVE),
    "elu": Dead(lambda z: z <= 0, True, _NOT_POSITIVE),
    "sigmoid": Dead(
        lambda z: (z.sigmoid() - 0.5).abs() > SATURATED - 0.5,
        False,
        "share of (unit, probe image) pairs with the output saturated (< 0.01 or > 0.99)",
    ),
    "tanh": Dead(
        lambda z: z.tanh().abs() > SATURATED,
        False,
        "share of (unit, probe image) pairs with the output saturated (|output| > 0.99)",
    ),
}
assert set(DEAD) == set(ACTIVATIONS)


@dataclass(frozen=True)
class LayerStats:
    """One hidden layer of one net, over the probe batch."""

    p15: float
    p50: float
    p85: float
    dead_fraction: float


@torch.no_grad()
def layer_stats(stack: Stack, probe_images: Tensor) -> list[list[LayerStats]]:
    """Per net, per hidden layer (conv layers first): percentiles of the pre-activations and the
    fraction of dead units, for uint8 or [0, 1] float images (N, 28, 28)."""
    inputs = to_inputs(probe_images) if probe_images.dtype == torch.uint8 else probe_images
    pre_activations: list[Tensor] = []
    stack(inputs, "population", pre_activations)
    dead = DEAD[stack.arch.activation]
    per_layer = []
    for z in pre_activations:
        units = _units(z, stack.size)  # (net, unit, observation)
        hits = dead.when(units)
        if dead.every_image:
            hits = hits.all(dim=2)
        dead_fractions = hits.flatten(1).double().mean(dim=1).tolist()
        percentiles = _percentiles(units.flatten(1)).tolist()
        per_layer.append(
            [
                LayerStats(p15, p50, p85, dead_fraction)
                for (p15, p50, p85), dead_fraction in zip(percentiles, dead_fractions, strict=True)
            ]
        )
    return [[layer[net] for layer in per_layer] for net in range(stack.size)]


def weight_grad_norms(stack: Stack, learning_rates: Sequence[float]) -> list[list[float]] | None:
    """Per net, per hidden layer: the norm of the gradient of that net's own loss with respect to
    the layer's weight, as the last backward pass left it; None before any.

    The trainer's gradients are those of the last training batch: free to read (no extra pass),
    and the gradient the step actually took, with BN on batch statistics as in training. A probe
    batch would need a training-mode pass of its own that updates BN's running statistics.
    Each net's loss enters the backward pass weighted by its learning rate; dividing by it gives
    the gradient of the loss itself.
    """
    grads = [weight.grad for weight in stack.weights[:-1]]
    if any(grad is None for grad in grads):
        return None
    per_layer = [grad.flatten(1).double().norm(dim=1) for grad in grads if grad is not None]
    rates = torch.tensor(learning_rates, dtype=torch.float64, device=per_layer[0].device)
    return (torch.stack(per_layer, dim=1) / rates.unsqueeze(1)).tolist()


def _units(z: Tensor, n_nets: int) -> Tensor:
    """Pre-activations as (net, unit, observation): a linear layer's come (net, image, unit), a
    conv layer's (image, net * channel, height, width), a unit being a feature map there."""
    if z.dim() == 3:
        return z.transpose(1, 2)
    images, _, height, width = z.shape
    per_net = z.reshape(images, n_nets, -1, height * width)  # (image, net, channel, position)
    return per_net.permute(1, 2, 0, 3).flatten(2)


def _percentiles(values: Tensor) -> Tensor:
    """`PERCENTILES` of each row of `values` (net, n), interpolated linearly between order
    statistics as `torch.quantile` does (which refuses inputs over 16M values); float64. The
    order statistics come from `kthvalue`, a selection: a sort of the row costs 4x as much."""
    n = values.shape[1]
    if n > MAX_VALUES:
        values = values[:, torch.linspace(0, n - 1, MAX_VALUES, device=values.device).long()]
        n = MAX_VALUES
    columns = []
    for fraction in PERCENTILES:
        position = fraction * (n - 1)
        low, weight = int(position), position - int(position)
        below = values.kthvalue(low + 1, dim=1).values.double()
        above = values.kthvalue(low + 2, dim=1).values.double() if weight else below
        columns.append(below + (above - below) * weight)
    return torch.stack(columns, dim=1)
