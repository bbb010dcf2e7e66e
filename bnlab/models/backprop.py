r"""A training step of a stack of MLPs, written out: forward, backward and the SGD update.

Autograd records some 60 nodes per step and walks them back; for nets this small that
bookkeeping costs about as much as the arithmetic. Written out, a step is the forward's ops,
their derivatives in reverse order and an in-place update, compiled once with TorchScript (so a
lane's thread holds the GIL for one call per step, not for each op). Activations are laid out
(batch, net * feature), the layout torch's BN kernel is fastest on (3x against (feature,
batch) rows); each net's product reads and writes its slice of it in place through one batched
GEMM, and the first layer, whose input every net shares, is a single GEMM.

Hidden layer :math:`l` of each net, for a batch :math:`h` laid out (batch, in):

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
from functools import cache

import torch
from torch import Tensor

from bnlab.models.batchnorm import EPSILON, MOMENTUM
from bnlab.models.data import to_inputs
from bnlab.models.network import NetStack

WRITTEN_OUT = ("relu", "sigmoid", "tanh", "leaky_relu", "elu")


def applies(stack: NetStack) -> bool:
    """The written-out step covers MLPs on the CPU with torch's BN kernel; conv nets and the
    written-out BN (the reference implementation) train through autograd. So do nets on a GPU:
    there the captured CUDA graph already takes the per-op cost away (`graphs`), and on an H200
    this step, though faster still (3,570 against 2,708 pair steps/s), failed two of
    tests/models/test_cuda.py's checks, not yet understood."""
    no_bn_or_torch_bn = not stack.has_bn or stack.bn_impl == "torch"
    on_cpu = stack.output_bias.device.type == "cpu"
    mlp = not stack.arch.conv_channels and stack.arch.activation in WRITTEN_OUT
    return on_cpu and mlp and no_bn_or_torch_bn


class WrittenOutStep:
    """`step(images, labels)` trains `stack` one batch in place and returns each net's loss."""

    def __init__(self, stack: NetStack, learning_rates: Tensor) -> None:
        self.stack = stack
        self.weights = [w.detach() for w in stack.weights]
        self.grads: list[Tensor] = []
        for weight in stack.weights[:-1]:  # where probes read the gradients
            weight.grad = torch.zeros_like(weight)
            self.grads.append(weight.grad)
        self.biases = [b.detach() for b in stack.biases]
        norms = list(stack.norms)
        self.bn = [
            [
                n.gamma.detach().view(-1),
                n.beta.detach().view(-1),
                n.running_mean.view(-1),
                n.running_var.view(-1),
            ]
            for n in norms
        ]
        self.counters = [n.num_batches_tracked for n in norms]
        self.output_bias = stack.output_bias.detach()
        self.rates = learning_rates.view(1, -1, 1)

    def __call__(self, images: Tensor, labels: Tensor, keep_grads: bool) -> Tensor:
        """One step; with `keep_grads`, the hidden layers' weight gradients are left in
        ``weight.grad`` (the trainer asks at the last step before a sample point, where probes
        read them); otherwise each update is fused into the GEMM that computes it."""
        return _compiled()(
            to_inputs(images).flatten(1),
            labels,
            self.rates,
            self.weights,
            self.grads,
            self.biases,
            self.bn,
            self.counters,
            self.output_bias,
            self.stack.arch.activation,
            MOMENTUM,
            EPSILON,
            keep_grads,
        )


_compiling = threading.Lock()


def _compiled() -> torch.jit.ScriptFunction:
    """Compiled at the first training step (serving never needs it), once: a trainer's lanes,
    threads, all ask for it at that moment."""
    with _compiling:
        return _script()


@cache
def _script() -> torch.jit.ScriptFunction:
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
        return torch.ops.aten.threshold_backward(grad, h, 0.0)
    if name == "sigmoid":
        return torch.ops.aten.sigmoid_backward(grad, h)
    if name == "tanh":
        return torch.ops.aten.tanh_backward(grad, h)
    if name == "leaky_relu":
        return torch.ops.aten.leaky_relu_backward(grad, y, 0.01, False)
    return torch.ops.aten.elu_backward(grad, 1.0, 1.0, 1.0, False, y)


