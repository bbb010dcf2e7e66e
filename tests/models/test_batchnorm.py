"""The written-out BN layer computes what torch's BatchNorm1d/2d compute, in every layout."""

import pytest
import torch
from torch import Tensor, nn

from bnlab.models.batchnorm import EPSILON, MOMENTUM, BatchNorm

IMPLS = ["bnlab", "torch"]
# Two float32 computations of one normalization, reduced in other orders: each output (unit
# scale here) rounds by ~sqrt(n) * 1.2e-7 for reductions over n <= 8 * 28 * 28 values: ~1e-5.
TOLERANCE = {"atol": 1e-5, "rtol": 0.0}
CHANNELS = 6


def randomize_affine(ours: BatchNorm, theirs: nn.modules.batchnorm._BatchNorm) -> None:
    """Same random gamma/beta in both, so gradients through them are not trivially alike."""
    generator = torch.Generator().manual_seed(1)
    gamma = 1 + 0.5 * torch.randn(CHANNELS, generator=generator)
    beta = torch.randn(CHANNELS, generator=generator)
    with torch.no_grad():
        ours.gamma.copy_(gamma.view_as(ours.gamma))
        ours.beta.copy_(beta.view_as(ours.beta))
        theirs.weight.copy_(gamma)
        theirs.bias.copy_(beta)


def assert_same_step(ours: BatchNorm, theirs: nn.Module, x: Tensor) -> None:
    """One training step: same outputs, and same gradients w.r.t. input, gamma and beta."""
    x_ours = x.clone().requires_grad_()
    x_theirs = x.clone().requires_grad_()
    y_ours = ours(x_ours, "train")
    y_theirs = theirs(x_theirs)
    torch.testing.assert_close(y_ours, y_theirs, **TOLERANCE)
    upstream = torch.randn_like(y_ours)
    (y_ours * upstream).sum().backward()
    (y_theirs * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOLERANCE)
    torch.testing.assert_close(ours.gamma.grad.flatten(), theirs.weight.grad, **TOLERANCE)
    torch.testing.assert_close(ours.beta.grad.flatten(), theirs.bias.grad, **TOLERANCE)
    ours.zero_grad()
    theirs.zero_grad()


