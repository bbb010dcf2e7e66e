r"""A training step of a stack of MLPs, written out: forward, backward and the SGD update.

Autograd records some 60 nodes per step and walks them back; for nets this small that
bookkeeping costs about as much as the arithmetic. Written out, a step is the forward's ops,
their derivatives in reverse order and an in-place update, compiled once with TorchScript with
the loop over a sample interval's steps (so a lane's thread takes the GIL for one call per
interval, not for each op or step).

Each net of the stack steps on its own tensors, one net after the other, with exactly the calls
and shapes a lone net's step makes (2-D GEMMs, torch's BN and GroupNorm kernels on (batch,
feature)). So a net's numbers cannot depend on the nets beside it, whichever kernels MKL and
ATen pick: a wide GEMM over all nets, a BN kernel over all their channels or an elementwise
kernel over all their activations would each round a net's values differently with the group's
size (ATen finishes a vector-width tail with scalar code; MKL picks kernels by shape). It costs
nothing measurable: on the classic grid the per-net loop ran faster than the wide layout did
(bench/RESULTS.md).

Hidden layer :math:`l` of a net, for a batch :math:`h` laid out (batch, in), in its variant's
order (see `network`):

.. math::

    z = h W^\top \;(+\, b \text{ for plain, bn\_after}) \qquad
    y = \mathrm{BN}(z) \text{ for bn}, \; \mathrm{GN}_1(z) \text{ for layer\_norm}, \;
        \mathrm{GN}_G(z) \text{ for group\_norm}, \; z \text{ otherwise}

.. math::

    a = \mathrm{act}(y) \qquad h' = \mathrm{BN}(a) \text{ for bn\_after}, \; a \text{ otherwise}

with :math:`\mathrm{GN}_G` each image's features normalized in :math:`G` consecutive groups
(`batchnorm.GroupNorm`; :math:`G` = `Architecture.norm_groups`), by torch's kernel
(``native_group_norm``, what ``F.group_norm`` calls), and BN torch's (``native_batch_norm``,
running statistics updated). Backward, from :math:`\delta = \partial L / \partial h'`:

.. math::

    \frac{\partial L}{\partial a} = \mathrm{BN}'(\delta) \text{ for bn\_after}, \;
        \delta \text{ otherwise} \qquad
    \frac{\partial L}{\partial y} = \frac{\partial L}{\partial a} \odot \mathrm{act}'(y)

.. math::

    \frac{\partial L}{\partial z} = \mathrm{BN}'\Big(\frac{\partial L}{\partial y}\Big)
        \text{ or } \mathrm{GN}_G'\Big(\frac{\partial L}{\partial y}\Big), \;
        \frac{\partial L}{\partial y} \text{ otherwise} \qquad
    \frac{\partial L}{\partial W} = \Big(\frac{\partial L}{\partial z}\Big)^{\!\top} h \qquad
    \frac{\partial L}{\partial h} = \frac{\partial L}{\partial z}\, W

with :math:`\mathrm{BN}'` and :math:`\mathrm{GN}_G'` torch's backward kernels
(``native_batch_norm_backward``, ``native_group_norm_backward``, what autograd calls), which
also give :math:`\partial L/\partial\gamma` and :math:`\partial L/\partial\beta`; a bias's
:math:`\partial L/\partial b` is :math:`\partial L / \partial z` summed over the batch. The
loss is each net's mean cross-entropy weighted by its learning rate, so the update is
:math:`\theta \leftarrow \theta - \partial L/\partial\theta`: what `Lane`'s autograd step does
with SGD at learning rate 1. The same numbers up to float rounding (the tests hold it to 1e-6
over a training run, in regimes where rounding does not grow from step to step).

At the last step before a sample point the hidden layers' weight gradients are left in
``weight.grad``, as autograd would leave them, for `probes.weight_grad_norms`; at the other
steps each weight's update is fused into the GEMM that computes its gradient.
"""

import threading
import warnings
from collections.abc import Callable, Sequence
from functools import cache
from typing import TypeGuard

import torch
from torch import Tensor, nn

from bnlab.models.batchnorm import EPSILON, MOMENTUM, BatchNorm, GroupNorm
from bnlab.models.data import to_inputs
from bnlab.models.network import NetStack, Stack

