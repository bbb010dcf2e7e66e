r"""A training step of a stack of MLPs, written out: forward, backward and the SGD update.

Autograd records some 60 nodes per step and walks them back; for nets this small that
bookkeeping costs about as much as the arithmetic. Written out, a step is the forward's ops,
their derivatives in reverse order and an in-place update, compiled once with TorchScript (so a
lane's thread holds the GIL for one call per step, not for each op).

Each net of the stack steps on its own tensors, one net after the other, with exactly the calls
and shapes a lone net's step makes (2-D GEMMs, torch's BN kernel on (batch, feature)). So a
net's numbers cannot depend on the nets beside it, whichever kernels MKL and ATen pick: a wide
GEMM over all nets, a BN kernel over all their channels or an elementwise kernel over all their
activations would each round a net's values differently with the group's size (ATen finishes
a vector-width tail with scalar code; MKL picks kernels by shape). It costs nothing measurable:
on the classic grid the per-net loop ran faster than the wide layout did (bench/RESULTS.md).

Hidden layer :math:`l` of a net, for a batch :math:`h` laid out (batch, in):

.. math::

    z = h W^\top \;(+\, b \text{ for plain}) \qquad y = \mathrm{BN}(z) \text{ for bn} \qquad
    h' = \mathrm{act}(y)

Backward, from :math:`\delta = \partial L / \partial h'`:

.. math::

    \frac{\partial L}{\partial y} = \delta \odot \mathrm{act}'(y) \qquad
    \frac{\partial L}{\partial W} = \Big(\frac{\partial L}{\partial z}\Big)^{\!\top} h \qquad
    \frac{\partial L}{\partial h} = \frac{\partial L}{\partial z}\, W

with :math:`\partial L / \partial z` from BN's backward (torch's kernel, which also gives
:math:`\partial L/\partial\gamma` and :math:`\partial L/\partial\beta`), or equal to
:math:`\partial L / \partial y` for plain, whose :math:`\partial L/\partial b` is its sum over
the batch. The loss is each net's mean cross-entropy weighted by its learning rate, so the
update is :math:`\theta \leftarrow \theta - \partial L/\partial\theta`: what `Lane`'s autograd
step does with SGD at learning rate 1. The same numbers up to float rounding (the tests hold
it to 1e-6 over a training run).

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
from torch import Tensor

from bnlab.models.batchnorm import EPSILON, MOMENTUM
from bnlab.models.data import to_inputs
from bnlab.models.network import NetStack, Stack

WRITTEN_OUT = ("relu", "sigmoid", "tanh", "leaky_relu", "elu")
# The study's pair. The other variants train through the traced autograd step, at 0.65-0.87x
# the per-net throughput of the loop a user would write (bench/RESULTS.md, "Variants"): writing
# their derivatives out here (native_layer_norm_backward, native_group_norm_backward, BN after
# the activation) is what would bring them to the pair's 1.4-1.5x.
WRITTEN_OUT_VARIANTS = ("plain", "bn")


def applies(stack: Stack) -> TypeGuard[NetStack]:
    """The written-out step covers `plain` and `bn` MLPs on the CPU with torch's BN kernel; the
    other variants, conv nets and the written-out BN (the reference implementation) train
    through autograd. So do nets on a GPU: there the captured CUDA graph already takes the
    per-op cost away (`graphs`), and on an H200 this step, though faster still (3,570 against
    2,708 pair steps/s), failed two of tests/models/test_cuda.py's checks, not yet
    understood."""
    no_bn_or_torch_bn = stack.variant == "plain" or stack.bn_impl == "torch"
    on_cpu = stack.output_bias.device.type == "cpu"
    mlp = not stack.arch.conv_channels and stack.arch.activation in WRITTEN_OUT
    written_out = stack.variant in WRITTEN_OUT_VARIANTS and on_cpu and mlp and no_bn_or_torch_bn
    return written_out and isinstance(stack, NetStack)  # not an rnn's LSTMStack


class WrittenOutStep:
    """`step(images, labels)` trains every net of `stack` one batch and returns each net's loss.

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
        self.bn = [
            [
                [
                    n.gamma.detach().view(-1),
                    n.beta.detach().view(-1),
                    n.running_mean.view(-1),
                    n.running_var.view(-1),
                    n.num_batches_tracked,
                ]
                for n in net.batch_norms
            ]
            for net in self.singles
        ]
        self.output_biases = [net.output_bias.detach().view(-1) for net in self.singles]

    def __call__(self, images: Tensor, labels: Tensor, keep_grads: bool) -> Tensor:
        """One step; with `keep_grads`, the hidden layers' weight gradients are left in each
        single's ``weight.grad`` (the trainer asks at the last step before a sample point, where
        probes read them); otherwise each update is fused into the GEMM that computes it."""
        losses: Tensor = _compiled()(
            to_inputs(images).flatten(1),
            labels,
            self.rates,
            self.weights,
            self.grads,
            self.biases,
            self.bn,
            self.output_biases,
            self.stack.arch.activation,
            MOMENTUM,
            EPSILON,
            keep_grads,
        )
        return losses

    def sync(self) -> None:
        """Write every single's tensors back into `stack` (at a sample point)."""
        for index, net in enumerate(self.singles):
            self.stack.load_net_state(index, net.net_state(0))


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
        return torch.jit.script(_step)


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


