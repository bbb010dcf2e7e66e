"""The study's networks, stacked: several nets of one architecture computed as one module.

A `NetStack` holds G nets of one variant side by side; every weight has a leading net axis, so
one batched kernel computes them all. A trainer's lane holds its cells' nets of one variant in a
stack (on the CPU an MLP's training step then takes each net as a stack of one of its own, see
`backprop`); a single net for serving is a stack of one.

Hidden layer of a `plain` net:       h = act(h @ W + b), b zero at start.
Hidden layer of a `bn` net:          h = act(BN(h @ W)), no bias (BN's beta takes its place).
Hidden layer of a `bn_noisy` net:    h = act(BN(h @ W) + noise) in training, as `bn` otherwise.
Hidden layer of a `bn_after` net:    h = BN(act(h @ W + b)).
Hidden layer of a `layer_norm` net:  h = act(LN(h @ W)), no bias.
Hidden layer of a `group_norm` net:  h = act(GN(h @ W)), no bias; `Architecture.norm_groups`.
Output layer of all:                 logits = h @ W + b, no normalization.

With `conv` set, convolutions (5x5, same padding, each followed by its normalization or bias,
the activation and 2x2 max-pooling) come first; their BN keeps statistics per feature map, their
LN/GN normalize each image's maps (see `batchnorm.GroupNorm`). The nets of a stack run as the
groups of one grouped convolution.

`bn_noisy` is Santurkar et al. 2018's "noisy BatchNorm" (§2.1): BN's output made distributionally
unstable on purpose. At every training step each unit j of each hidden layer (each feature map of
a conv layer) draws a mean mu_j ~ U(-NOISE_MEAN, NOISE_MEAN) and a standard deviation
sigma_j ~ U(1, NOISE_STD), and every value of that unit (each image, each position) gets i.i.d.
noise N(mu_j, sigma_j^2) added: non-zero mean, non-unit variance, a new distribution every step.
NOISE_MEAN = 0.5 and NOISE_STD = 1.25 are this module's choice, in the paper's form (its appendix
tunes them per experiment; its text was not at hand here): enough to move every unit's
distribution by a good part of BN's unit scale each step, not so much that a unit drowns.
The noise comes from a generator seeded from (seed, step) alone (`bn_noise`), so a resumed run
draws exactly what an uninterrupted one does, with no generator state to save; every net of a
stack gets the same noise (the cells of a trainer share their seed), so a net's noise does not
depend on the nets beside it. Inference (`population`, `batch`) adds none: a served `bn_noisy`
net is a `bn` net, and the noise is a training-time perturbation whose effect on the weights is
what the experiment compares.
"""

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.models.batchnorm import BatchNorm, BNImpl, BNMode, GroupNorm
from bnlab.vocabulary import BATCH_DEPENDENT, Activation, SequenceOrder, Variant

IMAGE_SIDE = 28
# How an `rnn` reads an image: (time steps, values per step).
SEQUENCE_SHAPES: dict[SequenceOrder, tuple[int, int]] = {
    "rows": (IMAGE_SIDE, IMAGE_SIDE),
    "pixels": (IMAGE_SIDE * IMAGE_SIDE, 1),
}
CONV_KERNEL = 5
# GroupNorm's default: Wu & He's 32 groups, or the largest count below that every width divides
# into groups of MIN_GROUP or more (a group of one feature would normalize it to its beta).
MOST_GROUPS = 32
MIN_GROUP = 4
BIASED: frozenset[Variant] = frozenset({"plain", "bn_after"})  # hidden layers with a bias
NORMALIZED_FIRST: frozenset[Variant] = frozenset({"bn", "bn_noisy", "layer_norm", "group_norm"})
# bn_noisy's noise: per unit and step, mean in U(-NOISE_MEAN, NOISE_MEAN), std in U(1, NOISE_STD)
NOISE_MEAN = 0.5
NOISE_STD = 1.25
# What a net's checkpoint calls a normalization's tensors: "<prefix>.<layer>.<name>".
_STATE_NAMES: dict[type[nn.Module], tuple[str, tuple[str, ...]]] = {
    BatchNorm: ("bn", ("gamma", "beta", "running_mean", "running_var")),
    GroupNorm: ("norm", ("gamma", "beta")),
}

ACTIVATION_FUNCTIONS: dict[Activation, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
}