def assert_same_after_training(ours: BatchNorm, theirs: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    randomize_affine(ours, theirs)
    theirs.train()
    for _ in range(200):
        assert_same_step(ours, theirs, 2 * torch.randn(shape) + 0.5)
    torch.testing.assert_close(ours.running_mean.flatten(), theirs.running_mean, **TOLERANCE)
    torch.testing.assert_close(ours.running_var.flatten(), theirs.running_var, **TOLERANCE)
    # and the population statistics they learned normalize alike
    theirs.eval()
    x = 2 * torch.randn(shape) + 0.5
    torch.testing.assert_close(ours(x, "population"), theirs(x), **TOLERANCE)


@pytest.mark.parametrize("impl", IMPLS)
def test_linear_layout_matches_torch_batchnorm1d(impl: str) -> None:
    ours = BatchNorm((1, CHANNELS), (0,), impl)
    theirs = nn.BatchNorm1d(CHANNELS, eps=EPSILON, momentum=MOMENTUM)
    assert_same_after_training(ours, theirs, (16, CHANNELS))


@pytest.mark.parametrize("impl", IMPLS)
def test_feature_map_layout_matches_torch_batchnorm2d(impl: str) -> None:
    ours = BatchNorm((1, CHANNELS, 1, 1), (0, 2, 3), impl)
    theirs = nn.BatchNorm2d(CHANNELS, eps=EPSILON, momentum=MOMENTUM)
    assert_same_after_training(ours, theirs, (4, CHANNELS, 5, 5))


@pytest.mark.parametrize("impl", IMPLS)
def test_stacked_layout_equals_separate_batchnorm1d_per_net(impl: str) -> None:
    nets, batch = 3, 16
    ours = BatchNorm((nets, 1, CHANNELS), (1,), impl)
    theirs = [nn.BatchNorm1d(CHANNELS, eps=EPSILON, momentum=MOMENTUM) for _ in range(nets)]
    torch.manual_seed(0)
    with torch.no_grad():
        ours.gamma.normal_(1, 0.5)
        ours.beta.normal_()
        for g, bn in enumerate(theirs):
            bn.weight.copy_(ours.gamma[g, 0])
            bn.bias.copy_(ours.beta[g, 0])
    for _ in range(20):
        # each net's inputs on a scale of their own, so mixed-up statistics would show
        x = torch.randn(nets, batch, CHANNELS) * torch.tensor([1.0, 3.0, 0.3]).view(nets, 1, 1)
        x_ours = x.clone().requires_grad_()
        y = ours(x_ours, "train")
        y.sum().backward()
        for g, bn in enumerate(theirs):
            x_theirs = x[g].clone().requires_grad_()
            y_theirs = bn(x_theirs)
            y_theirs.sum().backward()
            torch.testing.assert_close(y[g], y_theirs, **TOLERANCE)
            torch.testing.assert_close(x_ours.grad[g], x_theirs.grad, **TOLERANCE)
            torch.testing.assert_close(ours.gamma.grad[g, 0], bn.weight.grad, **TOLERANCE)
            bn.zero_grad()
        ours.zero_grad()
    for g, bn in enumerate(theirs):
        torch.testing.assert_close(ours.running_mean[g, 0], bn.running_mean, **TOLERANCE)
        torch.testing.assert_close(ours.running_var[g, 0], bn.running_var, **TOLERANCE)


@pytest.mark.parametrize("impl", IMPLS)
def test_running_variance_is_fed_the_unbiased_batch_variance(impl: str) -> None:
    bn = BatchNorm((1, CHANNELS), (0,), impl)
    x = torch.randn(8, CHANNELS, generator=torch.Generator().manual_seed(0))
    bn(x, "train")
    unbiased = 0.99 * 1 + 0.01 * x.var(dim=0, unbiased=True)
    biased = 0.99 * 1 + 0.01 * x.var(dim=0, unbiased=False)
    # values ~1, from a variance of 8 numbers: a few float32 epsilons (1.2e-7 * 8 = 1e-6); the
    # biased variance differs by 0.01 * var / 7 ~ 1e-3, far outside
    torch.testing.assert_close(bn.running_var.flatten(), unbiased, atol=1e-6, rtol=0.0)
    assert not torch.allclose(bn.running_var.flatten(), biased, atol=1e-6, rtol=0.0)
    torch.testing.assert_close(bn.running_mean.flatten(), 0.01 * x.mean(dim=0))


def trained_layer(impl: str) -> BatchNorm:
    bn = BatchNorm((1, CHANNELS), (0,), impl)
    with torch.no_grad():
        bn.running_mean.copy_(torch.linspace(-1, 1, CHANNELS))
        bn.running_var.copy_(torch.linspace(0.5, 4, CHANNELS))
        bn.gamma.copy_(torch.linspace(0.5, 2, CHANNELS))
        bn.beta.copy_(torch.linspace(-0.3, 0.3, CHANNELS))
    return bn


def state_of(bn: BatchNorm) -> dict[str, Tensor]:
    return {name: tensor.clone() for name, tensor in bn.state_dict().items()}


@pytest.mark.parametrize("impl", IMPLS)
def test_population_mode_normalizes_with_running_statistics_and_keeps_them(impl: str) -> None:
    bn = trained_layer(impl)
    before = state_of(bn)
    x = torch.randn(5, CHANNELS) * 3
    expected = (x - before["running_mean"]) / torch.sqrt(before["running_var"] + EPSILON)
    expected = expected * before["gamma"] + before["beta"]
    torch.testing.assert_close(bn(x, "population"), expected, **TOLERANCE)
    for name, tensor in state_of(bn).items():
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("impl", IMPLS)
def test_batch_mode_normalizes_with_the_batch_and_leaves_running_statistics_alone(
    impl: str,
) -> None:
    bn = trained_layer(impl)
    before = state_of(bn)
    x = torch.randn(5, CHANNELS) * 3
    mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
    expected = (x - mean) / torch.sqrt(var + EPSILON) * before["gamma"] + before["beta"]
    torch.testing.assert_close(bn(x, "batch"), expected, **TOLERANCE)
    for name, tensor in state_of(bn).items():
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("impl", IMPLS)
def test_batch_mode_on_one_input_outputs_beta(impl: str) -> None:
    bn = trained_layer(impl)
    out = bn(torch.randn(1, CHANNELS) * 3, "batch")
    torch.testing.assert_close(out, bn.beta.detach(), **TOLERANCE)
