"""The written-out training step trains as autograd does: every activation, both variants, each
net with its own learning rate, up to float rounding."""

import pytest
import torch

from bnlab.models import backprop
from bnlab.models.data import Splits
from bnlab.models.network import Architecture, NetStack, initial_weights
from bnlab.models.trainer import Cell, NetSample, Sample, Trainer, TrainingSpec, build_trainer
from bnlab.vocabulary import ACTIVATIONS, STUDY_VARIANTS, Variant
from tests.models.conftest import CPU

RATES = (0.02, 0.05, 0.1)


def trained(arch: Architecture, splits: Splits) -> tuple[Trainer, list[Sample]]:
    cells = [
        Cell(f"c{i}", TrainingSpec(learning_rate=rate, training_batches=40, batches_per_sample=20))
        for i, rate in enumerate(RATES)
    ]
    trainer = build_trainer(arch, cells, splits, CPU, "torch")
    samples: list[Sample] = []
    trainer.run(samples.append)
    return trainer, samples


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


def stack(arch: Architecture, variant: str, bn_impl: str) -> NetStack:
    return NetStack(arch, variant, [initial_weights(arch, 0.05, 0)], bn_impl)  # type: ignore[arg-type]


def test_conv_nets_and_the_reference_bn_train_through_autograd() -> None:
    mlp, conv = Architecture(), Architecture(conv_channels=(4,), hidden_layers=(8,))
    assert backprop.applies(stack(mlp, "bn", "torch"))
    assert backprop.applies(stack(mlp, "plain", "bnlab"))
    assert not backprop.applies(stack(mlp, "bn", "bnlab"))
    assert not backprop.applies(stack(conv, "plain", "torch"))
