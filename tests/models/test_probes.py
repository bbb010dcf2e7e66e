"""Inside the networks: the study's claims ("too many ReLUs died", "sigmoid saturates", "BN keeps
each layer's inputs in place") as numbers the trainer reports at every sample point."""

import pytest
import torch
import torch.nn.functional as F

from bnlab.models.data import Split, Splits, to_inputs
from bnlab.models.network import Architecture, NetStack, initial_weights
from bnlab.models.probes import PROBE_SIZE, _percentiles, layer_stats, weight_grad_norms
from bnlab.models.recalibration import recalibrate
from bnlab.models.trainer import Sample, TrainingSpec
from tests.models.conftest import LONE, MLP, lone_trainer

CONV = Architecture(conv_channels=(4,), hidden_layers=(16,))


def probe(splits: Splits) -> torch.Tensor:
    return splits.validation.images[:PROBE_SIZE]


def train(splits: Splits, spec: TrainingSpec, arch: Architecture = MLP) -> list[Sample]:
    samples: list[Sample] = []
    lone_trainer(arch, spec, splits).run(samples.append)
    return samples


def test_relus_die_at_a_huge_learning_rate_without_bn_and_live_with_it(splits: Splits) -> None:
    samples = train(splits, TrainingSpec(learning_rate=5.0, training_batches=50))
    plain, bn = (
        samples[-1].cells[LONE].nets["plain"].layers,
        samples[-1].cells[LONE].nets["bn"].layers,
    )
    assert min(layer.stats.dead_fraction for layer in plain) > 0.8
    assert max(layer.stats.dead_fraction for layer in bn) < 0.5
    # dead units pass no gradient: the plain net stops learning altogether
    assert all(layer.grad_norm is not None and layer.grad_norm < 1e-3 for layer in plain)
    assert all(layer.grad_norm is not None and layer.grad_norm > 1e-2 for layer in bn)


def test_sigmoids_saturate_with_bad_weights_unless_bn_rescales_their_inputs(
    splits: Splits,
) -> None:
    spec = TrainingSpec(learning_rate=0.01, training_batches=100, batches_per_sample=100)
    samples = train(splits, TrainingSpec(**{**spec.__dict__, "weight_std": 5.0}), sigmoid())
    plain, bn = (
        samples[-1].cells[LONE].nets["plain"].layers,
        samples[-1].cells[LONE].nets["bn"].layers,
    )
    assert all(layer.stats.dead_fraction > 0.7 for layer in plain)
    assert all(layer.stats.dead_fraction < 0.05 for layer in bn)
    assert all(layer.stats.p85 - layer.stats.p15 > 20 for layer in plain)
    assert all(layer.stats.p85 - layer.stats.p15 < 5 for layer in bn)


def sigmoid() -> Architecture:
    return Architecture(activation="sigmoid")


def test_every_sample_point_has_every_layer_and_gradients_after_step_0(splits: Splits) -> None:
    samples = train(
        splits, TrainingSpec(learning_rate=0.5, training_batches=40, batches_per_sample=20)
    )
    for sample in samples:
        for net in sample.cells[LONE].nets.values():
            assert len(net.layers) == len(MLP.hidden_layers)
            expected_grads = sample.step > 0
            assert all((layer.grad_norm is not None) == expected_grads for layer in net.layers)


def calibrated_bn_net(splits: Splits, gamma: float = 1.0, beta: float = 0.0) -> NetStack:
    """An untrained bn net with BN's population statistics those of the probe batch itself."""
    stack = NetStack(MLP, "bn", [initial_weights(MLP, 0.05, seed=0)])
    with torch.no_grad():
        for norm in stack.norms:
            norm.gamma.fill_(gamma)
            norm.beta.fill_(beta)
    images = probe(splits)
    return recalibrate(stack, Split(images, torch.zeros(len(images), dtype=torch.long)))


def test_bn_pre_activations_sit_at_unit_scale_shifted_and_scaled_by_beta_and_gamma(
    splits: Splits,
) -> None:
    unit = layer_stats(calibrated_bn_net(splits), probe(splits))[0]
    for layer in unit:
        assert -1.3 < layer.p15 < -0.7 and abs(layer.p50) < 0.3 and 0.7 < layer.p85 < 1.3
    scaled = layer_stats(calibrated_bn_net(splits, gamma=3.0, beta=2.0), probe(splits))[0]
    # the first layer's inputs do not depend on gamma and beta: exactly 3 * unit + 2, up to
    # the float32 rounding of 3 * x + 2 and of the percentile's interpolation (~1.2e-7 of
    # values < 10: 1e-6; abs 1e-4 leaves room for a percentile falling between other pairs)
    first, first_unit = scaled[0], unit[0]
    for name in ("p15", "p50", "p85"):
        assert getattr(first, name) == pytest.approx(3 * getattr(first_unit, name) + 2, abs=1e-4)
    for layer in scaled:
        assert -1.3 < (layer.p15 - 2) / 3 < -0.7 and 0.7 < (layer.p85 - 2) / 3 < 1.3


