r"""Why BN helps, measured per net at sample points (issue 12): Santurkar et al. 2018 ("How Does
Batch Normalization Help Optimization?", arXiv 1805.11604) and Cohen et al. 2021 ("Gradient
Descent on Neural Networks Typically Occurs at the Edge of Stability", arXiv 2103.00065) on the
user's own nets.

:math:`L(\theta)` is a net's mean cross-entropy on a training batch, with BN on the batch's
statistics, as a training step computes it; :math:`g = \nabla L(\theta)`; :math:`\eta_0` is the
net's learning rate.

**Loss landscape along the gradient** (Santurkar §3.1, Fig. 4), on the *next* training batch
(the one the next step will take), for each step size :math:`\eta \in \eta_0 \cdot`
`STEP_MULTIPLES` (a fixed set, 16x from end to end around the step training takes):

.. math::

    \text{loss}(\eta) = L(\theta - \eta g) \qquad
    \text{grad\_change}(\eta) = \|\nabla L(\theta) - \nabla L(\theta - \eta g)\|_2 \qquad
    \beta = \max_\eta \frac{\text{grad\_change}(\eta)}{\|\eta g\|_2}

the loss band (min and max of loss over :math:`\eta`), gradient predictiveness (the range of
grad_change) and the effective :math:`\beta`-smoothness. Norms run over all of a net's parameters
(weights, biases, BN's gamma and beta).

**Internal covariate shift** (Santurkar §2.2, Def. 2.1), on the same batch, for every weight layer
:math:`i` (conv layers, hidden layers, the output layer): :math:`G = \nabla_{W_i} L(\theta)`, and
:math:`G' = \nabla_{W_i} L(\theta')` where :math:`\theta'` is :math:`\theta` after every *earlier*
layer (its weight, bias, normalization's gamma and beta) took its SGD step
:math:`-\eta_0 g`, layer :math:`i` and later ones not; recorded :math:`\|G - G'\|_2` and
:math:`\cos(G, G')`. The first layer has no earlier one: its shift is 0 and its cosine 1. (A
cosine is 1 where :math:`G' = G`, 0 where one of them is zero.)

**Sharpness** (Cohen et al.): the Hessian's largest eigenvalue on a *fixed* training batch (the
batch of step 0, so that the curve follows the nets, not the batches), beside :math:`2/\eta_0`,
where gradient descent on a quadratic diverges. Found as Cohen et al. find it, by Lanczos
iteration on Hessian-vector products (double backward): power iteration's Krylov space
:math:`\{v, Hv, H^2v, \dots\}`, kept orthonormal, from the same random unit vector for every
net; the estimate is the largest eigenvalue of the tridiagonal matrix it builds, and it stops
when the estimate changes by at most `TOLERANCE` relative to itself, after at most
`MAX_ITERATIONS` products. Plain power iteration (:math:`v \leftarrow Hv/\|Hv\|`) finds the
eigenvalue largest in *magnitude*, and early in training these nets have negative ones as large
as the top one: it then oscillates and does not converge in 20 products (tests/models/test_why.py
saw it at step 0 of a tanh net); Lanczos finds the largest one, as fast or faster.

A `bn_noisy` net's loss takes its step's noise (`network.bn_noise`): the next step's for the
landscape and :math:`G`; for :math:`G'` the layers before :math:`i` take the noise of the step
after (they are the earlier layers *at their next step*, noise included: the distributional
instability the variant adds is part of the shift), layer :math:`i` and later ones keep the next
step's; step 0's for the sharpness. So each measured function is a fixed function of the
weights. An rnn's weight layers are its LSTM (with its bias and normalizations) and its output
layer.

Nothing here touches the trainer's state: losses come from `torch.func.functional_call` on
detached parameters and cloned buffers (BN's running statistics are updated on the clones only),
gradients from `torch.autograd.grad` (no ``.grad`` is written), the one random vector from a
generator of its own. The same nets, batch and seed give the same numbers. Every net's loss is
its own (a stack's nets share no parameter or statistic), so the gradient of their sum is each
net's gradient, and the nets of a stack are measured together; each vector operation (norms,
steps, the Lanczos vectors' inner products) is done per net.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from bnlab.models.data import to_inputs
from bnlab.models.network import Stack

STEP_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0)  # the landscape's step sizes, times the learning rate
MAX_ITERATIONS = 20  # Lanczos iterations (Hessian-vector products) at most
TOLERANCE = 1e-3  # ... until the eigenvalue estimate changes by at most this, relatively
VECTOR_SEED = 0  # the iteration's start, the same at every sample point


@dataclass(frozen=True)
class Probes:
    """Which measurements run, at every `every`-th sample point (step 0 counts as the first)."""

    landscape: bool = False  # loss, gradient predictiveness and beta-smoothness along -g
    ics: bool = False  # internal covariate shift per layer (Santurkar et al. Def. 2.1)
    sharpness: bool = False  # top Hessian eigenvalue, beside 2/lr
    every: int = 5

    @property
    def any(self) -> bool:
        return self.landscape or self.ics or self.sharpness

    def due(self, step: int, batches_per_sample: int) -> bool:
        """Whether they run at the sample point of `step`: the n-th sample point (step 0 the
        0th, a last one short of a full interval the next) runs them when n % every == 0."""
        return self.any and -(-step // batches_per_sample) % self.every == 0


NO_PROBES = Probes()  # what the trainer runs unless asked: nothing


@dataclass(frozen=True)
class Landscape:
    """Along the gradient g of the current batch, at theta - eta * g for each eta."""

    step_sizes: tuple[float, ...]
    losses: tuple[float, ...]  # L(theta - eta g) on the same batch, per eta
    grad_changes: tuple[float, ...]  # ||grad L(theta) - grad L(theta - eta g)||_2, per eta
    beta_smoothness: float  # max over eta of grad_change / ||eta g||_2


@dataclass(frozen=True)
class LayerShift:
    """One layer's internal covariate shift: its weight gradient G before, G' after every
    earlier layer took its SGD step, on the same batch."""

    norm: float  # ||G - G'||_2
    cosine: float  # cos(G, G')


@dataclass(frozen=True)
class Sharpness:
    eigenvalue: float  # the Hessian's largest, by Lanczos iteration on Hessian-vector products
    iterations: int  # Lanczos iterations (Hessian-vector products) it took
    edge: float  # 2 / learning rate: gradient descent's edge of stability


@dataclass(frozen=True)
class WhySample:
    """One net at a sample point where probes ran: each measurement asked for, else None."""

    landscape: Landscape | None = None
    ics: tuple[LayerShift, ...] | None = None  # per weight layer, first to last
    sharpness: Sharpness | None = None


@dataclass(frozen=True)
class Batch:
    """Training images (uint8), their labels, and a bn_noisy net's noise for them (else ())."""

    images: Tensor
    labels: Tensor
    noise: Sequence[Tensor] = ()