@dataclass(frozen=True)
class Architecture:
    """What a net looks like: conv channels (none for the MLP), hidden widths, activation, and
    the groups of a `group_norm` net's every layer (None: `norm_groups`' default). An `rnn` is
    an LSTM `rnn_hidden` wide reading the image in `sequence` order (see `recurrent`) instead;
    both None for the others."""

    activation: Activation = "relu"
    hidden_layers: tuple[int, ...] = (100, 100, 100)
    conv_channels: tuple[int, ...] = ()
    groups: int | None = None
    rnn_hidden: int | None = None
    sequence: SequenceOrder | None = None

    def __post_init__(self) -> None:
        if (self.rnn_hidden is None) != (self.sequence is None):
            raise ValueError("an rnn needs both rnn_hidden and sequence, other nets neither")

    def norm_groups(self) -> int:
        """GroupNorm's groups per layer: as given, else the most, up to `MOST_GROUPS`, that
        divide every hidden width and conv channel count into groups of `MIN_GROUP` or more
        (100 features: 25 groups of 4), else 1."""
        if self.groups is not None:
            return self.groups
        widths = (*self.conv_channels, *self.hidden_layers)
        fitting = [
            g
            for g in range(1, MOST_GROUPS + 1)
            if all(w % g == 0 and w // g >= MIN_GROUP for w in widths)
        ]
        return max(fitting, default=1)

    def weight_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the initial weights: conv kernels (out, in, k, k), then linear (out, in).
        An rnn's: the LSTM's four gates on [input, hidden state] (4 * hidden, in + hidden), then
        the output layer (10, hidden)."""
        if self.rnn_hidden is not None and self.sequence is not None:
            values = SEQUENCE_SHAPES[self.sequence][1]
            return [(4 * self.rnn_hidden, values + self.rnn_hidden), (10, self.rnn_hidden)]
        shapes: list[tuple[int, ...]] = []
        channels = 1
        for out in self.conv_channels:
            shapes.append((out, channels, CONV_KERNEL, CONV_KERNEL))
            channels = out
        side = IMAGE_SIDE // 2 ** len(self.conv_channels)
        widths = [channels * side * side, *self.hidden_layers, 10]
        shapes += [(n_out, n_in) for n_in, n_out in pairwise(widths)]
        return shapes


def initial_weights(arch: Architecture, std: float, seed: int) -> list[Tensor]:
    """Normal(0, std) weights, the same for the same seed: 0.05 is "good", 5.0 is "bad"."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) * std for shape in arch.weight_shapes()]


def bn_noise(arch: Architecture, batch_size: int, seed: int, step: int) -> list[Tensor]:
    """A `bn_noisy` net's noise at training step `step`, per hidden layer: (batch, unit) for a
    linear layer, (batch, channel, height, width) for a conv layer; on the CPU."""
    # torch's CPU generator keeps 32 bits of a seed: (seed, step) hashed to 32, apart from
    # BatchOrder's streams by the name
    key = hashlib.blake2b(f"bn_noise {seed} {step}".encode(), digest_size=4).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(key, "little"))
    noise = []
    for i, shape in enumerate(arch.weight_shapes()[:-1]):
        conv = i < len(arch.conv_channels)
        side = IMAGE_SIDE // 2**i
        per_value = (batch_size, shape[0], side, side) if conv else (batch_size, shape[0])
        per_unit = (shape[0], 1, 1) if conv else (shape[0],)
        mean = (torch.rand(per_unit, generator=generator) * 2 - 1) * NOISE_MEAN
        std = 1 + torch.rand(per_unit, generator=generator) * (NOISE_STD - 1)
        noise.append(mean + std * torch.randn(per_value, generator=generator))
    return noise


