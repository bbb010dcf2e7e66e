"""A lone experiment's trainer (a group of one cell): reproducible, resumable, cancellable,
and it survives a diverging net."""

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bnlab.models import trainer as trainer_module
from bnlab.models.batchnorm import BNImpl
from bnlab.models.checkpoint import load_state, save_state
from bnlab.models.data import Splits
from bnlab.models.inference import accuracy
from bnlab.models.network import Architecture
from bnlab.models.trainer import Sample, Trainer, TrainingSpec
from bnlab.vocabulary import STUDY_VARIANTS
from tests.models.conftest import LONE, lone_trainer, stack_of_one

ARCH = Architecture()
SHORT = TrainingSpec(learning_rate=0.5, training_batches=60, batches_per_sample=20)
# relu, lr 2 and the study's "bad" weights: the plain net's loss overflows within a few steps
# while BN keeps the bn net's finite.
DIVERGING = TrainingSpec(
    learning_rate=2.0, training_batches=60, batches_per_sample=20, weight_std=5.0
)


def run(trainer: Trainer, **hooks) -> list[Sample]:
    samples: list[Sample] = []
    trainer.run(samples.append, **hooks)
    return samples


def assert_same_nets(a: Trainer, b: Trainer) -> None:
    for label in STUDY_VARIANTS:
        state_a, state_b = a.net_state(LONE, label), b.net_state(LONE, label)
        assert state_a.keys() == state_b.keys()
        for name, tensor in state_a.items():
            # exactly equal; a diverged net's frozen weights may hold NaNs, equal as well
            torch.testing.assert_close(
                tensor, state_b[name], rtol=0, atol=0, equal_nan=True, msg=f"{label} {name}"
            )


def test_same_spec_and_seed_give_bit_identical_curves_and_weights(splits: Splits) -> None:
    first = lone_trainer(ARCH, SHORT, splits)
    second = lone_trainer(ARCH, SHORT, splits)
    first_curve, second_curve = run(first), run(second)
    assert [s.step for s in first_curve] == [0, 20, 40, 60]
    assert first_curve == second_curve
    assert_same_nets(first, second)


@pytest.mark.parametrize("bn_impl", ["bnlab", "torch"])
def test_the_sample_interval_does_not_change_the_training(splits: Splits, bn_impl: BNImpl) -> None:
    # A lane trains a sample interval at a time (the written-out step: in one call); sampled at
    # every step, the nets must come out bit-identical to sampling once at the end.
    every_step = TrainingSpec(**{**SHORT.__dict__, "batches_per_sample": 1})
    once = TrainingSpec(**{**SHORT.__dict__, "batches_per_sample": SHORT.training_batches})
    first, second = (
        lone_trainer(ARCH, spec, splits, bn_impl=bn_impl) for spec in (every_step, once)
    )
    run(first), run(second)
    assert_same_nets(first, second)