Params = dict[str, Tensor]
Loss = Callable[[Params], Tensor]  # each net's loss (net,) at the given parameters


def measure(
    stack: Stack,
    learning_rates: Sequence[float],
    probes: Probes,
    batch: Batch,
    next_noise: Sequence[Tensor],
    fixed: Batch,
) -> list[WhySample]:
    """Per net of `stack`: the measurements `probes` asks for. `batch` is the next training
    batch, `next_noise` a bn_noisy net's noise of the step after it (else ()), `fixed` the
    sharpness's batch."""
    rates = list(learning_rates)
    params = {name: p.detach() for name, p in stack.named_parameters()}
    landscapes: list[Landscape] | None = None
    shifts: list[tuple[LayerShift, ...]] | None = None
    if probes.landscape or probes.ics:
        loss = _losses(stack, batch)
        _, grad = _loss_and_grad(loss, params)
        if probes.landscape:
            landscapes = landscape(loss, params, grad, rates)
        if probes.ics:
            shifts = internal_covariate_shift(stack, batch, next_noise, params, grad, rates)
    sharp = sharpness(_losses(stack, fixed), params, rates) if probes.sharpness else None
    return [
        WhySample(
            landscapes[net] if landscapes else None,
            shifts[net] if shifts else None,
            sharp[net] if sharp else None,
        )
        for net in range(stack.size)
    ]


def _losses(stack: Stack, batch: Batch) -> Loss:
    """Each net's mean cross-entropy on `batch`, as a training step computes it, as a function
    of the parameters; on clones of BN's buffers, which a training-mode pass updates."""
    inputs = to_inputs(batch.images)
    targets = batch.labels.expand(stack.size, -1).flatten()
    buffers = dict(stack.named_buffers())

    def losses(params: Params) -> Tensor:
        state = params | {name: buffer.clone() for name, buffer in buffers.items()}
        noise = {"noise": batch.noise} if batch.noise else {}  # only a bn_noisy net takes it
        logits: Tensor = functional_call(stack, state, (inputs, "train"), noise, strict=True)
        per_image = F.cross_entropy(logits.flatten(0, 1), targets, reduction="none")
        return per_image.view(stack.size, -1).mean(dim=1)

    return losses


