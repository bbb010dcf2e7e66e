"""The study's networks, stacked: several nets of one architecture computed as one module.

A `NetStack` holds G nets side by side; every weight has a leading net axis, so one matmul
steps them all. The study's pair is a stack of two (`plain` first, then `bn`) built from copies
of the same initial weights; a single net for serving is a stack of one. Stacking is what makes a
pair cost about one net's Python overhead per step, not two.

Hidden layer of a `plain` net:  h = act(h @ W + b), b zero at start.
Hidden layer of a `bn` net:     h = act(BN(h @ W)), no bias (BN's beta takes its place).
Output layer of both:           logits = h @ W + b, no BN.

With `conv` set, two convolutions (5x5, same padding, each followed by BN or bias, the
activation and 2x2 max-pooling) come first; their BN keeps statistics per feature map. The nets
of a stack run as groups of one grouped convolution.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.models.batchnorm import BatchNorm, BNImpl, BNMode

Variant = Literal["plain", "bn"]
VARIANTS: tuple[Variant, ...] = ("plain", "bn")
IMAGE_SIDE = 28
CONV_KERNEL = 5

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
}


@dataclass(frozen=True)
class Architecture:
    """What a net looks like: conv channels (none for the MLP), hidden widths, activation."""

    activation: str = "relu"
    hidden_layers: tuple[int, ...] = (100, 100, 100)
    conv_channels: tuple[int, ...] = ()

    def weight_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the initial weights: conv kernels (out, in, k, k), then linear (in, out)."""
        shapes: list[tuple[int, ...]] = []
        channels = 1
        for out in self.conv_channels:
            shapes.append((out, channels, CONV_KERNEL, CONV_KERNEL))
            channels = out
        side = IMAGE_SIDE // 2 ** len(self.conv_channels)
        widths = [channels * side * side, *self.hidden_layers, 10]
        shapes += [(n_in, n_out) for n_in, n_out in zip(widths, widths[1:], strict=False)]
        return shapes