WRITTEN_OUT = ("relu", "sigmoid", "tanh", "leaky_relu", "elu")
# Every MLP variant but bn_noisy, which trains through the traced autograd step: its noise, a
# new input every step, is not written out here.
WRITTEN_OUT_VARIANTS = ("plain", "bn", "bn_after", "layer_norm", "group_norm")


def applies(stack: Stack) -> TypeGuard[NetStack]:
    """The written-out step covers MLPs of `WRITTEN_OUT_VARIANTS` on the CPU, their BN torch's
    kernel; conv nets, bn_noisy and the written-out BN (the reference implementation) train
    through autograd. So do nets on a GPU: there the captured CUDA graph already takes the
    per-op cost away (`graphs`), and on an H200 this step, though faster still (3,570 against
    2,708 pair steps/s), failed two of tests/models/test_cuda.py's checks, not yet
    understood."""
    if not isinstance(stack, NetStack):  # an rnn's LSTMStack
        return False
    torch_bn = not stack.batch_norms or stack.bn_impl == "torch"
    on_cpu = stack.output_bias.device.type == "cpu"
    mlp = not stack.arch.conv_channels and stack.arch.activation in WRITTEN_OUT
    return stack.variant in WRITTEN_OUT_VARIANTS and on_cpu and mlp and torch_bn


class WrittenOutStep:
    """`train(images, labels, indices)` trains every net of `stack` on one sample interval's
    batches and returns each net's loss at every step.

    Each net trains as a stack of one of its own (`singles`): its own tensors, stepped by the
    same calls on the same shapes as a lone net's, so its numbers do not depend on the nets
    beside it. `sync()` writes them back into `stack`."""

    def __init__(self, stack: NetStack, learning_rates: Sequence[float]) -> None:
        self.stack = stack
        self.rates = [float(rate) for rate in learning_rates]
        device = stack.output_bias.device
        self.singles = [
            NetStack.from_net_states(stack.arch, stack.variant, [stack.net_state(i)], stack.bn_impl)
            .to(device)
            .train()
            for i in range(stack.size)
        ]
        self.weights = [[w.detach()[0] for w in net.weights] for net in self.singles]
        self.grads = [_zero_grads(net) for net in self.singles]
        self.biases = [[b.detach().view(-1) for b in net.biases] for net in self.singles]
        self.norms = [[_norm_tensors(norm) for norm in net.norms] for net in self.singles]
        # a single's GroupNorm holds its layers' groups (1 for layer_norm); BN has none
        self.groups = max(
            (norm.groups for norm in self.singles[0].norms if isinstance(norm, GroupNorm)),
            default=0,
        )
        self.output_biases = [net.output_bias.detach().view(-1) for net in self.singles]

    def train(
        self, images: Tensor, labels: Tensor, indices: Tensor, keep_grads: bool = True
    ) -> Tensor:
        """Steps on the batches `images[indices[k]]`, k = 0, 1, ...: one sample interval, in one
        call, each step's loss per net (steps, nets). With a call per step a lone pair's two
        lanes wait on each other for the GIL at every step (the pair took 1.1-1.7x as long).
        With `keep_grads` the hidden layers' weight gradients of the last step are left in each
        single's ``weight.grad`` (the trainer asks: probes read them there); otherwise each
        update is fused into the GEMM that computes it."""
        losses: Tensor = _compiled()(
            images,
            labels,
            indices,
            self.rates,
            self.weights,
            self.grads,
            self.biases,
            self.norms,
            self.output_biases,
            self.stack.variant,
            self.stack.arch.activation,
            self.groups,
            MOMENTUM,
            EPSILON,
            keep_grads,
        )
        return losses

    def sync(self) -> None:
        """Write every single's tensors back into `stack` (at a sample point)."""
        for index, net in enumerate(self.singles):
            self.stack.load_net_state(index, net.net_state(0))


def _norm_tensors(norm: nn.Module) -> list[Tensor]:
    """A single's hidden-layer normalization as the step takes it, without net axis: gamma and
    beta, then BN's running mean, running variance and count of batches."""
    assert isinstance(norm, BatchNorm | GroupNorm)
    tensors = [norm.gamma.detach().view(-1), norm.beta.detach().view(-1)]
    if isinstance(norm, BatchNorm):
        tensors += [norm.running_mean.view(-1), norm.running_var.view(-1), norm.num_batches_tracked]
    return tensors


