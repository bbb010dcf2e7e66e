"""Recalibration ("precise BN"): population statistics that are the true mean and variance of each
BN layer's inputs over the training split, whatever the batches they were gathered in."""

import pytest
import torch

from bnlab.models.batchnorm import BNImpl
from bnlab.models.data import Split, Splits, to_inputs
from bnlab.models.inference import accuracy
from bnlab.models.network import Architecture, NetStack, initial_weights
from bnlab.models.recalibration import recalibrate
from bnlab.models.trainer import Trainer
from tests.models.conftest import MLP, stack_of_one

CONV = Architecture(conv_channels=(4,), hidden_layers=(16,))


def bn_inputs(stack: NetStack, images: torch.Tensor) -> list[torch.Tensor]:
    """Every BN layer's input for `images` given as one batch, the net in population mode."""
    captured: list[torch.Tensor] = []
    hooks = [
        norm.register_forward_pre_hook(lambda _m, args: captured.append(args[0].double()))
        for norm in stack.norms
    ]
    with torch.no_grad():
        stack(to_inputs(images), "population")
    for hook in hooks:
        hook.remove()
    return captured


@pytest.mark.parametrize("arch", [MLP, CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("bn_impl", ["bnlab", "torch"])
def test_population_statistics_equal_the_whole_split_computed_at_once(
    splits: Splits, arch: Architecture, bn_impl: BNImpl
) -> None:
    weights = [initial_weights(arch, 0.05, seed) for seed in (1, 2)]
    stack = NetStack(arch, "bn", weights, bn_impl)
    recalibrated = recalibrate(stack, splits.train, batch_size=64)
    for norm, x in zip(
        recalibrated.norms, bn_inputs(recalibrated, splits.train.images), strict=True
    ):
        mean = x.mean(dim=norm.reduce_dims, keepdim=True)
        var = x.var(dim=norm.reduce_dims, keepdim=True, unbiased=True)  # type: ignore[call-overload]
        # float32 BN inputs (~sqrt(784) * 1.2e-7 = 3e-6 relative each) against the float64
        # whole-split moments of the same inputs: rtol 1e-5
        torch.testing.assert_close(norm.running_mean, mean.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norm.running_var, var.float(), rtol=1e-5, atol=1e-7)


def test_the_first_layer_gets_the_mean_and_variance_of_its_inputs(splits: Splits) -> None:
    stack = NetStack(MLP, "bn", [initial_weights(MLP, 0.05, seed=0)])
    first = recalibrate(stack, splits.train).norms[0]
    inputs = to_inputs(splits.train.images).flatten(1).double() @ stack.weights[0][0].double().T
    torch.testing.assert_close(first.running_mean[0, 0], inputs.mean(dim=0).float())
    torch.testing.assert_close(first.running_var[0, 0], inputs.var(dim=0).float())


def test_the_batch_size_changes_nothing(splits: Splits) -> None:
    """What the batch size changes is how the moments are merged; the net is float64 so that
    the forward pass adds no rounding of its own worth speaking of. (In float32 a GEMM over 7
    rows and one over 10,000 may take different kernels that round each BN input differently,
    by ~sqrt(784) float32 ulps: that is MKL's choice, not recalibration's, and it grows through
    the layers by a factor this test would have to guess.) In float64 each BN input rounds by
    ~sqrt(784) * 1.1e-16 = 3e-15 relative; normalizing divides by a spread no smaller than a
    tenth of the values here ((|mean| + 3 sd) / sd < 10 per layer), so three layers grow it at
    most 1,000-fold, to 3e-12; merging even the full split's 55,000 / 7 = 8,000 chunks in
    float64 adds ~8,000 * 1.1e-16 = 1e-12. rtol 1e-10 is 30x that, and far below what a merging
    error would show (a dropped term of Chan's update is of the order of the variance itself)."""
    stack = NetStack(MLP, "bn", [initial_weights(MLP, 5.0, seed=0)]).double()  # large means
    small, large = recalibrate(stack, splits.train, 7), recalibrate(stack, splits.train, 10_000)
    for a, b in zip(small.buffers(), large.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


def test_the_original_net_is_left_as_it_was(splits: Splits) -> None:
    stack = NetStack(MLP, "bn", [initial_weights(MLP, 0.05, seed=0)])
    before = [buffer.clone() for buffer in stack.buffers()]
    recalibrated = recalibrate(stack, splits.train)
    assert all(torch.equal(a, b) for a, b in zip(before, stack.buffers(), strict=True))
    assert not torch.equal(recalibrated.norms[0].running_var, stack.norms[0].running_var)


def test_recalibration_repairs_population_statistics_that_went_stale(
    trained_pair: Trainer, splits: Splits
) -> None:
    stack = stack_of_one(trained_pair, "bn")
    [trained] = accuracy(stack, splits.test, "population")
    with torch.no_grad():  # an estimate gone far off: means 3 deviations away, spreads 1/10
        for norm in stack.norms:
            norm.running_mean.add_(3 * norm.running_var.sqrt())
            norm.running_var.mul_(0.01)
    [stale] = accuracy(stack, splits.test, "population")
    [recalibrated] = accuracy(recalibrate(stack, splits.train), splits.test, "population")
    assert stale < trained - 0.2
    assert recalibrated >= trained - 0.02


def test_a_plain_net_has_nothing_to_recalibrate(splits: Splits) -> None:
    stack = NetStack(MLP, "plain", [initial_weights(MLP, 0.05, seed=0)])
    with pytest.raises(ValueError, match="plain net has no BN"):
        recalibrate(stack, splits.train)


def test_one_image_is_not_enough(splits: Splits) -> None:
    stack = NetStack(MLP, "bn", [initial_weights(MLP, 0.05, seed=0)])
    one = Split(splits.train.images[:1], splits.train.labels[:1])
    with pytest.raises(ValueError, match="at least two"):
        recalibrate(stack, one)
