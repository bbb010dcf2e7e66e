"""The five variants: their normalizations compute what torch's modules compute, each hidden
layer does its operations in its variant's order, and a trainer of all five starts them from one
set of weights while leaving the study's pair exactly as it trains alone."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from bnlab.models.batchnorm import EPSILON, GroupNorm
from bnlab.models.checkpoint import load_net, save_net
from bnlab.models.data import Splits
from bnlab.models.inference import ServedNet
from bnlab.models.network import Architecture, NetStack, bn_noise, initial_weights
from bnlab.models.trainer import Cell, TrainingSpec, build_trainer
from bnlab.vocabulary import BATCH_DEPENDENT, STUDY_VARIANTS, VARIANTS, Variant
from tests.models.conftest import CPU, LONE, lone_trainer

# Two float32 computations of one normalization with its reductions in other orders: each
# output (unit scale here) rounds by about sqrt(n) * 1.2e-7 (float32's epsilon) for a reduction
# over n values, n <= 8 * 14 * 14 here, plus a few roundings of the affine and the activation:
# within 1e-5. A tiny net's logits and gradients stack three such layers of unit-scale values.
TOLERANCE = {"atol": 1e-5, "rtol": 0.0}
TINY = Architecture(activation="tanh", hidden_layers=(8, 6))
TINY_CONV = Architecture(activation="tanh", hidden_layers=(6,), conv_channels=(4, 8), groups=2)
SHORT = TrainingSpec(learning_rate=0.3, training_batches=40, batches_per_sample=20)


def random_affine(*modules: nn.Module) -> None:
    """The same random scale and shift in each (ours: gamma/beta, torch's: weight/bias), so that
    the gradients through them are not trivially alike."""
    generator = torch.Generator().manual_seed(1)
    size = modules[0].gamma.numel()
    scale = 1 + 0.5 * torch.randn(size, generator=generator)
    shift = torch.randn(size, generator=generator)
    with torch.no_grad():
        for module in modules:
            weight, bias = (
                (module.gamma, module.beta)
                if hasattr(module, "gamma")
                else (module.weight, module.bias)
            )
            weight.copy_(scale.view_as(weight))
            bias.copy_(shift.view_as(bias))


def assert_same_forward_backward(
    ours: Callable[[Tensor], Tensor], theirs: Callable[[Tensor], Tensor], x: Tensor
) -> None:
    """Same outputs and the same gradient w.r.t. the input (the parameters' gradients are
    left for the caller to compare)."""
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    torch.testing.assert_close(y_ours, y_theirs, **TOLERANCE)
    upstream = torch.randn_like(y_ours)
    (y_ours * upstream).sum().backward()
    (y_theirs * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOLERANCE)


def assert_same_affine_grads(ours: GroupNorm, theirs: nn.Module) -> None:
    torch.testing.assert_close(ours.gamma.grad, theirs.weight.grad.flatten(), **TOLERANCE)
    torch.testing.assert_close(ours.beta.grad, theirs.bias.grad.flatten(), **TOLERANCE)


def test_one_group_of_features_is_torch_layernorm() -> None:
    torch.manual_seed(0)
    ours, theirs = GroupNorm(1, 100, 1), nn.LayerNorm(100, eps=EPSILON)
    random_affine(ours, theirs)
    assert_same_forward_backward(ours, theirs, 3 * torch.randn(60, 100) + 1)
    assert_same_affine_grads(ours, theirs)


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_groups_of_feature_maps_are_torch_groupnorm(groups: int) -> None:
    torch.manual_seed(0)
    ours, theirs = GroupNorm(1, 8, groups), nn.GroupNorm(groups, 8, eps=EPSILON)
    random_affine(ours, theirs)
    assert_same_forward_backward(ours, theirs, 3 * torch.randn(16, 8, 14, 14) + 1)
    assert_same_affine_grads(ours, theirs)


def test_one_group_of_feature_maps_normalizes_as_torch_layernorm_over_the_image() -> None:
    """LayerNorm of an image: nn.LayerNorm([C, H, W])'s statistics, a gamma and beta per map."""
    torch.manual_seed(0)
    x = 3 * torch.randn(16, 8, 14, 14) + 1
    ours, theirs = GroupNorm(1, 8, 1), nn.LayerNorm([8, 14, 14], eps=EPSILON)
    torch.testing.assert_close(ours(x), theirs(x), **TOLERANCE)


def test_stacked_nets_keep_their_groups_apart() -> None:
    """Three nets' features side by side are three nets' GroupNorms, not one over all."""
    torch.manual_seed(0)
    stacked, alone = GroupNorm(3, 10, 2), nn.GroupNorm(2, 10, eps=EPSILON)
    x = torch.randn(5, 30)
    for net in range(3):
        torch.testing.assert_close(
            stacked(x)[:, 10 * net : 10 * net + 10], alone(x[:, 10 * net :][:, :10]), **TOLERANCE
        )


def test_group_norm_refuses_groups_that_do_not_divide_the_width() -> None:
    with pytest.raises(ValueError, match="equal groups"):
        GroupNorm(1, 10, 3)


def test_default_groups_are_the_most_up_to_32_of_4_or_more_in_every_width() -> None:
    assert Architecture().norm_groups() == 25  # 100 features: 25 groups of 4
    assert Architecture(hidden_layers=(256, 128)).norm_groups() == 32
    assert Architecture(hidden_layers=(64, 32)).norm_groups() == 8  # groups of 4 at least
    assert Architecture(hidden_layers=(100,), conv_channels=(8, 16)).norm_groups() == 2
    assert Architecture(hidden_layers=(6,)).norm_groups() == 1  # no groups of 4: LayerNorm
    assert Architecture(groups=5).norm_groups() == 5


class Noise(nn.Module):
    """bn_noisy's noise, added as a user would: a fixed tensor (per image, unit, position)."""

    def __init__(self, noise: Tensor) -> None:
        super().__init__()
        self.noise = noise

    def forward(self, x: Tensor) -> Tensor:
        return x + self.noise


def hand_built(
    arch: Architecture, variant: Variant, state: dict[str, Tensor], noise: list[Tensor]
) -> nn.Sequential:
    """The net a user would write with torch's modules, in the variant's order, from `state`
    (a `NetStack.net_state`): the reference for the order of operations. A bn_noisy net's
    `noise` follows its BN."""
    layers: list[nn.Module] = []
    shapes = arch.weight_shapes()
    for i, shape in enumerate(shapes[:-1]):
        conv = len(shape) == 4
        if conv:
            layers.append(nn.Conv2d(shape[1], shape[0], 5, padding="same", bias=False))
        else:
            if i == len(arch.conv_channels):
                layers.append(nn.Flatten())
            layers.append(nn.Linear(shape[1], shape[0], bias=False))
        layers[-1].weight.data.copy_(state[f"weight.{i}"])
        if variant in ("plain", "bn_after"):
            layers[-1].bias = nn.Parameter(state[f"bias.{i}"].clone())
        norm = reference_norm(arch, variant, shape[0], conv)
        if variant != "bn_after" and norm is not None:
            layers.append(norm)
        if variant == "bn_noisy":
            layers.append(Noise(noise[i]))
        layers.append(nn.Tanh())
        if variant == "bn_after" and norm is not None:
            layers.append(norm)
        if conv:
            layers.append(nn.MaxPool2d(2))
    output = nn.Linear(shapes[-1][1], 10)
    output.weight.data.copy_(state[f"weight.{len(shapes) - 1}"])
    output.bias.data.copy_(state["output_bias"])
    return nn.Sequential(*layers, output)


def reference_norm(
    arch: Architecture, variant: Variant, width: int, conv: bool
) -> nn.Module | None:
    if variant in ("bn", "bn_after", "bn_noisy"):
        # torch's momentum is the weight of the batch: the study's 0.01
        return (nn.BatchNorm2d if conv else nn.BatchNorm1d)(width, eps=EPSILON, momentum=0.01)
    if variant == "layer_norm":
        return nn.GroupNorm(1, width, eps=EPSILON) if conv else nn.LayerNorm(width, eps=EPSILON)
    if variant == "group_norm":
        return nn.GroupNorm(arch.norm_groups(), width, eps=EPSILON)
    return None


@pytest.mark.parametrize("arch", [TINY, TINY_CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_does_its_operations_in_order(arch: Architecture, variant: Variant) -> None:
    """Training forward, the weights' gradients, and afterwards population inference: the
    stack of one equals the hand-built nn.Sequential of the same weights."""
    torch.manual_seed(0)
    ours = NetStack(arch, variant, [initial_weights(arch, 0.3, seed=2)])
    with torch.no_grad():  # biases off zero, so that a bias in the wrong place shows
        for bias in ours.biases:
            bias.normal_()
    noise = bn_noise(arch, 12, seed=0, step=5) if variant == "bn_noisy" else []
    theirs = hand_built(arch, variant, ours.net_state(0), noise).train()
    images = torch.rand(12, 28, 28)
    logits = ours(images, "train", noise=noise)[0]
    expected = theirs(images.unsqueeze(1) if arch.conv_channels else images)
    torch.testing.assert_close(logits, expected, **TOLERANCE)
    # a mean, not a sum: gradients of unit scale or below, as TOLERANCE assumes
    logits.square().mean().backward()
    expected.square().mean().backward()
    weights = [m.weight for m in theirs if isinstance(m, nn.Linear | nn.Conv2d)]
    for i, weight in enumerate(weights):
        torch.testing.assert_close(ours.weights[i].grad[0], weight.grad, **TOLERANCE)
    if variant in BATCH_DEPENDENT:  # the running statistics moved as torch's did
        for i, bn in enumerate(m for m in theirs if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            torch.testing.assert_close(
                ours.net_state(0)[f"bn.{i}.running_mean"], bn.running_mean, **TOLERANCE
            )
    theirs.eval()
    for noise_module in (m for m in theirs if isinstance(m, Noise)):
        noise_module.noise = torch.zeros(())  # bn_noisy serves as bn: no noise
    torch.testing.assert_close(
        ours(images, "population")[0],
        theirs(images.unsqueeze(1) if arch.conv_channels else images),
        **TOLERANCE,
    )


def test_every_variant_starts_from_the_same_weights_and_trains(splits: Splits) -> None:
    spec = TrainingSpec(learning_rate=0.3, training_batches=40, batches_per_sample=20, seed=3)
    trainer = build_trainer(Architecture(), [Cell(LONE, spec)], splits, CPU, "torch", VARIANTS)
    expected = initial_weights(Architecture(), spec.weight_std, spec.seed)
    for variant in VARIANTS:
        state = trainer.net_state(LONE, variant)
        assert all(torch.equal(state[f"weight.{i}"], w) for i, w in enumerate(expected))
    samples = []
    trainer.run(samples.append)
    nets = samples[-1].cells[LONE].nets
    assert list(nets) == list(VARIANTS)
    assert all(net.val_accuracy > 0.5 for net in nets.values()), nets


@pytest.mark.parametrize("bn_impl", ["torch", "bnlab"])
def test_more_variants_leave_the_study_pair_bit_identical(splits: Splits, bn_impl: str) -> None:
    """The default experiment gives what it gave before variants: its plain and bn nets train
    exactly as they do beside the three others."""
    pair = lone_trainer(Architecture(), SHORT, splits, bn_impl=bn_impl)
    five = build_trainer(Architecture(), [Cell(LONE, SHORT)], splits, CPU, bn_impl, VARIANTS)
    pair_samples, five_samples = [], []
    pair.run(pair_samples.append)
    five.run(five_samples.append)
    for variant in STUDY_VARIANTS:
        for a, b in zip(pair_samples, five_samples, strict=True):
            assert a.cells[LONE].nets[variant] == b.cells[LONE].nets[variant]
        alone, beside = pair.net_state(LONE, variant), five.net_state(LONE, variant)
        assert all(torch.equal(t, beside[name]) for name, t in alone.items())


def test_a_trainer_refuses_no_variants_or_a_repeated_one(splits: Splits) -> None:
    for variants in ([], ["bn", "bn"]):
        with pytest.raises(ValueError, match="distinct variants"):
            build_trainer(Architecture(), [Cell(LONE, SHORT)], splits, CPU, "torch", variants)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_saves_loads_and_answers_alike(tmp_path: Path, variant: Variant) -> None:
    stack = NetStack(TINY_CONV, variant, [initial_weights(TINY_CONV, 0.3, seed=0)])
    noise = bn_noise(TINY_CONV, 20, seed=0, step=0) if stack.noisy else []
    stack(torch.rand(20, 28, 28), "train", noise=noise)  # running statistics off their start
    path = tmp_path / f"{variant}.safetensors"
    save_net(path, stack.net_state(0), variant=variant, arch=TINY_CONV)
    loaded, meta = load_net(path)
    assert (loaded.variant, loaded.arch, meta["variant"]) == (variant, TINY_CONV, variant)
    images = torch.rand(3, 28, 28)
    assert torch.equal(loaded(images, "population"), stack.eval()(images, "population"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_batch_dependent_variants_collapse_on_one_image(variant: Variant) -> None:
    """In `batch` mode on one image BN outputs beta, so every image gets one class; LayerNorm,
    GroupNorm and plain answer one image as they answer it among others."""
    served = ServedNet(NetStack(TINY, variant, [initial_weights(TINY, 0.3, seed=0)]))
    images = torch.rand(8, 28, 28)
    alone = torch.tensor(
        [served.predict(images[i : i + 1], "batch").probabilities[0] for i in range(8)]
    )
    population = torch.tensor(served.predict(images, "population").probabilities)
    assert served.mode_applies == (variant in BATCH_DEPENDENT)
    if variant in BATCH_DEPENDENT:
        assert torch.allclose(alone, alone[:1].expand_as(alone))  # one answer for all
    else:
        torch.testing.assert_close(alone, population, **TOLERANCE)


NEW = ("bn_after", "layer_norm", "group_norm")


def test_in_a_group_the_new_variants_conv_nets_agree_with_a_lone_net_to_rounding(
    splits: Splits,
) -> None:
    """Conv nets train through autograd, a group's nets in batched kernels that sum in another
    order than a lone net's, so a sweep's conv cell is not bit for bit its lone experiment (an
    MLP is: `backprop`'s written-out step, tests/models/test_backprop.py). After one step from
    the same weights and batch they differ by rounding: the longest sum of a step, in float32
    epsilons times its square root, of each tensor's scale, 4x (test_stacked's bound): the first
    kernel's gradient over the batch's 60 x 784 positions (seen here: 1.1e-5 of the scale, at
    learning rate 2)."""
    arch = TINY_CONV
    one_step = [
        TrainingSpec(learning_rate=rate, weight_std=std, training_batches=1, batches_per_sample=1)
        for rate in (0.01, 1.0, 2.0)
        for std in (0.05, 1.0)
    ]
    longest_sum = 784 * one_step[0].batch_size
    bound = 4 * torch.finfo(torch.float32).eps * longest_sum**0.5
    cells = [Cell(f"c{i}", cell) for i, cell in enumerate(one_step)]
    group = build_trainer(arch, cells, splits, CPU, "torch", NEW)
    group.run(lambda sample: None)
    for i, cell in enumerate(one_step):
        alone = build_trainer(arch, [Cell(LONE, cell)], splits, CPU, "torch", NEW)
        alone.run(lambda sample: None)
        for variant in NEW:
            mine = group.net_state(f"c{i}", variant)
            for name, tensor in alone.net_state(LONE, variant).items():
                if name.startswith("bias") or name.endswith("beta"):
                    # zero at the start: one step later a cancelling sum over the batch, which
                    # rounds relative to its terms, not to itself; this bound does not cover it
                    continue
                scale = tensor.float().abs().max().item() or 1.0
                difference = (mine[name] - tensor).float().abs().max().item()
                assert difference <= bound * scale, f"cell {i} {variant} {name}: {difference}"
