r"""Batch normalization, written out; and LayerNorm and GroupNorm, which do not need the batch.

For a mini-batch of pre-activations :math:`x`, training does, per feature,

.. math::

    \mu_B = \frac{1}{m}\sum_i x_i \qquad
    \sigma_B^2 = \frac{1}{m}\sum_i (x_i - \mu_B)^2 \qquad
    y_i = \gamma \frac{x_i - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}} + \beta

where :math:`m` counts the values a feature is averaged over: the batch for a linear layer,
batch x height x width for a feature map. The population statistics used at inference are
exponential moving averages, decayed by :math:`1 - \text{momentum}` per training step:

.. math::

    \hat\mu \leftarrow (1 - \text{momentum})\,\hat\mu + \text{momentum}\,\mu_B \qquad
    \hat\sigma^2 \leftarrow (1 - \text{momentum})\,\hat\sigma^2
        + \text{momentum}\,\frac{m}{m - 1}\sigma_B^2

Which variance goes where: the *biased* :math:`\sigma_B^2` normalizes the batch, and the
*unbiased* :math:`\frac{m}{m-1}\sigma_B^2` feeds the running estimate, exactly as
``torch.nn.BatchNorm1d/2d`` do (and as the BN paper prescribes for the population variance).

The study's values: :math:`\epsilon = 10^{-3}`, decay 0.99 (momentum 0.01), :math:`\gamma = 1`
and :math:`\beta = 0` at the start.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPSILON = 1e-3
MOMENTUM = 0.01  # running statistics decayed by 0.99 per step

BNImpl = Literal["bnlab", "torch"]
# train: batch statistics, running statistics updated. population: running statistics.
# batch: statistics of exactly the inputs given, running statistics untouched.
BNMode = Literal["train", "population", "batch"]


class BatchNorm(nn.Module):
    """BN with its statistics shaped ``stats_shape``, averaged over the input's ``reduce_dims``.

    ``BatchNorm((1, C), (0,))`` is ``nn.BatchNorm1d(C)``; ``BatchNorm((1, C, 1, 1), (0, 2, 3))``
    is ``nn.BatchNorm2d(C)``; ``BatchNorm((G, 1, C), (1,))`` keeps separate statistics for G
    stacked nets whose inputs are laid out (net, batch, feature).

    ``impl="torch"`` computes the same thing with ``F.batch_norm`` (torch's fused kernel).
    """

    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(
        self, stats_shape: tuple[int, ...], reduce_dims: tuple[int, ...], impl: BNImpl = "bnlab"
    ) -> None:
        super().__init__()
        self.reduce_dims = reduce_dims
        self.impl = impl
        self.gamma = nn.Parameter(torch.ones(stats_shape))
        self.beta = nn.Parameter(torch.zeros(stats_shape))
        self.register_buffer("running_mean", torch.zeros(stats_shape))
        self.register_buffer("running_var", torch.ones(stats_shape))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor, mode: BNMode) -> Tensor:
        if mode == "train":
            self.num_batches_tracked.add_(1)
        if self.impl == "torch":
            return self._torch_forward(x, mode)
        if mode == "population":
            scale = torch.rsqrt(self.running_var + EPSILON) * self.gamma
            return (x - self.running_mean) * scale + self.beta
        mean = x.mean(dim=self.reduce_dims, keepdim=True)
        centered = x - mean
        # mean of squares rather than x.var(): the same biased variance, several times faster
        # on CPU for a reduction over a leading dim
        var = (centered * centered).mean(dim=self.reduce_dims, keepdim=True)
        if mode == "train":
            count = x.numel() // mean.numel()
            # detached, not just no_grad: the trainer traces this (torch.jit.trace records ops,
            # not grad mode)
            self.running_mean.lerp_(mean.detach(), MOMENTUM)
            self.running_var.lerp_(var.detach() * (count / (count - 1)), MOMENTUM)
        return centered * torch.rsqrt(var + EPSILON) * self.gamma + self.beta

    def _torch_forward(self, x: Tensor, mode: BNMode) -> Tensor:
        # F.batch_norm wants (batch, feature, rest...): move the reduced dims to the ends,
        # fold every feature dim into one, and put the shape back afterwards.
        first, *rest = self.reduce_dims
        features = [d for d in range(x.dim()) if d not in self.reduce_dims]
        order = [first, *features, *rest]
        moved = x.permute(order)
        flat = moved.reshape(moved.shape[0], self.gamma.numel(), -1)
        # torch.batch_norm is what F.batch_norm calls, minus its check that refuses a single
        # value per feature: `batch` mode on one image is exactly that case (and yields beta).
        out = torch.batch_norm(
            flat,
            self.gamma.reshape(-1),
            self.beta.reshape(-1),
            self.running_mean.view(-1) if mode != "batch" else None,
            self.running_var.view(-1) if mode != "batch" else None,
            mode != "population",
            MOMENTUM,
            EPSILON,
            torch.backends.cudnn.enabled,
        )
        return out.reshape(moved.shape).permute(_inverse(order))


def _inverse(order: list[int]) -> list[int]:
    inverse = [0] * len(order)
    for position, dim in enumerate(order):
        inverse[dim] = position
    return inverse


class GroupNorm(nn.Module):
    r"""LayerNorm and GroupNorm: statistics of each example on its own, never of the batch.

    The ``channels`` features of an example (or its feature maps, all their positions) fall into
    ``groups`` consecutive groups of equal size :math:`n`; each value is normalized by its group's
    mean and biased variance in that example, then scaled and shifted per feature:

    .. math::

        \mu_g = \frac{1}{n}\sum_{j \in g} x_j \qquad
        \sigma_g^2 = \frac{1}{n}\sum_{j \in g} (x_j - \mu_g)^2 \qquad
        y_j = \gamma_j \frac{x_j - \mu_g}{\sqrt{\sigma_g^2 + \epsilon}} + \beta_j

    One group is LayerNorm (``nn.LayerNorm(C)`` for features; for feature maps the statistics of
    ``nn.LayerNorm([C, H, W])`` with a gamma and beta per map, i.e. ``nn.GroupNorm(1, C)``);
    ``groups`` = C/n is ``nn.GroupNorm(groups, C)``. Training and inference compute the same
    thing, so the mode of inference changes nothing; :math:`\epsilon` is BN's, so the variants
    differ in what they normalize over, not in how hard. ``nets`` stacked nets are ``nets``
    times as many groups over ``nets * channels`` features: torch's kernel then keeps each net's
    groups apart. The input is laid out (batch, nets * channels, *).
    """

    def __init__(self, nets: int, channels: int, groups: int) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} features do not fall into {groups} equal groups")
        self.groups = nets * groups
        self.gamma = nn.Parameter(torch.ones(nets * channels))
        self.beta = nn.Parameter(torch.zeros(nets * channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.groups, self.gamma, self.beta, EPSILON)