def test_an_interval_in_several_calls_trains_as_in_one(
    splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long intervals go to the written-out step in chunks: the same curves and nets, and the
    # weight gradients of each interval's last step left for the probes at the sample point.
    whole, chunked = (lone_trainer(ARCH, SHORT, splits, bn_impl="torch") for _ in range(2))
    whole_curve = run(whole)
    monkeypatch.setattr(trainer_module, "STEPS_PER_CALL", 7)  # 20-step intervals: 7 + 7 + 6
    chunked_curve = run(chunked)
    assert chunked_curve == whole_curve
    assert all(net.layers[0].grad_norm for net in chunked_curve[-1].cells[LONE].nets.values())
    assert_same_nets(whole, chunked)


def test_sampled_and_test_accuracies_are_the_nets_own_on_the_uint8_images(splits: Splits) -> None:
    # The trainer converts validation and test images to floats once and measures in its lane
    # threads; a net must read them as the uint8 images served and tested are read.
    trainer = lone_trainer(ARCH, SHORT, splits)
    last = run(trainer)[-1].cells[LONE].nets
    tested = trainer.test_accuracies(splits.test)[LONE]
    for variant in STUDY_VARIANTS:
        net = stack_of_one(trainer, variant).eval()
        assert accuracy(net, splits.validation, "population") == [last[variant].val_accuracy]
        population = accuracy(net, splits.test, "population")[0]
        batch = accuracy(net, splits.test, "batch", SHORT.batch_size)[0]
        assert tested[variant] == (population, batch)


def test_another_seed_gives_another_curve(splits: Splits) -> None:
    other = TrainingSpec(**{**SHORT.__dict__, "seed": 1})
    assert run(lone_trainer(ARCH, SHORT, splits)) != run(lone_trainer(ARCH, other, splits))


def cancel_at(step: int, trainer: Trainer) -> Callable[[], bool]:
    """A should_cancel hook that says yes at the sample point of `step`."""
    return lambda: trainer.step == step


@pytest.mark.parametrize("spec", [SHORT, DIVERGING], ids=["both-training", "plain-diverged"])
def test_resumed_training_equals_uninterrupted_training(
    splits: Splits, tmp_path: Path, spec: TrainingSpec
) -> None:
    uninterrupted = lone_trainer(ARCH, spec, splits)
    full_curve = run(uninterrupted)

    interrupted = lone_trainer(ARCH, spec, splits)
    assert interrupted.run(lambda s: None, cancel_at(20, interrupted)) == "cancelled"
    save_state(tmp_path / "state.safetensors", *interrupted.state(LONE))

    resumed = lone_trainer(ARCH, spec, splits)
    assert resumed.restore({LONE: load_state(tmp_path / "state.safetensors")})
    resumed_curve = run(resumed)

    assert [s.step for s in resumed_curve] == [40, 60]
    assert resumed_curve == [s for s in full_curve if s.step > 20]
    assert resumed_curve[-1].cells[LONE].diverged_at == full_curve[-1].cells[LONE].diverged_at
    assert_same_nets(resumed, uninterrupted)


def test_a_diverging_net_is_reported_and_the_other_trains_on(splits: Splits) -> None:
    trainer = lone_trainer(ARCH, DIVERGING, splits)
    curve = run(trainer)

    assert trainer.step == DIVERGING.training_batches
    diverged_at = curve[-1].cells[LONE].diverged_at
    assert list(diverged_at) == ["plain"]
    assert 0 < diverged_at["plain"] <= 20
    after = [s for s in curve if s.step >= diverged_at["plain"]]
    assert [s.step for s in after] == [20, 40, 60]
    for sample in after:
        assert list(sample.cells[LONE].nets) == ["bn"]
        assert sample.cells[LONE].diverged_at == diverged_at
        assert math.isfinite(sample.cells[LONE].nets["bn"].train_loss)
        assert math.isfinite(sample.cells[LONE].nets["bn"].val_accuracy)
    assert all(torch.isfinite(t.float()).all() for t in trainer.net_state(LONE, "bn").values())


def test_training_finishes_when_every_net_diverges(splits: Splits) -> None:
    spec = TrainingSpec(**{**DIVERGING.__dict__, "learning_rate": 1e4})
    trainer = lone_trainer(ARCH, spec, splits)
    samples: list[Sample] = []

    assert trainer.run(samples.append) == "finished"
    assert set(samples[-1].cells[LONE].diverged_at) == {"plain", "bn"}
    assert samples[-1].step == spec.training_batches
    assert samples[-1].cells[LONE].nets == {}
    tensors, meta = trainer.state(LONE)  # both nets can still be saved, as they diverged
    assert meta["diverged_at"] == samples[-1].cells[LONE].diverged_at
    assert {"plain/weight.0", "bn/weight.0", "bn/bn.0.running_var"} <= set(tensors)


def test_cancel_hook_stops_training_at_a_sample_point(splits: Splits) -> None:
    trainer = lone_trainer(ARCH, SHORT, splits)
    samples: list[Sample] = []
    end = trainer.run(samples.append, should_cancel=lambda: trainer.step >= 20)
    assert end == "cancelled"
    assert trainer.step == 20 < SHORT.training_batches
    assert [s.step for s in samples] == [0, 20]


def test_curve_starts_with_untrained_accuracy_and_no_loss(splits: Splits) -> None:
    trainer = lone_trainer(ARCH, SHORT, splits)
    first, *rest = run(trainer)
    assert first.step == 0
    nets = first.cells[LONE].nets
    assert nets["plain"].val_accuracy == nets["bn"].val_accuracy  # same weights
    assert all(net.train_loss is None for net in nets.values())
    assert all(net.train_loss is not None for s in rest for net in s.cells[LONE].nets.values())
