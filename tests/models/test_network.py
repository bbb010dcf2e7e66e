"""The pair starts from one set of weights, drawn reproducibly; conv nets keep per-map BN stats."""

import pytest
import torch

from bnlab.models.data import Splits
from bnlab.models.network import Architecture, NetStack, initial_weights
from bnlab.models.trainer import TrainingSpec
from bnlab.vocabulary import Variant
from tests.models.conftest import LONE, lone_trainer

ARCH = Architecture()
CONV = Architecture(conv_channels=(4, 8), hidden_layers=(32,))


def test_plain_and_bn_nets_of_a_pair_start_from_the_same_weights(splits: Splits) -> None:
    spec = TrainingSpec(weight_std=0.05, seed=3)
    trainer = lone_trainer(ARCH, spec, splits)
    plain, bn = trainer.net_state(LONE, "plain"), trainer.net_state(LONE, "bn")
    expected = initial_weights(ARCH, spec.weight_std, spec.seed)
    assert len(expected) == 4
    for i, weight in enumerate(expected):
        assert torch.equal(plain[f"weight.{i}"], weight)
        assert torch.equal(bn[f"weight.{i}"], weight)


def test_same_seed_draws_the_same_weights_and_another_seed_different_ones() -> None:
    first = initial_weights(ARCH, 0.05, seed=7)
    again = initial_weights(ARCH, 0.05, seed=7)
    other = initial_weights(ARCH, 0.05, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_weight_std_sets_the_spread_of_initial_weights() -> None:
    good = torch.cat([w.flatten() for w in initial_weights(ARCH, 0.05, seed=0)])
    bad = torch.cat([w.flatten() for w in initial_weights(ARCH, 5.0, seed=0)])
    assert abs(good.std().item() - 0.05) < 0.001
    assert abs(bad.std().item() - 5.0) < 0.1


def test_conv_pair_trains_and_its_bn_keeps_statistics_per_feature_map(splits: Splits) -> None:
    samples = []
    spec = TrainingSpec(learning_rate=0.3, training_batches=100, batches_per_sample=50)
    trainer = lone_trainer(CONV, spec, splits)
    assert trainer.run(samples.append) == "finished"

    assert samples[-1].step == 100
    assert samples[-1].cells[LONE].nets["bn"].val_accuracy > 0.8
    bn = trainer.net_state(LONE, "bn")
    widths = [*CONV.conv_channels, *CONV.hidden_layers]
    for i, width in enumerate(widths):
        assert bn[f"bn.{i}.running_mean"].shape == (width,)
        assert bn[f"bn.{i}.running_var"].shape == (width,)
    # the feature maps' statistics moved off their start, each map its own way
    assert bn["bn.0.running_mean"].unique().numel() == 4
    assert not torch.equal(bn["bn.0.running_var"], torch.ones(4))
    assert trainer.net_state(LONE, "plain")["bias.0"].shape == (4,)


@pytest.mark.parametrize("arch", [ARCH, CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("variant", ["plain", "bn"])
def test_nets_stacked_together_compute_what_each_computes_alone(
    splits: Splits, arch: Architecture, variant: Variant
) -> None:
    weights = [initial_weights(arch, 0.05, seed) for seed in range(3)]
    stacked = NetStack(arch, variant, weights)
    alone = [NetStack(arch, variant, [w]) for w in weights]
    images = splits.train.images[:60].float() / 255
    # a training step's forward (which also moves BN's running statistics), then population.
    # A stack's batched GEMMs sum in another order than a lone net's: ~sqrt(K) * 1.2e-7
    # relative for K <= 784 terms, 3e-6, of logits ~1 (atol, rtol 1e-5); the running
    # statistics move by 0.01 of a batch statistic that carries that rounding (atol 1e-6).
    for mode in ("train", "population"):
        logits = stacked(images, mode)
        for index, net in enumerate(alone):
            torch.testing.assert_close(logits[index], net(images, mode)[0], atol=1e-5, rtol=1e-5)
    for index, net in enumerate(alone):
        for name, tensor in stacked.net_state(index).items():
            torch.testing.assert_close(tensor, net.net_state(0)[name], atol=1e-6, rtol=1e-5)