def _step(
    x: Tensor,
    labels: Tensor,
    rates: list[float],
    weights: list[list[Tensor]],
    grads: list[list[Tensor]],
    biases: list[list[Tensor]],
    bn: list[list[list[Tensor]]],
    output_biases: list[Tensor],
    activation: str,
    momentum: float,
    epsilon: float,
    keep_grads: bool,
) -> Tensor:
    """Every net's step, one net after the other, each as a lone net's."""
    losses: list[Tensor] = []
    for net in range(len(weights)):
        losses.append(
            _net_step(
                x,
                labels,
                rates[net],
                weights[net],
                grads[net],
                biases[net],
                bn[net],
                output_biases[net],
                activation,
                momentum,
                epsilon,
                keep_grads,
            )
        )
    return torch.stack(losses)


def _net_step(
    x: Tensor,
    labels: Tensor,
    rate: float,
    weights: list[Tensor],
    grads: list[Tensor],
    biases: list[Tensor],
    bn: list[list[Tensor]],
    output_bias: Tensor,
    activation: str,
    momentum: float,
    epsilon: float,
    keep_grads: bool,
) -> Tensor:
    batch, hidden = x.shape[0], len(weights) - 1
    # Forward, keeping what the backward needs: each layer's input and y, BN's batch stats.
    hs: list[Tensor] = [x]  # layer inputs; then each hidden layer's act(y)
    ys: list[Tensor] = []
    saved: list[list[Tensor]] = []
    for layer in range(hidden):
        z = torch.mm(hs[layer], weights[layer].t())
        if len(bn) > 0:
            gamma, beta, mean, var = bn[layer][0], bn[layer][1], bn[layer][2], bn[layer][3]
            y, batch_mean, invstd = torch.native_batch_norm(
                z, gamma, beta, mean, var, True, momentum, epsilon
            )
            bn[layer][4].add_(1)  # num_batches_tracked
            saved.append([z, batch_mean, invstd])
        else:
            y = z.add_(biases[layer])
        ys.append(y)
        hs.append(_activation(y, activation))
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
        d_y = _activation_backward(back, ys[layer], hs[layer + 1], activation)
        if len(bn) > 0:
            z, batch_mean, invstd = saved[layer][0], saved[layer][1], saved[layer][2]
            gamma, beta, mean, var = bn[layer][0], bn[layer][1], bn[layer][2], bn[layer][3]
            d_z, d_gamma, d_beta = torch.ops.aten.native_batch_norm_backward(
                d_y, z, gamma, mean, var, batch_mean, invstd, True, epsilon, [True, True, True]
            )
            gamma.sub_(d_gamma)
            beta.sub_(d_beta)
        else:
            d_z = d_y
            biases[layer].sub_(d_y.sum(dim=0))
        w, h_in = weights[layer], hs[layer]
        if layer > 0:  # the first layer's input is the images: no gradient to pass on
            back = torch.mm(d_z, w)
        if keep_grads:
            w.sub_(torch.mm(d_z.t(), h_in, out=grads[layer]))
        else:  # the update as one GEMM, without a pass over a gradient tensor
            w.addmm_(d_z.t(), h_in, alpha=-1.0)
    return loss
