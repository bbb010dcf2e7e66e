r"""The study's last section: an LSTM reading the image as a sequence, with BN per time step.

An `rnn` net reads a 28x28 image row by row (28 steps of 28 pixels) or pixel by pixel (784
steps of one) and classifies it from its last hidden state through a linear layer. At step t,
from the input :math:`x_t` and the state :math:`h_{t-1}, c_{t-1}` (both zero at the start):

.. math::

    (i, f, g, o) = N_x(W_x x_t) + N_h(W_h h_{t-1}) + b \qquad
    c_t = \sigma(f) c_{t-1} + \sigma(i) \tanh(g) \qquad
    h_t = \sigma(o) \tanh(N_c(c_t))

with the gates in `nn.LSTM`'s order and, per variant (Cooijmans et al. 2016, "Recurrent Batch
Normalization", arXiv 1603.09025):

- `plain`: every :math:`N` is the identity: `nn.LSTM` (its two biases in one).
- `bn`: each :math:`N` is BN with statistics **per time step**: step t normalizes with the mean
  and variance of its own batch, and keeps running statistics of its own, up to the longest
  sequence trained; beyond it, inference uses the last trained step's. Gamma starts at 0.1 (at
  1, the paper shows, the tanh saturates and gradients vanish through time); :math:`N_x` and
  :math:`N_h` have no beta (b takes its place), :math:`N_c`'s starts at 0. The cell update
  itself is left alone so that gradients flow through :math:`c`. Epsilon and momentum are the
  study's BN's (`batchnorm`); training runs torch's BN kernel (unbiased variance into the
  running estimate), population inference the formula.
- `layer_norm`: each :math:`N` normalizes per example, over the gate terms' 4H (resp. the cell
  state's H) features, with the same gammas and betas: the variants differ in what they
  normalize over, not in how hard.

Weights: :math:`[W_x, W_h]` is one (4H, in + H) matrix, the LSTM as one hidden layer (what
`initial_weights` draws and `probes` reads), and the output layer (10, H); biases start at zero.
The stack computes every step's input term :math:`W_x x_t` (and its normalization) for all steps
in one GEMM before the loop; only the recurrence runs step by step. The probes' "layer" is the
LSTM: the input of its cell nonlinearity :math:`\tanh(g)` over every step, so `tanh`'s
saturation is what the dead fraction counts.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.models.batchnorm import EPSILON, MOMENTUM, BNImpl, BNMode
from bnlab.models.network import SEQUENCE_SHAPES, Architecture, Stack
from bnlab.vocabulary import RNN_VARIANTS, Variant

GAMMA = 0.1  # Cooijmans et al.'s initial gamma, for BN and LN alike


class StepBatchNorm(nn.Module):
    """BN over the batch with statistics per time step, for `nets` stacked nets.

    Takes (step, net, batch, feature) for consecutive steps from `first_step`: one step inside
    the recurrence, or all of them at once for the input term.
    """

    running_mean: Tensor  # (step, net, 1, feature)
    running_var: Tensor
    steps_trained: Tensor  # the longest sequence trained on: steps beyond use its last step's

    def __init__(self, nets: int, features: int, steps: int, beta: bool) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((nets, 1, features), GAMMA))
        self.beta = nn.Parameter(torch.zeros(nets, 1, features)) if beta else None
        self.register_buffer("running_mean", torch.zeros(steps, nets, 1, features))
        self.register_buffer("running_var", torch.ones(steps, nets, 1, features))
        self.register_buffer("steps_trained", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor, first_step: int, mode: BNMode) -> Tensor:
        end = first_step + x.shape[0]
        if mode == "population":
            mean, var = self._population(first_step, end)
            y = (x - mean) * torch.rsqrt(var + EPSILON) * self.gamma
            return y if self.beta is None else y + self.beta
        if mode == "train" and end > self.running_mean.shape[0]:
            raise ValueError(
                f"statistics are kept for {self.running_mean.shape[0]} steps, not {end}"
            )
        # torch's fused kernel, one op where the formula takes a dozen: every (step, net,
        # feature) a feature of a (batch, feature) input; its running statistics (the unbiased
        # variance, momentum as batchnorm's) written into this module's, step by step.
        steps, nets, batch, features = x.shape
        flat = x.permute(2, 0, 1, 3).reshape(batch, -1)
        gamma = self.gamma.expand(steps, -1, -1, -1).reshape(-1)
        beta = None if self.beta is None else self.beta.expand(steps, -1, -1, -1).reshape(-1)
        track = mode == "train"
        y = torch.batch_norm(
            flat,
            gamma,
            beta,
            self.running_mean[first_step:end].view(-1) if track else None,
            self.running_var[first_step:end].view(-1) if track else None,
            True,
            MOMENTUM,
            EPSILON,
            torch.backends.cudnn.enabled,
        )
        if track:
            self.steps_trained.clamp_(min=end)
        return y.view(batch, steps, nets, features).permute(1, 2, 0, 3)

    def _population(self, first_step: int, end: int) -> tuple[Tensor, Tensor]:
        last = max(int(self.steps_trained), 1) - 1
        if end - 1 <= last:
            return self.running_mean[first_step:end], self.running_var[first_step:end]
        steps = torch.arange(first_step, end, device=self.running_mean.device).clamp(max=last)
        return self.running_mean[steps], self.running_var[steps]


class StepLayerNorm(nn.Module):
    """LayerNorm over the features of each example: the same at every step and in every mode."""

    def __init__(self, nets: int, features: int, beta: bool) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((nets, 1, features), GAMMA))
        self.beta = nn.Parameter(torch.zeros(nets, 1, features)) if beta else None

    def forward(self, x: Tensor, first_step: int, mode: BNMode) -> Tensor:
        y = F.layer_norm(x, x.shape[-1:], eps=EPSILON) * self.gamma
        return y if self.beta is None else y + self.beta


# The normalized terms: input-to-hidden, hidden-to-hidden (no beta: b), cell state.
TERMS = ("x", "h", "c")


class LSTMStack(Stack):
    """`size` LSTMs of one variant (`RNN_VARIANTS`), each from its own initial weights."""

    def __init__(
        self,
        arch: Architecture,
        variant: Variant,
        weights: Sequence[Sequence[Tensor]],
        bn_impl: BNImpl = "bnlab",
    ) -> None:
        # bn_impl is the MLP's choice of BN kernel; the rnn has one, `StepBatchNorm`
        super().__init__(arch, variant, weights, bn_impl)
        if variant not in RNN_VARIANTS:
            raise ValueError(f"an rnn takes the variants {', '.join(RNN_VARIANTS)}, not {variant}")
        assert arch.rnn_hidden is not None and arch.sequence is not None
        self.hidden = arch.rnn_hidden
        self.steps, self.inputs = SEQUENCE_SHAPES[arch.sequence]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([w[i] for w in weights]).clone()) for i in range(2)
        )
        self.bias = nn.Parameter(torch.zeros(self.size, 1, 4 * self.hidden))
        self.output_bias = nn.Parameter(torch.zeros(self.size, 1, 10))
        self.norms = nn.ModuleDict()
        if variant != "plain":
            widths = {"x": 4 * self.hidden, "h": 4 * self.hidden, "c": self.hidden}
            for term, width in widths.items():
                beta = term == "c"
                self.norms[term] = (
                    StepBatchNorm(self.size, width, self.steps, beta)
                    if variant == "bn"
                    else StepLayerNorm(self.size, width, beta)
                )

    def forward(
        self,
        images: Tensor,
        mode: BNMode,
        pre_activations: list[Tensor] | None = None,
        noise: Sequence[Tensor] = (),  # always empty: an rnn has no bn_noisy variant
    ) -> Tensor:
        sequence = images.reshape(images.shape[0], self.steps, self.inputs)
        return self.read(sequence, mode, pre_activations)

    def read(
        self, sequence: Tensor, mode: BNMode, pre_activations: list[Tensor] | None = None
    ) -> Tensor:
        """Logits (net, batch, 10) for a sequence (batch, step, input) of any length."""
        batch, steps, inputs = sequence.shape
        w_x, w_h = self.weights[0].split([inputs, self.hidden], dim=2)
        # Every step's input term in one GEMM over the nets' weights side by side, then laid
        # out (step, net, batch, gate) so that each step's slice is contiguous.
        z_x = F.linear(sequence.reshape(batch * steps, inputs), w_x.reshape(-1, inputs))
        z_x = z_x.view(batch, steps, self.size, -1).permute(1, 2, 0, 3).contiguous()
        z_x = self._norm("x", z_x, 0, mode) + self.bias
        w_h = w_h.transpose(1, 2)
        h = c = z_x.new_zeros(self.size, batch, self.hidden)
        cell_inputs = []
        for t in range(steps):
            z = z_x[t] + self._norm("h", _matmul(h, w_h)[None], t, mode)[0]
            i, f, g, o = z.chunk(4, dim=2)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self._norm("c", c[None], t, mode)[0])
            cell_inputs.append(g)
        if pre_activations is not None:
            pre_activations.append(torch.cat(cell_inputs, dim=1))  # (net, batch * step, H)
        return torch.baddbmm(self.output_bias, h, self.weights[1].transpose(1, 2))

    def _norm(self, term: str, x: Tensor, first_step: int, mode: BNMode) -> Tensor:
        if term not in self.norms:  # plain
            return x
        y: Tensor = self.norms[term](x, first_step, mode)
        return y

    def _per_net_tensors(self, index: int) -> dict[str, Tensor]:
        # Views of net `index`'s share: "bias", "<bn|norm>.<term>.<name>"; running statistics
        # (step, feature), the longest sequence trained shared by the stack's nets.
        tensors = {"bias": self.bias[index, 0]}
        prefix = "bn" if self.variant == "bn" else "norm"
        for term, norm in self.norms.items():
            assert isinstance(norm, StepBatchNorm | StepLayerNorm)
            named = {"gamma": norm.gamma[index, 0]}
            if norm.beta is not None:
                named["beta"] = norm.beta[index, 0]
            if isinstance(norm, StepBatchNorm):
                named["running_mean"] = norm.running_mean[:, index, 0]
                named["running_var"] = norm.running_var[:, index, 0]
                named["steps_trained"] = norm.steps_trained
            tensors.update({f"{prefix}.{term}.{name}": t for name, t in named.items()})
        return tensors


def _matmul(h: Tensor, weight_t: Tensor) -> Tensor:
    """(net, batch, in) @ (net, in, out); a lone net as a plain GEMM, faster than a bmm of one."""
    if h.shape[0] == 1:
        return (h[0] @ weight_t[0]).unsqueeze(0)
    return torch.bmm(h, weight_t)
