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
  study's BN's (`batchnorm`); every mode runs torch's BN kernel (training writes the unbiased
  variance into the running estimate, as `nn.BatchNorm1d`).
- `layer_norm`: each :math:`N` normalizes per example, over the gate terms' 4H (resp. the cell
  state's H) features, with the same gammas and betas: the variants differ in what they
  normalize over, not in how hard.

Weights: :math:`[W_x, W_h]` is one (4H, in + H) matrix, the LSTM as one hidden layer (what
`initial_weights` draws and `probes` reads), and the output layer (10, H); biases start at zero.
On the CPU `plain` runs torch's own LSTM op (what `nn.LSTM` runs, oneDNN's), one per net of the
stack. The normalized variants, `plain` where the probes ask for the pre-activations (the op
keeps them to itself) and `plain` on a GPU (there the op is cuDNN's, which has no second
derivative for the sharpness probe) run the formula: every step's input term
:math:`W_x x_t` (and its normalization) for all steps in one GEMM before the loop, only the
recurrence step by step; the two agree up to float rounding. The probes' "layer" is the
LSTM: the input of its cell nonlinearity :math:`\tanh(g)` over every step, so `tanh`'s
saturation is what the dead fraction counts.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.models.batchnorm import EPSILON, MOMENTUM, BNImpl, BNMode
from bnlab.models.network import SEQUENCE_SHAPES, Architecture, Stack
from bnlab.vocabulary import RNN_VARIANTS, Variant

GAMMA = 0.1  # Cooijmans et al.'s initial gamma, for BN and LN alike
# Population inference reads each image on its own, so a large batch (validation's 1,000) runs
# in chunks of this many: each step's tensors then stay in cache, 30-40% faster on a CPU.
INFERENCE_CHUNK = 128