class Stack(nn.Module, ABC):
    """`size` nets of one architecture and one variant, each from its own initial weights: what
    the trainer's lanes, checkpoints, inference, the collapse demo and probes work with.
    `NetStack` (MLP, conv) and `recurrent.LSTMStack` (rnn) are its kinds; `stack_class` says
    which an architecture takes.

    ``forward`` takes images (batch, 28, 28) scaled to [0, 1] and returns logits laid out
    (net, batch, 10); `pre_activations`, if given, receives each hidden layer's input to its
    nonlinearity, as `probes` reads them.
    """

    weights: nn.ParameterList  # (net, ...) each, from `Architecture.weight_shapes`
    output_bias: nn.Parameter  # (net, 1, 10)

    def __init__(
        self,
        arch: Architecture,
        variant: Variant,
        weights: Sequence[Sequence[Tensor]],
        bn_impl: BNImpl = "bnlab",
    ) -> None:
        super().__init__()
        self.arch = arch
        self.variant = variant
        self.bn_impl = bn_impl
        self.size = len(weights)

    @abstractmethod
    def forward(
        self,
        images: Tensor,
        mode: BNMode,
        pre_activations: list[Tensor] | None = None,
        noise: Sequence[Tensor] = (),
    ) -> Tensor:
        """Logits; `noise` is a `bn_noisy` stack's training noise (`bn_noise`), else empty."""

    @abstractmethod
    def _per_net_tensors(self, index: int) -> dict[str, Tensor]:
        """Views of net `index`'s share of every tensor but its weights and output bias, by
        the name its checkpoint stores it under."""

    def net_state(self, index: int) -> dict[str, Tensor]:
        """Net `index`'s tensors without the net axis: what its checkpoint stores."""
        state = {f"weight.{i}": w[index] for i, w in enumerate(self.weights)}
        state["output_bias"] = self.output_bias[index, 0]
        state.update(self._per_net_tensors(index))
        return {name: tensor.detach().clone() for name, tensor in state.items()}

    @torch.no_grad()
    def load_net_state(self, index: int, state: dict[str, Tensor]) -> None:
        """Write one net's tensors (as `net_state` returns them) into net `index`."""
        for i, w in enumerate(self.weights):
            w[index] = state[f"weight.{i}"]
        self.output_bias[index, 0] = state["output_bias"]
        for name, tensor in self._per_net_tensors(index).items():
            tensor.copy_(state[name])

    @property
    def depends_on_batch(self) -> bool:
        """Whether a net's output for an image depends on the batch it comes in (BN's)."""
        return self.variant in BATCH_DEPENDENT

    @property
    def noisy(self) -> bool:
        """Whether training adds `bn_noise` after BN (a `bn_noisy` stack)."""
        return self.variant == "bn_noisy"

    @property
    def foldable(self) -> bool:
        """Whether `fused` inference folds this net's BN into the layer before it."""
        return False

    @classmethod
    def from_net_states(
        cls,
        arch: Architecture,
        variant: Variant,
        states: Sequence[dict[str, Tensor]],
        bn_impl: BNImpl = "bnlab",
    ) -> Self:
        """A stack made of nets saved by `net_state` (a checkpoint holds one)."""
        n_weights = len(arch.weight_shapes())
        weights = [[s[f"weight.{i}"] for i in range(n_weights)] for s in states]
        stack = cls(arch, variant, weights, bn_impl)
        for index, state in enumerate(states):
            stack.load_net_state(index, state)
        return stack


def stack_class(arch: Architecture) -> type[Stack]:
    """The kind of stack that computes nets of `arch`."""
    if arch.sequence is None:
        return NetStack
    from bnlab.models.recurrent import LSTMStack  # recurrent builds on this module

    return LSTMStack


