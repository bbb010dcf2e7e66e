"""Why BN helps, measured (`why`): each measurement on a case whose answer is known, the nets of a
stack measured as each alone, and training left exactly as it is without them; `bn_noisy`
trains as the hand-built net with the same noise, and resumes bit for bit."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.models import why
from bnlab.models.batchnorm import EPSILON, MOMENTUM
from bnlab.models.checkpoint import load_state, save_state
from bnlab.models.data import BatchOrder, Splits, to_inputs
from bnlab.models.inference import ServedNet
from bnlab.models.network import NOISE_MEAN, Architecture, NetStack, bn_noise, initial_weights
from bnlab.models.trainer import Cell, NetSample, Sample, Trainer, TrainingSpec, build_trainer
from bnlab.models.why import NO_PROBES, Batch, LayerShift, Probes
from bnlab.vocabulary import Variant
from tests.models.conftest import CPU, LONE

ALL = Probes(landscape=True, ics=True, sharpness=True, every=1)
SMALL = Architecture(activation="tanh", hidden_layers=(16, 12))
SHORT = TrainingSpec(learning_rate=0.3, training_batches=40, batches_per_sample=20, seed=4)
# Both kinds of lane: plain and bn written out (torch's BN kernel), the others through autograd.
VARIANTS: tuple[Variant, ...] = ("plain", "bn", "bn_noisy", "layer_norm")


def quadratic(eigenvalues: list[list[float]], seed: int = 0) -> tuple[Tensor, why.Loss]:
    """Per net n, L_n(theta) = theta^T A_n theta / 2 with A_n = Q diag(eigenvalues[n]) Q^T, Q a
    random rotation: the Hessian is A_n. Returns the A_n and L."""
    generator = torch.Generator().manual_seed(seed)
    dim = len(eigenvalues[0])
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    hessians = torch.stack(
        [
            rotation @ torch.diag(torch.tensor(e, dtype=torch.float64)) @ rotation.T
            for e in eigenvalues
        ]
    )

    def loss(params: why.Params) -> Tensor:
        theta = params["weights.0"]
        return 0.5 * torch.einsum("ni,nij,nj->n", theta, hessians.float(), theta)

    return hessians, loss


# Two nets, so that every per-net operation is tested as one: top eigenvalues 5 and 3.
EIGENVALUES = [[5.0, 2.0, 1.0, -0.5, 0.25], [3.0, 1.0, 0.5, 0.5, -1.0]]
RATES = [0.1, 0.02]
# float32 parameters of unit scale, float64 sums: a few float32 epsilons relative
RELATIVE = 1e-5


def test_along_the_gradient_of_a_quadratic_the_loss_is_its_parabola() -> None:
    """L(theta - eta g) = L - eta |g|^2 + eta^2 g^T A g / 2; |grad change| = eta |A g|; so
    beta-smoothness = |A g| / |g|, for every step size the fixed set holds."""
    hessians, loss = quadratic(EIGENVALUES)
    theta = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = torch.einsum("nij,nj->ni", hessians, theta)
    params = {"weights.0": theta.float()}
    found = why.landscape(loss, params, {"weights.0": g.float()}, RATES)
    for net, result in enumerate(found):
        l0 = 0.5 * theta[net] @ hessians[net] @ theta[net]
        g_sq, g_a_g = g[net] @ g[net], g[net] @ hessians[net] @ g[net]
        etas = [RATES[net] * m for m in why.STEP_MULTIPLES]
        assert result.step_sizes == pytest.approx(etas, rel=1e-12)
        parabola = [float(l0 - eta * g_sq + eta**2 * g_a_g / 2) for eta in etas]
        assert result.losses == pytest.approx(parabola, rel=RELATIVE)
        a_g = float((hessians[net] @ g[net]).norm())
        assert result.grad_changes == pytest.approx([eta * a_g for eta in etas], rel=RELATIVE)
        assert result.beta_smoothness == pytest.approx(a_g / float(g[net].norm()), rel=RELATIVE)


def test_along_the_top_eigenvector_beta_smoothness_is_the_top_eigenvalue() -> None:
    hessians, loss = quadratic(EIGENVALUES)
    top = torch.linalg.eigh(hessians).eigenvectors[:, :, -1]  # (net, dim), eigenvalues ascending
    g = torch.einsum("nij,nj->ni", hessians, 3 * top)
    found = why.landscape(loss, {"weights.0": 3 * top.float()}, {"weights.0": g.float()}, RATES)
    assert [r.beta_smoothness for r in found] == pytest.approx([5.0, 3.0], rel=RELATIVE)


# Five dimensions: Lanczos spans the whole space in five products and is then exact (to float32
# rounding of the products). Net 1's most negative eigenvalue is as large as its top one: power
# iteration would oscillate between them.
EIGENVALUES = [[5.0, 2.0, 1.0, -0.5, 0.25], [3.0, 1.0, 0.5, 0.5, -3.0]]


def test_lanczos_finds_a_quadratics_top_eigenvalue_per_net() -> None:
    _, loss = quadratic(EIGENVALUES)
    theta = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    found = why.sharpness(loss, {"weights.0": theta}, RATES)
    assert [s.eigenvalue for s in found] == pytest.approx([5.0, 3.0], rel=RELATIVE)
    assert [s.edge for s in found] == [2 / 0.1, 2 / 0.02]
    # the whole space in five products, and at most one more to see the estimate settle
    assert all(1 < s.iterations <= 6 for s in found)


def next_batch(splits: Splits, size: int = 60, step: int = 0, seed: int = 0) -> Batch:
    indices = BatchOrder(len(splits.train), size, seed, CPU).indices(step)
    return Batch(splits.train.images[indices], splits.train.labels[indices])


def stack_of(arch: Architecture, variant: Variant, seeds: list[int], std: float = 0.3) -> NetStack:
    return NetStack(arch, variant, [initial_weights(arch, std, seed) for seed in seeds])


def shifts(stack: NetStack, rates: list[float], batch: Batch) -> list[tuple[LayerShift, ...]]:
    found = why.measure(stack, rates, Probes(ics=True), batch, (), batch)
    assert all(s.landscape is None and s.sharpness is None for s in found)
    return [s.ics for s in found if s.ics is not None]


NO_SHIFT = LayerShift(norm=0.0, cosine=1.0)


@pytest.mark.parametrize("variant", ["plain", "bn"])
def test_a_one_layer_net_has_no_internal_covariate_shift(splits: Splits, variant: Variant) -> None:
    one_layer = Architecture(hidden_layers=())
    assert shifts(stack_of(one_layer, variant, [0]), [1.0], next_batch(splits)) == [(NO_SHIFT,)]


@pytest.mark.parametrize("variant", ["plain", "bn", "group_norm"])
def test_earlier_layers_that_do_not_move_cause_no_shift(splits: Splits, variant: Variant) -> None:
    """With learning rate 0 the earlier layers' step is nil: G' is G in every layer. With a
    positive one, every layer after the first shifts."""
    stack, batch = stack_of(SMALL, variant, [0, 1]), next_batch(splits)
    assert shifts(stack, [0.0, 0.0], batch) == [(NO_SHIFT,) * 3] * 2
    for net in shifts(stack, [0.5, 0.5], batch):
        assert net[0] == NO_SHIFT
        assert all(s.norm > 0 and s.cosine < 1 for s in net[1:]), net


def test_the_shift_is_the_gradient_after_only_the_earlier_layers_stepped(splits: Splits) -> None:
    """Layer 2's G' by hand: autograd on the net itself, layers 0 and 1 (weights, BN's gamma and
    beta) stepped by SGD, layer 2 (the output layer, its bias) not."""
    stack, batch, rate = stack_of(SMALL, "bn", [0]), next_batch(splits), 0.5
    found = shifts(stack, [rate], batch)[0][2]
    inputs = to_inputs(batch.images)

    def output_weight_grad(net: NetStack) -> tuple[Tensor, list[Tensor | None]]:
        net.zero_grad()
        F.cross_entropy(net(inputs, "train")[0], batch.labels).backward()
        return net.weights[2].grad.clone(), [p.grad for p in net.parameters()]

    net = NetStack.from_net_states(SMALL, "bn", [stack.net_state(0)])
    before, _ = output_weight_grad(net)
    with torch.no_grad():
        for p in [net.weights[0], net.weights[1], *net.norms.parameters()]:
            p -= rate * p.grad
    after, _ = output_weight_grad(net)
    expected_norm = (before - after).double().norm()
    expected_cosine = F.cosine_similarity(before.flatten().double(), after.flatten().double(), 0)
    assert found.norm == pytest.approx(float(expected_norm), rel=1e-4)
    assert found.cosine == pytest.approx(float(expected_cosine), abs=1e-6)


@pytest.mark.parametrize("variant", ["plain", "layer_norm", "bn_noisy"])
def test_the_nets_of_a_stack_measure_as_each_alone(splits: Splits, variant: Variant) -> None:
    """Two nets with their own weights and learning rates, stacked: what each gets is what it
    gets alone, to float32 rounding (a stack's kernels sum in another order), and the power
    iteration stops at the same iteration."""
    batch, rates = next_batch(splits), [0.05, 0.5]
    noise = bn_noise(SMALL, 60, 0, 0) if variant == "bn_noisy" else []
    noisy = Batch(batch.images, batch.labels, noise)
    after = bn_noise(SMALL, 60, 0, 1) if variant == "bn_noisy" else []
    together = why.measure(stack_of(SMALL, variant, [0, 1]), rates, ALL, noisy, after, noisy)
    for net, seed in enumerate([0, 1]):
        (alone,) = why.measure(
            stack_of(SMALL, variant, [seed]), rates[net : net + 1], ALL, noisy, after, noisy
        )
        mine = together[net]
        assert mine.landscape is not None and alone.landscape is not None
        assert mine.landscape.step_sizes == alone.landscape.step_sizes
        assert mine.landscape.losses == pytest.approx(alone.landscape.losses, rel=1e-4)
        assert mine.landscape.grad_changes == pytest.approx(alone.landscape.grad_changes, rel=1e-3)
        assert mine.ics is not None and alone.ics is not None
        assert [s.norm for s in mine.ics] == pytest.approx(
            [s.norm for s in alone.ics], rel=1e-3, abs=1e-6
        )
        assert mine.sharpness is not None and alone.sharpness is not None
        assert mine.sharpness.eigenvalue == pytest.approx(alone.sharpness.eigenvalue, rel=1e-3)


def train(
    splits: Splits,
    probes: Probes = NO_PROBES,
    variants: tuple[Variant, ...] = VARIANTS,
    spec: TrainingSpec = SHORT,
) -> tuple[Trainer, list[Sample]]:
    trainer = build_trainer(SMALL, [Cell(LONE, spec)], splits, CPU, "torch", variants, probes)
    samples: list[Sample] = []
    trainer.run(samples.append)
    return trainer, samples


def without_why(samples: list[Sample]) -> list[dict[Variant, NetSample]]:
    return [
        {v: replace(net, why=None) for v, net in sample.cells[LONE].nets.items()}
        for sample in samples
    ]


def assert_same_nets(a: Trainer, b: Trainer, variants: tuple[Variant, ...] = VARIANTS) -> None:
    for variant in variants:
        state_a, state_b = a.net_state(LONE, variant), b.net_state(LONE, variant)
        for name, tensor in state_a.items():
            assert torch.equal(tensor, state_b[name]), f"{variant} {name}"


def test_measuring_leaves_training_bit_identical(splits: Splits) -> None:
    """Weights, BN's running statistics, curves and the layers' gradient norms: the same with
    every probe at every sample point as with none."""
    plain_trainer, plain_samples = train(splits)
    probed_trainer, probed_samples = train(splits, ALL)
    assert without_why(probed_samples) == without_why(plain_samples)
    assert_same_nets(probed_trainer, plain_trainer)
    assert all(net.why is None for s in plain_samples for net in s.cells[LONE].nets.values())


def test_probes_run_at_every_nth_sample_point_from_step_0(splits: Splits) -> None:
    spec = replace(SHORT, training_batches=70)  # sample points 0, 20, 40, 60 and 70
    _, samples = train(splits, Probes(landscape=True, every=2), ("bn",), spec)
    probed = {s.step: s.cells[LONE].nets["bn"].why for s in samples}
    assert [step for step, sample in probed.items() if sample is not None] == [0, 40, 70]
    assert all(
        s.landscape is not None and s.ics is None and s.sharpness is None
        for s in probed.values()
        if s is not None
    )


def test_measurements_are_deterministic_and_answer_every_layer(splits: Splits) -> None:
    _, first = train(splits, ALL)
    _, second = train(splits, ALL)
    whys = [net.why for s in first for net in s.cells[LONE].nets.values()]
    assert whys == [net.why for s in second for net in s.cells[LONE].nets.values()]
    for sample in whys:
        assert sample is not None and sample.landscape is not None and sample.ics is not None
        assert sample.sharpness is not None
        assert len(sample.landscape.losses) == len(why.STEP_MULTIPLES)
        assert len(sample.ics) == len(SMALL.weight_shapes())
        assert sample.sharpness.edge == 2 / SHORT.learning_rate
        assert sample.sharpness.eigenvalue > 0


class Noise(nn.Module):
    """Adds the noise of the step it is set to: `bn_noisy`'s, as a user would write it."""

    def __init__(self) -> None:
        super().__init__()
        self.noise = torch.zeros(())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.noise


def hand_built_noisy(state: dict[str, Tensor]) -> tuple[nn.Sequential, list[Noise]]:
    """SMALL as a user writes a noisy BN net: Linear, BatchNorm1d, noise, tanh; Linear out."""
    layers: list[nn.Module] = []
    noises = []
    shapes = SMALL.weight_shapes()
    for i, (n_out, n_in) in enumerate(shapes[:-1]):
        linear = nn.Linear(n_in, n_out, bias=False)
        linear.weight.data.copy_(state[f"weight.{i}"])
        noises.append(Noise())
        # torch's momentum is the weight of the batch: the study's 0.01
        layers += [linear, nn.BatchNorm1d(n_out, eps=EPSILON, momentum=MOMENTUM), noises[-1]]
        layers.append(nn.Tanh())
    output = nn.Linear(shapes[-1][1], 10)
    output.weight.data.copy_(state[f"weight.{len(shapes) - 1}"])
    output.bias.data.copy_(state["output_bias"])
    return nn.Sequential(nn.Flatten(), *layers, output), noises


def test_bn_noisy_trains_as_the_hand_built_net_with_the_same_noise(splits: Splits) -> None:
    """Three steps of SGD on the trainer's batches, each with bn_noise of its (seed, step): the
    trainer's bn_noisy net and the nn.Sequential agree to float32 rounding; a bn net, which
    draws no noise, does not."""
    spec = replace(SHORT, training_batches=3, batches_per_sample=3)
    trainer, _ = train(splits, variants=("bn", "bn_noisy"), spec=spec)
    start = NetStack(SMALL, "bn_noisy", [initial_weights(SMALL, spec.weight_std, spec.seed)])
    theirs, noises = hand_built_noisy(start.net_state(0))
    optimizer = torch.optim.SGD(theirs.parameters(), lr=spec.learning_rate)
    order = BatchOrder(len(splits.train), spec.batch_size, spec.seed, CPU)
    for step in range(spec.training_batches):
        for noise, drawn in zip(
            noises, bn_noise(SMALL, spec.batch_size, spec.seed, step), strict=True
        ):
            noise.noise = drawn
        indices = order.indices(step)
        optimizer.zero_grad()
        F.cross_entropy(
            theirs(to_inputs(splits.train.images[indices])), splits.train.labels[indices]
        ).backward()
        optimizer.step()
    linears = [m for m in theirs if isinstance(m, nn.Linear)]
    ours, bn = trainer.net_state(LONE, "bn_noisy"), trainer.net_state(LONE, "bn")
    for i, linear in enumerate(linears):
        torch.testing.assert_close(ours[f"weight.{i}"], linear.weight, atol=1e-5, rtol=0)
        assert (bn[f"weight.{i}"] - linear.weight).abs().max() > 1e-3
    norms = [m for m in theirs if isinstance(m, nn.BatchNorm1d)]
    for i, norm in enumerate(norms):
        torch.testing.assert_close(ours[f"bn.{i}.gamma"], norm.weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            ours[f"bn.{i}.running_mean"], norm.running_mean, atol=1e-5, rtol=0
        )


def test_bn_noise_depends_on_seed_and_step_alone() -> None:
    first = bn_noise(SMALL, 60, seed=3, step=7)
    assert all(torch.equal(a, b) for a, b in zip(first, bn_noise(SMALL, 60, 3, 7), strict=True))
    assert not torch.equal(first[0], bn_noise(SMALL, 60, 3, 8)[0])
    assert not torch.equal(first[0], bn_noise(SMALL, 60, 4, 7)[0])
    # non-zero mean, non-unit variance: each unit's over the batch, drawn anew each step
    means = first[0].mean(dim=0)
    assert 0.1 < means.abs().max() <= NOISE_MEAN + 0.5
    assert first[0].std(dim=0).min() > 0.7


def test_bn_noisy_resumes_bit_identical(splits: Splits, tmp_path: Path) -> None:
    spec = replace(SHORT, training_batches=60)
    uninterrupted, full = train(splits, ALL, ("bn_noisy",), spec)
    interrupted = build_trainer(SMALL, [Cell(LONE, spec)], splits, CPU, "torch", ("bn_noisy",), ALL)
    interrupted.run(lambda sample: None, lambda: interrupted.step == 20)
    save_state(tmp_path / "state.safetensors", *interrupted.state(LONE))
    resumed = build_trainer(SMALL, [Cell(LONE, spec)], splits, CPU, "torch", ("bn_noisy",), ALL)
    assert resumed.restore({LONE: load_state(tmp_path / "state.safetensors")})
    rest: list[Sample] = []
    resumed.run(rest.append)
    assert [s.step for s in rest] == [40, 60]
    assert rest == [s for s in full if s.step > 20]
    assert_same_nets(resumed, uninterrupted, ("bn_noisy",))


def test_bn_noisy_serves_without_noise(splits: Splits) -> None:
    """Population and batch inference as a bn net of the same tensors; fused as population."""
    trainer, _ = train(splits, variants=("bn_noisy",), spec=replace(SHORT, training_batches=20))
    state = trainer.net_state(LONE, "bn_noisy")
    noisy = NetStack.from_net_states(SMALL, "bn_noisy", [state])
    bn = NetStack.from_net_states(SMALL, "bn", [state])
    images = to_inputs(splits.validation.images[:50])
    for mode in ("population", "batch"):
        assert torch.equal(noisy(images, mode), bn(images, mode))
    served = ServedNet(noisy)  # and folded into the layer before it, as a bn net's is
    fused = served.predict(splits.validation.images[:50], "fused").probabilities
    population = served.predict(splits.validation.images[:50], "population").probabilities
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(population), atol=1e-5, rtol=0)