def _per_net(t: Tensor, nets: int) -> Tensor:
    """(batch, net * feature) seen as (net, batch, feature), without a copy."""
    return t.view(t.shape[0], nets, -1).transpose(0, 1)


def _per_net_mm(a: Tensor, b: Tensor, nets: int) -> Tensor:
    """Each net's a (batch, in) @ b (in, out): a laid out (batch, net * in), b (net, in, out),
    the product written straight into the (batch, net * out) layout."""
    out = torch.empty(a.shape[0], nets * b.shape[2], dtype=a.dtype, device=a.device)
    torch.bmm(_per_net(a, nets), b, out=_per_net(out, nets))
    return out


def _step(
    x: Tensor,
    labels: Tensor,
    rates: Tensor,
    weights: list[Tensor],
    grads: list[Tensor],
    biases: list[Tensor],
    bn: list[list[Tensor]],
    counters: list[Tensor],
    output_bias: Tensor,
    activation: str,
    momentum: float,
    epsilon: float,
    keep_grads: bool,
) -> Tensor:
    nets, batch = weights[0].shape[0], x.shape[0]
    hidden = len(weights) - 1
    # Forward, keeping what the backward needs: each layer's input and y, BN's batch stats.
    hs: list[Tensor] = [x]  # layer inputs; then each hidden layer's act(y)
    ys: list[Tensor] = []
    saved: list[list[Tensor]] = []
    for layer in range(hidden):
        w = weights[layer]
        if layer == 0:  # every net sees the same images: one GEMM for all of them
            z = torch.mm(x, w.flatten(0, 1).t())
        else:
            z = _per_net_mm(hs[layer], w.transpose(1, 2), nets)
        if len(bn) > 0:
            gamma, beta, mean, var = bn[layer][0], bn[layer][1], bn[layer][2], bn[layer][3]
            y, batch_mean, invstd = torch.native_batch_norm(
                z, gamma, beta, mean, var, True, momentum, epsilon
            )
            counters[layer].add_(1)
            saved.append([z, batch_mean, invstd])
        else:
            y = z.add_(biases[layer].view(1, -1))
        ys.append(y)
        hs.append(_activation(y, activation))
    h = hs[hidden]
    w_out = weights[hidden]
    logits = _per_net_mm(h, w_out.transpose(1, 2), nets).view(batch, nets, -1)
    log_p = torch.log_softmax(logits.add_(output_bias.transpose(0, 1)), dim=2)
    targets = labels.view(batch, 1, 1).expand(batch, nets, 1)
    losses = -log_p.gather(2, targets).view(batch, nets).mean(dim=0)

    # Backward: ∂L/∂logits = (softmax - one-hot) / batch, times each net's learning rate.
    delta = log_p.exp_().scatter_add_(2, targets, torch.full_like(log_p[:, :, :1], -1.0))
    delta = delta.mul_(rates / batch).view(batch, -1)
    back = _per_net_mm(delta, w_out, nets)
    w_out.baddbmm_(_per_net(delta, nets).transpose(1, 2), _per_net(h, nets), alpha=-1.0)
    output_bias.sub_(delta.view(batch, nets, -1).sum(dim=0).unsqueeze(1))
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
            biases[layer].view(-1).sub_(d_y.sum(dim=0))
        w, grad = weights[layer], grads[layer]
        if layer > 0:
            back = _per_net_mm(d_z, w, nets)
            d_z_t, h_in = _per_net(d_z, nets).transpose(1, 2), _per_net(hs[layer], nets)
            if keep_grads:
                w.sub_(torch.bmm(d_z_t, h_in, out=grad))
            else:
                w.baddbmm_(d_z_t, h_in, alpha=-1.0)
        elif keep_grads:
            w.sub_(torch.mm(d_z.t(), x, out=grad.view(-1, x.shape[1])).view(w.shape))
        else:  # the update as one GEMM, without a pass over a gradient tensor
            w.view(-1, x.shape[1]).addmm_(d_z.t(), x, alpha=-1.0)
    return losses