def initial_weights(arch: Architecture, std: float, seed: int) -> list[Tensor]:
    """Normal(0, std) weights, the same for the same seed: 0.05 is "good", 5.0 is "bad"."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) * std for shape in arch.weight_shapes()]


class NetStack(nn.Module):
    """`variants` nets (plain ones first) of one architecture, each from its own initial weights.

    ``forward`` takes images (batch, 28, 28) scaled to [0, 1] and returns logits laid out
    (net, batch, 10).
    """

    def __init__(
        self,
        arch: Architecture,
        variants: Sequence[Variant],
        weights: Sequence[Sequence[Tensor]],
        bn_impl: BNImpl = "bnlab",
    ) -> None:
        super().__init__()
        assert list(variants) == sorted(variants, key=VARIANTS.index), "plain nets come first"
        self.arch = arch
        self.bn_impl = bn_impl
        self.variants = list(variants)
        self.n_plain = self.variants.count("plain")
        self.n_bn = self.variants.count("bn")
        self.act = ACTIVATIONS[arch.activation]
        n_layers = len(arch.weight_shapes())
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([w[i] for w in weights]).clone()) for i in range(n_layers)
        )
        self.biases = nn.ParameterList()  # plain nets' hidden biases
        self.norms = nn.ModuleList()  # bn nets' BN layers
        for i, shape in enumerate(arch.weight_shapes()[:-1]):
            conv = i < len(arch.conv_channels)
            width = shape[0] if conv else shape[1]
            bias_shape = (self.n_plain * width,) if conv else (self.n_plain, 1, width)
            self.biases.append(nn.Parameter(torch.zeros(bias_shape)))
            if conv:
                self.norms.append(BatchNorm((1, self.n_bn * width, 1, 1), (0, 2, 3), bn_impl))
            else:
                self.norms.append(BatchNorm((self.n_bn, 1, width), (1,), bn_impl))
        self.output_bias = nn.Parameter(torch.zeros(len(self.variants), 1, 10))

    @property
    def size(self) -> int:
        return len(self.variants)

    def forward(self, images: Tensor, mode: BNMode) -> Tensor:
        n_conv = len(self.arch.conv_channels)
        h = self._conv_features(images, mode) if n_conv else images.flatten(1)
        for i in range(n_conv, len(self.weights) - 1):
            h = self.act(self._bias_or_norm(i, self._linear(h, i), mode, channel_dim=0))
        return self._linear(h, len(self.weights) - 1) + self.output_bias

    def _linear(self, h: Tensor, layer: int) -> Tensor:
        weight = self.weights[layer]
        if h.dim() == 3:
            return torch.matmul(h, weight)
        # Every net sees the same images: one (batch, in) x (in, nets * out) GEMM, where a
        # batched matmul would copy the images once per net.
        z = h @ weight.transpose(0, 1).flatten(1)
        return z.view(z.shape[0], self.size, -1).transpose(0, 1)

    def _conv_features(self, images: Tensor, mode: BNMode) -> Tensor:
        """Conv layers, nets as groups of one grouped convolution; returns (net, batch, feature)."""
        h = images.unsqueeze(1).expand(-1, self.size, -1, -1)
        for i in range(len(self.arch.conv_channels)):
            z = F.conv2d(h, self.weights[i].flatten(0, 1), padding="same", groups=self.size)
            h = F.max_pool2d(self.act(self._bias_or_norm(i, z, mode, channel_dim=1)), 2)
        return h.flatten(2).view(h.shape[0], self.size, -1).transpose(0, 1)

    def _bias_or_norm(self, layer: int, z: Tensor, mode: BNMode, channel_dim: int) -> Tensor:
        """Plain nets add their bias, bn nets normalize; the nets lie along `channel_dim`."""
        if not self.n_bn:
            return z + self._bias(layer)
        if not self.n_plain:
            return self.norms[layer](z, mode)
        split = z.shape[channel_dim] * self.n_plain // self.size
        plain, bn = z.split([split, z.shape[channel_dim] - split], dim=channel_dim)
        return torch.cat([plain + self._bias(layer), self.norms[layer](bn, mode)], channel_dim)

    def _bias(self, layer: int) -> Tensor:
        bias = self.biases[layer]
        return bias.view(1, -1, 1, 1) if bias.dim() == 1 else bias

    def net_state(self, index: int) -> dict[str, Tensor]:
        """Net `index`'s tensors without the net axis: what its checkpoint stores."""
        state = {f"weight.{i}": w[index] for i, w in enumerate(self.weights)}
        state["output_bias"] = self.output_bias[index, 0]
        for name, tensor in self._per_net_tensors(index):
            state[name] = tensor
        return {name: tensor.detach().clone() for name, tensor in state.items()}

    @torch.no_grad()
    def load_net_state(self, index: int, state: dict[str, Tensor]) -> None:
        """Write one net's tensors (as `net_state` returns them) into net `index`."""
        for i, w in enumerate(self.weights):
            w[index] = state[f"weight.{i}"]
        self.output_bias[index, 0] = state["output_bias"]
        for name, tensor in self._per_net_tensors(index):
            tensor.copy_(state[name])

    def _per_net_tensors(self, index: int) -> list[tuple[str, Tensor]]:
        # Views into the stacked biases or BN tensors that belong to net `index`.
        if self.variants[index] == "plain":
            return [(f"bias.{i}", b.view(self.n_plain, -1)[index]) for i, b in enumerate(self.biases)]
        j = index - self.n_plain
        tensors = [
            (f"bn.{i}.{name}", getattr(norm, name).view(self.n_bn, -1)[j])
            for i, norm in enumerate(self.norms)
            for name in ("gamma", "beta", "running_mean", "running_var")
        ]
        tensors += [(f"bn.{i}.num_batches_tracked", n.num_batches_tracked) for i, n in enumerate(self.norms)]
        return tensors

    @classmethod
    def from_net_states(
        cls,
        arch: Architecture,
        variants: Sequence[Variant],
        states: Sequence[dict[str, Tensor]],
        bn_impl: BNImpl = "bnlab",
    ) -> "NetStack":
        """A stack made of nets saved by `net_state` (a checkpoint holds one)."""
        n_weights = len(arch.weight_shapes())
        weights = [[s[f"weight.{i}"] for i in range(n_weights)] for s in states]
        stack = cls(arch, variants, weights, bn_impl)
        for index, state in enumerate(states):
            stack.load_net_state(index, state)
        return stack