class NetStack(Stack):
    """MLP and conv nets, stacked (see the module's docstring)."""

    def __init__(
        self,
        arch: Architecture,
        variant: Variant,
        weights: Sequence[Sequence[Tensor]],
        bn_impl: BNImpl = "bnlab",
    ) -> None:
        super().__init__(arch, variant, weights, bn_impl)
        self.act = ACTIVATION_FUNCTIONS[arch.activation]
        n_layers = len(arch.weight_shapes())
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([w[i] for w in weights]).clone()) for i in range(n_layers)
        )
        self.biases = nn.ParameterList()  # plain, bn_after: hidden biases, zero at start
        self.norms = nn.ModuleList()  # the others: a normalization per hidden layer
        for i, shape in enumerate(arch.weight_shapes()[:-1]):
            conv = i < len(arch.conv_channels)
            if variant in BIASED:
                shape_of_bias = (self.size * shape[0],) if conv else (self.size, 1, shape[0])
                self.biases.append(nn.Parameter(torch.zeros(shape_of_bias)))
            if variant != "plain":
                self.norms.append(self._norm(shape[0], conv))
        self.output_bias = nn.Parameter(torch.zeros(self.size, 1, 10))

    def _norm(self, width: int, conv: bool) -> nn.Module:
        """The normalization of a hidden layer `width` features (or feature maps) wide."""
        if self.variant == "layer_norm":
            return GroupNorm(self.size, width, 1)
        if self.variant == "group_norm":
            return GroupNorm(self.size, width, self.arch.norm_groups())
        if conv:
            return BatchNorm((1, self.size * width, 1, 1), (0, 2, 3), self.bn_impl)
        return BatchNorm((self.size, 1, width), (1,), self.bn_impl)

    @property
    def foldable(self) -> bool:
        return self.variant in ("bn", "bn_noisy")  # bn_noisy serves as bn: no noise

    @property
    def batch_norms(self) -> list[BatchNorm]:
        """The BN layers (`norms`, typed), one per hidden layer of a `bn` or `bn_after` net."""
        return [norm for norm in self.norms if isinstance(norm, BatchNorm)]

    def forward(
        self,
        images: Tensor,
        mode: BNMode,
        pre_activations: list[Tensor] | None = None,
        noise: Sequence[Tensor] = (),
    ) -> Tensor:
        """Logits; `pre_activations`, if given, receives each hidden layer's input to its
        nonlinearity (after a normalization before it, or after the bias), as `probes` reads
        them. A `bn_noisy` stack in `train` mode takes its step's `bn_noise` as `noise`."""
        if self.noisy and mode == "train" and len(noise) != len(self.norms):
            raise ValueError("a bn_noisy net trains with its step's noise, one per hidden layer")
        n_conv = len(self.arch.conv_channels)
        h = (
            self._conv_features(images, mode, pre_activations, noise)
            if n_conv
            else images.flatten(1)
        )
        for i in range(n_conv, len(self.weights) - 1):
            z = self._linear(h, i, self.biases[i] if self.variant in BIASED else None)
            h = self._activate(z, i, mode, pre_activations, noise)
        return self._linear(h, len(self.weights) - 1, self.output_bias)

    def _activate(
        self,
        z: Tensor,
        layer: int,
        mode: BNMode,
        pre_activations: list[Tensor] | None,
        noise: Sequence[Tensor],
    ) -> Tensor:
        """A hidden layer past its linear part: normalization, activation, in the variant's
        order. `z` is (net, batch, feature), or (batch, net * channel, height, width)."""
        if self.variant in NORMALIZED_FIRST:
            z = self._normalize(z, layer, mode)
        if self.noisy and mode == "train":
            z = self._add_noise(z, noise[layer])
        if pre_activations is not None:
            pre_activations.append(z)
        h = self.act(z)
        return self._normalize(h, layer, mode) if self.variant == "bn_after" else h

    def _add_noise(self, z: Tensor, noise: Tensor) -> Tensor:
        """Every net's values plus the same noise: (batch, unit) broadcasts over the nets of a
        linear layer's (net, batch, unit); a conv layer's nets are folded into its channels."""
        if z.dim() == 3:
            return z + noise
        per_net = z.view(z.shape[0], self.size, *noise.shape[1:]) + noise.unsqueeze(1)
        return per_net.view(z.shape)

    def _normalize(self, x: Tensor, layer: int, mode: BNMode) -> Tensor:
        norm = self.norms[layer]
        y: Tensor
        if isinstance(norm, BatchNorm):
            y = norm(x, mode)
        elif x.dim() == 4:  # feature maps: already (batch, net * channel, ...)
            y = norm(x)
        else:  # (net, batch, feature) -> (batch, net * feature) and back: views for a lone net
            y = norm(x.transpose(0, 1).flatten(1)).view(x.shape[1], self.size, -1).transpose(0, 1)
        return y

    def _linear(self, h: Tensor, layer: int, bias: Tensor | None = None) -> Tensor:
        weight = self.weights[layer]  # (net, out, in), as nn.Linear keeps it: the faster GEMMs
        if h.dim() == 3 and self.size == 1:  # a lone net: a plain GEMM beats a batch of one
            return F.linear(h[0], weight[0], None if bias is None else bias[0, 0]).unsqueeze(0)
        if h.dim() == 3:
            transposed = weight.transpose(1, 2)
            return (
                torch.matmul(h, transposed) if bias is None else torch.baddbmm(bias, h, transposed)
            )
        # Every net sees the same images: one (batch, in) x (in, nets * out) GEMM, where a
        # batched matmul would copy the images once per net.
        z = F.linear(h, weight.flatten(0, 1), None if bias is None else bias.flatten())
        return z.view(z.shape[0], self.size, -1).transpose(0, 1)

    def _conv_features(
        self,
        images: Tensor,
        mode: BNMode,
        pre_activations: list[Tensor] | None,
        noise: Sequence[Tensor],
    ) -> Tensor:
        """Conv layers, nets as groups of one grouped convolution; returns (net, batch, feature).
        Their pre-activations are laid out (batch, net * channel, height, width)."""
        h = images.unsqueeze(1).expand(-1, self.size, -1, -1)
        for i in range(len(self.arch.conv_channels)):
            kernel = self.weights[i].flatten(0, 1)
            bias = self.biases[i] if self.variant in BIASED else None
            z = F.conv2d(h, kernel, bias, padding="same", groups=self.size)
            h = F.max_pool2d(self._activate(z, i, mode, pre_activations, noise), 2)
        return h.flatten(2).view(h.shape[0], self.size, -1).transpose(0, 1)

    def _per_net_tensors(self, index: int) -> dict[str, Tensor]:
        # Views into the stacked biases and normalization tensors that belong to net `index`:
        # "bias.<layer>", "bn.<layer>.<name>" (BN) or "norm.<layer>.<name>" (LN, GN).
        tensors = {f"bias.{i}": b.view(self.size, -1)[index] for i, b in enumerate(self.biases)}
        for i, norm in enumerate(self.norms):
            prefix, names = _STATE_NAMES[type(norm)]
            for name in names:
                tensors[f"{prefix}.{i}.{name}"] = getattr(norm, name).view(self.size, -1)[index]
        for i, bn in enumerate(self.batch_norms):  # every norm of a net that has BN is BN
            tensors[f"bn.{i}.num_batches_tracked"] = bn.num_batches_tracked
        return tensors