def _loss_and_grad(loss: Loss, params: Params, graph: bool = False) -> tuple[Tensor, Params]:
    """Each net's loss and its gradient (the gradient of the sum is each net's own). With
    `graph`, `params` become the leaves the gradient can be differentiated again against."""
    leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
    losses = loss(leaves)
    grads = torch.autograd.grad(losses.sum(), list(leaves.values()), create_graph=graph)
    if graph:
        params.update(leaves)
    return losses.detach(), dict(zip(leaves, grads, strict=True))


def landscape(loss: Loss, params: Params, grad: Params, rates: list[float]) -> list[Landscape]:
    """Per net: loss and gradient change at theta - eta g, eta = rate * `STEP_MULTIPLES`."""
    grad_norm = _norm(grad)
    columns = []
    for multiple in STEP_MULTIPLES:
        eta = [rate * multiple for rate in rates]
        moved = _minus(params, _scaled(grad, eta))
        losses, moved_grad = _loss_and_grad(loss, moved)
        change = _norm(_minus(grad, moved_grad))
        columns.append((eta, losses.tolist(), change.tolist(), (change / grad_norm).tolist()))
    return [
        Landscape(
            step_sizes=tuple(eta[net] for eta, _, _, _ in columns),
            losses=tuple(losses[net] for _, losses, _, _ in columns),
            grad_changes=tuple(change[net] for _, _, change, _ in columns),
            beta_smoothness=max(ratio[net] / eta[net] for eta, _, _, ratio in columns),
        )
        for net in range(len(rates))
    ]


def internal_covariate_shift(
    stack: Stack,
    batch: Batch,
    next_noise: Sequence[Tensor],
    params: Params,
    grad: Params,
    rates: list[float],
) -> list[tuple[LayerShift, ...]]:
    """Per net, per weight layer i: G, `grad`'s part for W_i, against G' at the parameters
    where every layer before i took its SGD step (-rate * grad), on the same batch; a bn_noisy
    net's layers before i with their noise of the next step."""
    layer_of = _layers(stack)
    step = _scaled(grad, rates)
    per_layer = []
    for i in range(len(stack.weights)):
        stepped = {name: p - step[name] if layer_of[name] < i else p for name, p in params.items()}
        noise = (*next_noise[:i], *batch.noise[i:])
        _, stepped_grad = _loss_and_grad(
            _losses(stack, Batch(batch.images, batch.labels, noise)), stepped
        )
        before, after = {"w": grad[f"weights.{i}"]}, {"w": stepped_grad[f"weights.{i}"]}
        norm = _norm(_minus(before, after))
        denominator = _norm(before) * _norm(after)
        # 1 where G' is G exactly (the first layer), 0 where one of them is zero
        cosine = torch.where(denominator > 0, _dot(before, after) / denominator, 0.0)
        cosine = torch.where(norm == 0, 1.0, cosine.clamp(-1.0, 1.0))
        per_layer.append((norm.tolist(), cosine.tolist()))
    return [
        tuple(LayerShift(norm[net], cosine[net]) for norm, cosine in per_layer)
        for net in range(stack.size)
    ]


def sharpness(loss: Loss, params: Params, rates: list[float]) -> list[Sharpness]:
    """Per net: the Hessian's largest eigenvalue by Lanczos iteration, beside 2 / rate."""
    size, device = len(rates), params["weights.0"].device
    params = dict(params)
    _, grad = _loss_and_grad(loss, params, graph=True)
    leaves = list(params.values())
    # The Lanczos vectors flat, (net, vector, parameter): orthogonalizing is then two bmm's.
    start = _flat(_start(params, size), size)
    basis = start.new_zeros(size, MAX_ITERATIONS, start.shape[1])
    basis[:, 0] = start
    alphas: list[Tensor] = []  # the tridiagonal matrix's diagonal, per net
    betas: list[Tensor] = []  # ... and its off-diagonal
    top = torch.full((size,), float("nan"), dtype=torch.float64, device=device)
    iterations = [MAX_ITERATIONS] * size
    done = torch.zeros(size, dtype=torch.bool, device=device)
    for iteration in range(1, MAX_ITERATIONS + 1):
        known, q_flat = basis[:, :iteration], basis[:, iteration - 1]
        q = _unflat(q_flat, params)
        # H q per net: the gradient of <g, q> summed over the nets (each net's is its own)
        g_q = torch.stack([(grad[name] * q[name]).sum() for name in params]).sum()
        product = torch.autograd.grad(g_q, leaves, retain_graph=True)
        residual = torch.cat([_rows(t, size) for t in product], dim=1)
        alphas.append((q_flat * residual).sum(dim=1).double())
        ritz = torch.linalg.eigvalsh(_tridiagonal(alphas, betas))[:, -1]
        for _ in range(2):  # every earlier direction out (twice: float32 loses orthogonality)
            overlap = torch.bmm(known, residual.unsqueeze(2))
            residual = residual - torch.bmm(known.transpose(1, 2), overlap)[..., 0]
        beta = residual.double().norm(dim=1)
        # converged, or the Krylov space is all there is (an exact answer)
        settled = ((ritz - top).abs() <= TOLERANCE * ritz.abs()) | (beta == 0)
        top = torch.where(done, top, ritz)
        for net in (settled & ~done).nonzero().flatten().tolist():
            iterations[net] = iteration
        done |= settled
        if bool(done.all()) or iteration == MAX_ITERATIONS:
            break
        betas.append(beta)
        scale = torch.where(beta > 0, 1 / beta, 0.0).to(residual.dtype).unsqueeze(1)
        basis[:, iteration] = residual * scale
    return [Sharpness(float(top[net]), iterations[net], 2.0 / rates[net]) for net in range(size)]