def test_plain_pre_activations_spread_with_bad_weights_where_bn_ones_do_not(
    splits: Splits,
) -> None:
    weights = [initial_weights(MLP, 5.0, seed=0)]
    plain = layer_stats(NetStack(MLP, "plain", weights), probe(splits))[0]
    assert all(layer.p85 - layer.p15 > 20 for layer in plain)


def net_with_biases(arch: Architecture, biases: torch.Tensor) -> NetStack:
    """A plain net whose first layer's units get these biases (one per unit or feature map)."""
    stack = NetStack(arch, "plain", [initial_weights(arch, 0.01, seed=1)])
    with torch.no_grad():
        stack.biases[0].copy_(biases.view_as(stack.biases[0]))
    return stack


@pytest.mark.parametrize(
    ("activation", "bias"),
    [
        ("relu", -100.0),
        ("leaky_relu", -100.0),
        ("elu", -100.0),
        ("sigmoid", 100.0),
        ("tanh", -100.0),
    ],
)
def test_dead_fraction_counts_units_stuck_for_every_probe_image(
    splits: Splits, activation: str, bias: float
) -> None:
    arch = Architecture(activation=activation, hidden_layers=(20, 10))
    # a quarter of the first layer's units pushed far into the dead or saturated region
    biases = torch.tensor([bias] * 5 + [0.0] * 15)
    [first, _second] = layer_stats(net_with_biases(arch, biases), probe(splits))[0]
    assert first.dead_fraction == 0.25


def test_a_dead_unit_in_a_conv_layer_is_a_feature_map_dead_everywhere(splits: Splits) -> None:
    stack = net_with_biases(CONV, torch.tensor([-100.0, 0.0, 0.0, 0.0]))
    [conv, _linear] = layer_stats(stack, probe(splits))[0]
    assert conv.dead_fraction == 0.25


@pytest.mark.parametrize("arch", [MLP, CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("variant", ["plain", "bn"])
def test_nets_in_a_stack_get_the_stats_they_get_alone(
    splits: Splits, arch: Architecture, variant: str
) -> None:
    weights = [initial_weights(arch, 0.2, seed) for seed in (1, 2, 3)]
    together = layer_stats(NetStack(arch, variant, weights), probe(splits))  # type: ignore[arg-type]
    for net, alone_weights in enumerate(weights):
        [alone] = layer_stats(NetStack(arch, variant, [alone_weights]), probe(splits))  # type: ignore[arg-type]
        for a, b in zip(together[net], alone, strict=True):
            # a stack's GEMMs round in another order: ~sqrt(784) * 1.2e-7 = 3e-6 relative
            assert a.dead_fraction == b.dead_fraction
            assert (a.p15, a.p50, a.p85) == pytest.approx((b.p15, b.p50, b.p85), rel=1e-4, abs=1e-5)


def test_probing_leaves_bn_statistics_and_gradients_alone(splits: Splits) -> None:
    stack = NetStack(MLP, "bn", [initial_weights(MLP, 0.05, seed=0)])
    before = [buffer.clone() for buffer in stack.buffers()]
    layer_stats(stack, probe(splits))
    assert all(torch.equal(a, b) for a, b in zip(before, stack.buffers(), strict=True))
    assert all(parameter.grad is None for parameter in stack.parameters())


def test_gradient_norms_are_each_nets_own_loss_gradient(splits: Splits) -> None:
    weights = [initial_weights(MLP, 0.05, seed) for seed in (1, 2)]
    rates = [0.1, 2.0]
    stack = NetStack(MLP, "bn", weights)
    images, labels = splits.train.images[:60], splits.train.labels[:60]
    assert weight_grad_norms(stack, rates) is None  # before any backward pass
    logits = stack(to_inputs(images), "train")
    losses = torch.stack([F.cross_entropy(logits[net], labels) for net in range(2)])
    losses.dot(torch.tensor(rates)).backward()  # weighted as the trainer weights them
    norms = weight_grad_norms(stack, rates)
    for net, single_weights in enumerate(weights):
        alone = NetStack(MLP, "bn", [single_weights])
        F.cross_entropy(alone(to_inputs(images), "train")[0], labels).backward()
        expected = [w.grad.norm().item() for w in alone.weights[:-1]]  # type: ignore[union-attr]
        # the stack's backward sums in another order: ~sqrt(K) float32 epsilons per entry
        # (3e-6 for K = 784), through three layers (~10x): rel 1e-4
        assert norms is not None and norms[net] == pytest.approx(expected, rel=1e-4)


def test_percentiles_match_torch_quantile() -> None:
    values = torch.randn(3, 1001, generator=torch.Generator().manual_seed(0))
    expected = torch.quantile(values.double(), torch.tensor([0.15, 0.5, 0.85]).double(), dim=1)
    torch.testing.assert_close(_percentiles(values), expected.T)
