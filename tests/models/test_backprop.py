"""The written-out training step trains as autograd does: every activation, every variant it
covers, each net with its own learning rate, up to float rounding; and a net's numbers do not
depend on the nets beside it, nor on a resume."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.models import backprop
from bnlab.models.backprop import WrittenOutStep
from bnlab.models.checkpoint import load_state, save_state
from bnlab.models.data import BatchOrder, Splits, to_inputs
from bnlab.models.network import Architecture, NetStack, initial_weights
from bnlab.models.trainer import Cell, NetSample, Sample, Trainer, TrainingSpec, build_trainer
from bnlab.vocabulary import ACTIVATIONS, STUDY_VARIANTS, Variant
from tests.models.conftest import CPU, LONE

RATES = (0.02, 0.05, 0.1)
WRITTEN_OUT: tuple[Variant, ...] = backprop.WRITTEN_OUT_VARIANTS
NEW: tuple[Variant, ...] = ("bn_after", "layer_norm", "group_norm")


def cells_of(specs: list[TrainingSpec]) -> list[Cell]:
    return [Cell(f"c{i}", spec) for i, spec in enumerate(specs)]


def run(trainer: Trainer) -> list[Sample]:
    samples: list[Sample] = []
    trainer.run(samples.append)
    return samples


def trained(arch: Architecture, splits: Splits) -> tuple[Trainer, list[Sample]]:
    cells = [
        Cell(f"c{i}", TrainingSpec(learning_rate=rate, training_batches=40, batches_per_sample=20))
        for i, rate in enumerate(RATES)
    ]
    trainer = build_trainer(arch, cells, splits, CPU, "torch")
    return trainer, run(trainer)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_the_written_out_step_trains_as_autograd_does(
    splits: Splits, activation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    arch = Architecture(activation=activation)
    written_out, written_out_curve = trained(arch, splits)
    monkeypatch.setattr(backprop, "applies", lambda stack: False)
    autograd, autograd_curve = trained(arch, splits)
    assert all(lane.written_out for lane in written_out.lanes)
    assert not any(lane.written_out for lane in autograd.lanes)

    # The two steps compute the same numbers in another order (an update fused into its GEMM,
    # derivatives taken another way): float32's epsilon, 1.2e-7, per value per step; over 40
    # steps of a stable regime (lr <= 0.1) that walks to ~sqrt(40) * 1.2e-7 = 8e-7 of values
    # that are < 1 here, hence atol 1e-6. The mean loss carries the same relative rounding
    # (rel 1e-5: ~10x room); the gradient norms are read through three layers of backward,
    # which amplify it ~100x (rel 1e-4). Accuracies are counts of 200 images: equal.
    for cell in autograd.cells:
        for variant in STUDY_VARIANTS:
            ours, theirs = written_out.net_state(cell, variant), autograd.net_state(cell, variant)
            for name, tensor in theirs.items():  # weights, biases, gamma, beta, running stats
                torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-6, msg=name)
    for ours, theirs in zip(written_out_curve, autograd_curve, strict=True):
        for cell, variant, net in nets_of(theirs):
            mine = ours.cells[cell].nets[variant]
            assert mine.val_accuracy == pytest.approx(net.val_accuracy, abs=1e-9)
            if net.train_loss is not None:
                assert mine.train_loss == pytest.approx(net.train_loss, rel=1e-5)
            # the probes read the same weight gradients
            for layer, their_layer in zip(mine.layers, net.layers, strict=True):
                if their_layer.grad_norm is not None:
                    assert layer.grad_norm == pytest.approx(their_layer.grad_norm, rel=1e-4)


def nets_of(sample: Sample) -> list[tuple[str, Variant, NetSample]]:
    return [(c, v, net) for c, cell in sample.cells.items() for v, net in cell.nets.items()]


def autograd_step(
    net: NetStack, images: Tensor, labels: Tensor, rate: float
) -> tuple[float, list[Tensor]]:
    """The step the new variants took before (`Lane`'s): autograd through the stack's forward,
    SGD at learning rate 1 on the loss weighted by the net's rate. Returns the loss and the
    hidden layers' weight gradients."""
    loss = F.cross_entropy(net(to_inputs(images), "train")[0], labels)
    names, parameters = zip(*net.named_parameters(), strict=True)
    grads = dict(zip(names, torch.autograd.grad(loss * rate, parameters), strict=True))
    with torch.no_grad():
        for name, parameter in zip(names, parameters, strict=True):
            parameter.sub_(grads[name])
    return loss.item(), [grads[f"weights.{i}"][0] for i in range(len(net.weights) - 1)]


# Rounding of one step: both steps round each updated value once, so they may differ by one
# float32 ulp of it (rtol: 2 eps, 2.4e-7, room for two); and by the rounding of the updates,
# which the two compute in other orders: sums of up to 784 terms, sqrt(784) * eps of the update's
# scale, at most 0.03 here: 1e-7 (atol; seen: 6e-9 beyond the rtol).
ONE_STEP = {"rtol": 2 * torch.finfo(torch.float32).eps, "atol": 1e-7}


@pytest.mark.parametrize("variant", NEW)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_written_out_step_of_a_new_variant_is_autograds(
    splits: Splits, variant: Variant, activation: str
) -> None:
    """Step by step over a short run, each net's written-out step against autograd's from the
    same state. From the same state the two forwards are the same kernels on the same values
    (bn_after's linear layer is F.linear's addmm), so no pre-activation lands on the other side
    of relu's kink: over a whole run, that is what parts the two paths by a whole derivative
    (7e-6 in a weight from one unit of one image, seen under ATEN_CPU_CAPABILITY=default)."""
    arch = Architecture(activation=activation)
    weights = [initial_weights(arch, 0.05, seed) for seed in range(len(RATES))]
    step = WrittenOutStep(NetStack(arch, variant, weights, "torch"), RATES)
    order = BatchOrder(len(splits.train), 60, 0, CPU)
    for t in range(20):
        indices = order.indices(t)
        images, labels = splits.train.images[indices], splits.train.labels[indices]
        before = [single.net_state(0) for single in step.singles]
        keep_grads = t % 2 == 1  # both ways of updating the weights
        losses = step.train(splits.train.images, splits.train.labels, indices[None], keep_grads)[0]
        for single, state, rate, loss in zip(step.singles, before, RATES, losses, strict=True):
            reference = NetStack.from_net_states(arch, variant, [state], "torch").train()
            reference_loss, grads = autograd_step(reference, images, labels, rate)
            assert loss.item() == pytest.approx(reference_loss, rel=1e-6)
            ours = single.net_state(0)
            for name, tensor in reference.net_state(0).items():
                torch.testing.assert_close(ours[name], tensor, **ONE_STEP, msg=f"{t} {name}")
            if keep_grads:  # what probes read, scaled by the rate as in the trainer
                for layer, grad in enumerate(grads):
                    mine = single.weights[layer].grad[0]
                    torch.testing.assert_close(mine, grad, **ONE_STEP, msg=f"{t} grad {layer}")


# A stable regime, the "bad" weights, and lr 2: where rounding differences would grow.
REGIMES = [
    TrainingSpec(rate, weight_std=std, training_batches=60, batches_per_sample=20)
    for rate, std in ((0.05, 0.05), (0.05, 5.0), (2.0, 0.05))
]


def assert_same_nets(trainer: Trainer, cell: str, reference: Trainer, reference_cell: str) -> None:
    """Bit for bit; a diverged net's frozen weights may hold NaNs, equal as well."""
    for variant in NEW:
        mine = trainer.net_state(cell, variant)
        for name, tensor in reference.net_state(reference_cell, variant).items():
            assert torch.equal(mine[name].nan_to_num(), tensor.nan_to_num()), f"{variant} {name}"
            assert torch.equal(mine[name].isnan(), tensor.isnan()), f"{variant} {name}"


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_a_new_variants_net_trains_bit_for_bit_as_it_does_alone(
    splits: Splits, activation: str
) -> None:
    """Each net steps as a lone net of its own (see `backprop`): in a stack of three it computes
    exactly what it computes alone."""
    arch = Architecture(activation=activation)
    group = build_trainer(arch, cells_of(REGIMES), splits, CPU, "torch", NEW)
    assert all(lane.written_out and lane.stack.size == 3 for lane in group.lanes)
    grouped = run(group)
    for i, spec in enumerate(REGIMES):
        alone = build_trainer(arch, [Cell(LONE, spec)], splits, CPU, "torch", NEW)
        curve = run(alone)
        assert [s.cells[LONE] for s in curve] == [s.cells[f"c{i}"] for s in grouped]
        assert_same_nets(group, f"c{i}", alone, LONE)
    # trained, not agreeing on untrained curves (chance is a loss of ln 10 = 2.3)
    for variant in NEW:
        assert min(cell.nets[variant].train_loss for cell in grouped[-1].cells.values()) < 1.5


def test_a_resumed_group_of_the_new_variants_trains_on_bit_for_bit(
    splits: Splits, tmp_path: Path
) -> None:
    arch = Architecture()
    uninterrupted = build_trainer(arch, cells_of(REGIMES), splits, CPU, "torch", NEW)
    full = run(uninterrupted)
    interrupted = build_trainer(arch, cells_of(REGIMES), splits, CPU, "torch", NEW)
    interrupted.run(lambda s: None, should_cancel=lambda: interrupted.step == 20)
    for cell in interrupted.cells:
        save_state(tmp_path / f"{cell}.safetensors", *interrupted.state(cell))
    resumed = build_trainer(arch, cells_of(REGIMES), splits, CPU, "torch", NEW)
    assert resumed.restore(
        {cell: load_state(tmp_path / f"{cell}.safetensors") for cell in resumed.cells}
    )
    assert run(resumed) == [s for s in full if s.step > 20]
    for cell in uninterrupted.cells:
        assert_same_nets(resumed, cell, uninterrupted, cell)


def stack(arch: Architecture, variant: str, bn_impl: str) -> NetStack:
    return NetStack(arch, variant, [initial_weights(arch, 0.05, 0)], bn_impl)  # type: ignore[arg-type]


def test_conv_nets_bn_noisy_and_the_reference_bn_train_through_autograd() -> None:
    mlp, conv = Architecture(), Architecture(conv_channels=(4,), hidden_layers=(8,))
    for variant in WRITTEN_OUT:
        assert backprop.applies(stack(mlp, variant, "torch"))
        assert not backprop.applies(stack(conv, variant, "torch"))
    # torch's GroupNorm kernel whatever BN a trainer is given
    for variant in ("plain", "layer_norm", "group_norm"):
        assert backprop.applies(stack(mlp, variant, "bnlab"))
    for variant in ("bn", "bn_after", "bn_noisy"):
        assert not backprop.applies(stack(mlp, variant, "bnlab"))
    assert not backprop.applies(stack(mlp, "bn_noisy", "torch"))