def _flat(a: Params, size: int) -> Tensor:
    """Per net, all tensors of `a` as one row: (net, parameters)."""
    return torch.cat([_rows(t, size) for t in a.values()], dim=1)


def _unflat(rows: Tensor, like: Params) -> Params:
    """`_flat`'s inverse, shaped as `like`."""
    size = rows.shape[0]
    widths = [t.numel() // size for t in like.values()]
    parts = torch.split(rows, widths, dim=1)
    return {
        name: part.reshape(t.shape) for (name, t), part in zip(like.items(), parts, strict=True)
    }


def _tridiagonal(alphas: list[Tensor], betas: list[Tensor]) -> Tensor:
    """Per net, the Lanczos matrix: `alphas` on the diagonal, `betas` beside it."""
    matrix = torch.diag_embed(torch.stack(alphas, dim=1))
    if betas:
        off = torch.diag_embed(torch.stack(betas, dim=1), offset=1)
        matrix = matrix + off + off.transpose(1, 2)
    return matrix


def _start(params: Params, size: int) -> Params:
    """A random unit vector, the same for every net (so a net's start does not depend on its
    place in a stack), from a generator of its own."""
    generator = torch.Generator().manual_seed(VECTOR_SEED)
    vector = {}
    for name, p in params.items():
        per_net = torch.randn(p.numel() // size, generator=generator)
        vector[name] = per_net.to(p.device).expand(size, -1).reshape(p.shape)
    return _scaled(vector, 1.0 / _norm(vector))


def _layers(stack: Stack) -> dict[str, int]:
    """The weight layer each parameter belongs to: a hidden layer's bias and normalization are
    its layer's ("biases.<i>", "norms.<i>.gamma"), the output bias is the last layer's, and an
    LSTM's bias and normalizations ("bias", "norms.x.gamma") are its first layer's."""
    layer_of = {}
    for name, _ in stack.named_parameters():
        index = name.split(".")[1] if "." in name else ""
        last = name == "output_bias"
        layer_of[name] = len(stack.weights) - 1 if last else int(index) if index.isdigit() else 0
    return layer_of


def _rows(t: Tensor, size: int) -> Tensor:
    # Every parameter of a stack viewed (net, -1) holds one net per row, whichever layout it has
    # (see NetStack._per_net_tensors).
    return t.reshape(size, -1)


def _size(a: Params) -> int:
    return int(next(iter(a.values())).shape[0])  # each Params starts with a (net, ...) weight


def _dot(a: Params, b: Params) -> Tensor:
    """Per net: the inner product over all tensors of `a`, in float64."""
    size = _size(a)
    products = [(_rows(a[n], size).double() * _rows(b[n], size).double()).sum(1) for n in a]
    return torch.stack(products).sum(dim=0)


def _norm(a: Params) -> Tensor:
    return _dot(a, a).sqrt()


def _minus(a: Params, b: Params) -> Params:
    return {name: a[name] - b[name] for name in a}


def _scaled(a: Params, per_net: Tensor | Sequence[float]) -> Params:
    """Every tensor of `a` with net n's values times per_net[n]."""
    size = _size(a)
    first = next(iter(a.values()))
    factors = torch.as_tensor(per_net, device=first.device).to(first.dtype).unsqueeze(1)
    return {name: (_rows(t, size) * factors).view(t.shape) for name, t in a.items()}