class StepBatchNorm(nn.Module):
    """BN over the batch with statistics per time step, for `nets` stacked nets.

    `forward` takes (batch, step, net, feature) for consecutive steps from `first_step`, all
    of them at once for the input term; `step` one step's (net, batch, feature) inside the
    recurrence.
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
        """(batch, step, net, feature) for the steps from `first_step`: the input term."""
        batch, steps = x.shape[:2]
        gamma = self.gamma.expand(steps, -1, -1, -1).reshape(-1)
        beta = None if self.beta is None else self.beta.expand(steps, -1, -1, -1).reshape(-1)
        y = self._normalize(x.reshape(batch, -1), gamma, beta, first_step, first_step + steps, mode)
        return y.view(x.shape)

    def step(self, x: Tensor, step: int, mode: BNMode) -> Tensor:
        """(net, batch, feature) at `step`: a term inside the recurrence, with the fewest ops
        around the kernel (a training step runs 56 of them)."""
        nets, batch, features = x.shape
        beta = None if self.beta is None else self.beta.view(-1)
        flat = x.transpose(0, 1).reshape(batch, -1)
        y = self._normalize(flat, self.gamma.view(-1), beta, step, step + 1, mode)
        return y.view(batch, nets, features).transpose(0, 1)

    def _normalize(
        self,
        flat: Tensor,
        gamma: Tensor,
        beta: Tensor | None,
        first_step: int,
        end: int,
        mode: BNMode,
    ) -> Tensor:
        """`flat` (batch, step * net * feature) normalized, every column a feature: torch's
        fused kernel in every mode, one op where the formula takes a handful, and a view of
        the caller's tensor where that is laid out batch first (the input term's GEMM, a lone
        net's step). Training writes its running statistics (the unbiased variance, momentum
        as batchnorm's) into this module's, step by step; population inference reads them."""
        if mode == "train" and end > self.running_mean.shape[0]:
            raise ValueError(
                f"statistics are kept for {self.running_mean.shape[0]} steps, not {end}"
            )
        mean, var = self._statistics(first_step, end, mode)
        y, _, _ = torch.native_batch_norm(
            flat, gamma, beta, mean, var, mode != "population", MOMENTUM, EPSILON
        )
        if mode == "train":
            self.steps_trained.clamp_(min=end)
        return y

    def _statistics(
        self, first_step: int, end: int, mode: BNMode
    ) -> tuple[Tensor, Tensor] | tuple[None, None]:
        """The running statistics of steps [first_step, end) flat, as the kernel takes them:
        views to write into when training, the ones to use in population inference."""
        if mode == "batch":
            return None, None
        if mode == "population":
            mean, var = self._population(first_step, end)
        else:
            mean, var = self.running_mean[first_step:end], self.running_var[first_step:end]
        return mean.view(-1), var.view(-1)

    def _population(self, first_step: int, end: int) -> tuple[Tensor, Tensor]:
        last = max(int(self.steps_trained), 1) - 1
        if end - 1 <= last:
            return self.running_mean[first_step:end], self.running_var[first_step:end]
        steps = torch.arange(first_step, end, device=self.running_mean.device).clamp(max=last)
        return self.running_mean[steps], self.running_var[steps]


class StepLayerNorm(nn.Module):
    """LayerNorm over the features of each example: the same at every step and in every mode.
    Takes what `StepBatchNorm` takes."""

    def __init__(self, nets: int, features: int, beta: bool) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((nets, 1, features), GAMMA))
        self.beta = nn.Parameter(torch.zeros(nets, 1, features)) if beta else None

    def forward(self, x: Tensor, first_step: int, mode: BNMode) -> Tensor:
        """(batch, step, net, feature): gamma and beta (net, feature) per net."""
        beta = None if self.beta is None else self.beta.squeeze(1)
        return self._normalize(x, self.gamma.squeeze(1), beta)

    def step(self, x: Tensor, step: int, mode: BNMode) -> Tensor:
        """(net, batch, feature): gamma and beta (net, 1, feature) per net."""
        return self._normalize(x, self.gamma, self.beta)

    def _normalize(self, x: Tensor, gamma: Tensor, beta: Tensor | None) -> Tensor:
        if len(self.gamma) == 1:  # a lone net: gamma and beta inside the kernel, one op
            flat_beta = None if beta is None else beta.reshape(-1)
            return F.layer_norm(x, x.shape[-1:], gamma.reshape(-1), flat_beta, EPSILON)
        y = F.layer_norm(x, x.shape[-1:], eps=EPSILON)
        return y * gamma if beta is None else torch.addcmul(beta, y, gamma)


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
        if mode == "population" and pre_activations is None and len(sequence) > INFERENCE_CHUNK:
            chunks = torch.split(sequence, INFERENCE_CHUNK)
            return torch.cat([self.read(chunk, mode) for chunk in chunks], dim=1)
        # The fused op on the CPU only: on a GPU it is cuDNN's, which has no second derivative
        # (the sharpness probe takes one) and is not checked under CUDA-graph capture.
        fused = not self.norms and pre_activations is None and sequence.device.type == "cpu"
        h = (
            self._fused_recurrence(sequence)
            if fused
            else self._recurrence(sequence, mode, pre_activations)
        )
        return torch.baddbmm(self.output_bias, h, self.weights[1].transpose(1, 2))

    def _fused_recurrence(self, sequence: Tensor) -> Tensor:
        """`plain`'s last hidden states (net, batch, H) through torch's LSTM op, what nn.LSTM
        runs (oneDNN's on this CPU), one net at a time: the same formula as
        `_recurrence` in one native op, up to float rounding."""
        batch, _, inputs = sequence.shape
        zeros = sequence.new_zeros(1, batch, self.hidden)
        no_bias = sequence.new_zeros(4 * self.hidden)  # nn.LSTM's second bias: ours is one
        train = torch.is_grad_enabled()  # keeps what a backward needs (there is no dropout)
        last = []
        for weight, bias in zip(self.weights[0].unbind(), self.bias.unbind(), strict=True):
            w_x, w_h = weight.split([inputs, self.hidden], dim=1)
            params = (w_x, w_h, bias[0], no_bias)
            _, h, _ = torch.lstm(sequence, (zeros, zeros), params, True, 1, 0.0, train, False, True)
            last.append(h)
        return torch.cat(last)

    def _recurrence(
        self, sequence: Tensor, mode: BNMode, pre_activations: list[Tensor] | None
    ) -> Tensor:
        """The last hidden states (net, batch, H), step by step: the formula as written."""
        batch, steps, inputs = sequence.shape
        w_x, w_h = self.weights[0].split([inputs, self.hidden], dim=2)
        # Every step's input term in one GEMM over the nets' weights side by side, normalized
        # in its layout (batch, step, net, gate): a copy to another costs as much as the GEMM,
        # and as much again in the backward. Each step's is a view of it (not an index: its
        # backward would write a zero tensor of all steps per step).
        z_x = F.linear(sequence.reshape(batch * steps, inputs), w_x.reshape(-1, inputs))
        z_x = z_x.view(batch, steps, self.size, -1)
        z_x = self._norm("x", z_x, 0, mode) + self.bias.squeeze(1)
        recurrent_term = _per_net_matmul(w_h.transpose(1, 2))
        h = c = z_x.new_zeros(self.size, batch, self.hidden)
        cell_inputs = []
        for t, z_x_t in enumerate(z_x.unbind(1)):
            z = z_x_t.transpose(0, 1) + self._step_norm("h", recurrent_term(h), t, mode)
            i, f, g, o = z.chunk(4, dim=2)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self._step_norm("c", c, t, mode))
            cell_inputs.append(g)
        if pre_activations is not None:
            pre_activations.append(torch.cat(cell_inputs, dim=1))  # (net, batch * step, H)
        return h

    def _step_norm(self, term: str, x: Tensor, step: int, mode: BNMode) -> Tensor:
        """Term `term` (net, batch, feature) at `step` normalized."""
        if term not in self.norms:  # plain
            return x
        norm = self.norms[term]
        assert isinstance(norm, StepBatchNorm | StepLayerNorm)
        return norm.step(x, step, mode)

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


def _per_net_matmul(weight_t: Tensor) -> Callable[[Tensor], Tensor]:
    """x (net, batch, in) -> x @ `weight_t` (net, in, out) per net. A lone net's as a plain GEMM,
    faster than a bmm of one, through squeezes: the backward of an index (`x[0]`) would
    allocate a zero gradient of its whole input at every step."""
    if weight_t.shape[0] == 1:
        weight = weight_t.squeeze(0)
        return lambda x: (x.squeeze(0) @ weight).unsqueeze(0)
    return lambda x: torch.bmm(x, weight_t)