def _zero_grads(net: NetStack) -> list[Tensor]:
    """Zeroed ``weight.grad`` of the hidden layers (where probes read them), without net axis."""
    grads = []
    for weight in net.weights[:-1]:
        weight.grad = torch.zeros_like(weight)
        grads.append(weight.grad[0])
    return grads


_compiling = threading.Lock()


def _compiled() -> Callable[..., Tensor]:
    """Compiled at the first training step (serving never needs it), once: a trainer's lanes,
    threads, all ask for it at that moment."""
    with _compiling:
        return _script()


@cache
def _script() -> Callable[..., Tensor]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated")
        return torch.jit.script(_interval)


def _activation(y: Tensor, name: str) -> Tensor:
    if name == "relu":
        return torch.relu(y)
    if name == "sigmoid":
        return torch.sigmoid(y)
    if name == "tanh":
        return torch.tanh(y)
    if name == "leaky_relu":
        return torch.nn.functional.leaky_relu(y)
    return torch.nn.functional.elu(y)


def _activation_backward(grad: Tensor, y: Tensor, h: Tensor, name: str) -> Tensor:
    """∂L/∂y from ∂L/∂h, h = act(y); each from whichever of y and h torch's kernel wants."""
    if name == "relu":
        d_y: Tensor = torch.ops.aten.threshold_backward(grad, h, 0.0)
    elif name == "sigmoid":
        d_y = torch.ops.aten.sigmoid_backward(grad, h)
    elif name == "tanh":
        d_y = torch.ops.aten.tanh_backward(grad, h)
    elif name == "leaky_relu":
        d_y = torch.ops.aten.leaky_relu_backward(grad, y, 0.01, False)
    else:
        d_y = torch.ops.aten.elu_backward(grad, 1.0, 1.0, 1.0, False, y)
    return d_y


def _interval(
    images: Tensor,
    labels: Tensor,
    indices: Tensor,
    rates: list[float],
    weights: list[list[Tensor]],
    grads: list[list[Tensor]],
    biases: list[list[Tensor]],
    norms: list[list[list[Tensor]]],
    output_biases: list[Tensor],
    variant: str,
    activation: str,
    groups: int,
    momentum: float,
    epsilon: float,
    keep_grads: bool,
) -> Tensor:
    """Every step of an interval, each net's one after the other, each as a lone net's: the
    batch drawn as `Lane` draws it (`index_select` copies whole rows, 10x faster than advanced
    indexing); `keep_grads` at the last step. Returns the losses (step, net)."""
    losses: list[Tensor] = []
    last = indices.shape[0] - 1
    for step in range(indices.shape[0]):
        batch = indices[step]
        x = to_inputs(images.index_select(0, batch)).flatten(1)
        targets = labels.index_select(0, batch)
        keep = keep_grads and step == last
        per_net: list[Tensor] = []
        for net in range(len(weights)):
            per_net.append(
                _net_step(
                    x,
                    targets,
                    rates[net],
                    weights[net],
                    grads[net],
                    biases[net],
                    norms[net],
                    output_biases[net],
                    variant,
                    activation,
                    groups,
                    momentum,
                    epsilon,
                    keep,
                )
            )
        losses.append(torch.stack(per_net))
    return torch.stack(losses)


def _net_step(
    x: Tensor,
    labels: Tensor,
    rate: float,
    weights: list[Tensor],
    grads: list[Tensor],
    biases: list[Tensor],
    norms: list[list[Tensor]],
    output_bias: Tensor,
    variant: str,
    activation: str,
    groups: int,
    momentum: float,
    epsilon: float,
    keep_grads: bool,
) -> Tensor:
    batch, hidden = x.shape[0], len(weights) - 1
    normalized_first = variant != "plain" and variant != "bn_after"
    # Forward, keeping what the backward needs: each layer's input, y and act(y), and each
    # normalization's input and statistics.
    hs: list[Tensor] = [x]  # layer inputs; then each hidden layer's output
    ys: list[Tensor] = []
    acts: list[Tensor] = []
    saved: list[list[Tensor]] = []
    for layer in range(hidden):
        if variant == "bn_after":  # F.linear's one GEMM with the bias, as autograd's forward
            z = torch.addmm(biases[layer], hs[layer], weights[layer].t())
        else:
            z = torch.mm(hs[layer], weights[layer].t())
            if variant == "plain":
                z = z.add_(biases[layer])
        y = z
        if normalized_first:
            y = _normalize(z, norms[layer], saved, variant, groups, momentum, epsilon)
        ys.append(y)
        acts.append(_activation(y, activation))
        h = acts[layer]
        if variant == "bn_after":
            h = _normalize(h, norms[layer], saved, variant, groups, momentum, epsilon)
        hs.append(h)
    h, w_out = hs[hidden], weights[hidden]
    log_p = torch.log_softmax(torch.addmm(output_bias, h, w_out.t()), dim=1)
    targets = labels.view(batch, 1)
    loss = -log_p.gather(1, targets).mean()

    # Backward: ∂L/∂logits = (softmax - one-hot) / batch, times the net's learning rate.
    delta = log_p.exp_().scatter_add_(1, targets, torch.full_like(log_p[:, :1], -1.0))
    delta = delta.mul_(rate / batch)
    back = torch.mm(delta, w_out)
    w_out.addmm_(delta.t(), h, alpha=-1.0)
    output_bias.sub_(delta.sum(dim=0))
    for layer in range(hidden - 1, -1, -1):
        if variant == "bn_after":
            back = _normalize_backward(back, norms[layer], saved[layer], variant, groups, epsilon)
        d_y = _activation_backward(back, ys[layer], acts[layer], activation)
        if normalized_first:
            d_z = _normalize_backward(d_y, norms[layer], saved[layer], variant, groups, epsilon)
        else:
            d_z = d_y
        if len(biases) > 0:
            biases[layer].sub_(d_z.sum(dim=0))
        w, h_in = weights[layer], hs[layer]
        if layer > 0:  # the first layer's input is the images: no gradient to pass on
            back = torch.mm(d_z, w)
        if keep_grads:
            w.sub_(torch.mm(d_z.t(), h_in, out=grads[layer]))
        else:  # the update as one GEMM, without a pass over a gradient tensor
            w.addmm_(d_z.t(), h_in, alpha=-1.0)
    return loss


def _normalize(
    x: Tensor,
    norm: list[Tensor],
    saved: list[list[Tensor]],
    variant: str,
    groups: int,
    momentum: float,
    epsilon: float,
) -> Tensor:
    """A hidden layer's BN (running statistics updated) or LN/GN of `x` (batch, feature), by
    torch's kernels; what its backward needs goes to `saved`."""
    gamma, beta = norm[0], norm[1]
    if variant == "bn" or variant == "bn_after":
        y, mean, invstd = torch.native_batch_norm(
            x, gamma, beta, norm[2], norm[3], True, momentum, epsilon
        )
        norm[4].add_(1)  # num_batches_tracked
    else:
        y, mean, invstd = torch.native_group_norm(
            x, gamma, beta, x.shape[0], x.shape[1], 1, groups, epsilon
        )
    saved.append([x, mean, invstd])
    return y


def _normalize_backward(
    d_y: Tensor,
    norm: list[Tensor],
    saved: list[Tensor],
    variant: str,
    groups: int,
    epsilon: float,
) -> Tensor:
    """∂L/∂x from ∂L/∂y of `_normalize`, by torch's kernels; gamma and beta take their step."""
    x, mean, invstd = saved[0], saved[1], saved[2]
    gamma, beta = norm[0], norm[1]
    if variant == "bn" or variant == "bn_after":  # grads: ∂L/∂x, ∂L/∂gamma, ∂L/∂beta
        grads: tuple[Tensor, Tensor, Tensor] = torch.ops.aten.native_batch_norm_backward(
            d_y, x, gamma, norm[2], norm[3], mean, invstd, True, epsilon, [True, True, True]
        )
    else:
        grads = torch.ops.aten.native_group_norm_backward(
            d_y, x, mean, invstd, gamma, x.shape[0], x.shape[1], 1, groups, [True, True, True]
        )
    d_x, d_gamma, d_beta = grads
    gamma.sub_(d_gamma)
    beta.sub_(d_beta)
    return d_x
