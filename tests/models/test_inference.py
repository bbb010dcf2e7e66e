"""Serving in BN's modes: the single-image collapse in `batch` mode, and `fused` == `population`."""

import pytest
import torch

from bnlab.models.batchnorm import BNImpl
from bnlab.models.data import Splits
from bnlab.models.inference import ServedNet, accuracy, logits
from bnlab.models.network import Architecture
from bnlab.models.trainer import Trainer, TrainingSpec
from bnlab.vocabulary import MODES
from tests.models.conftest import lone_trainer, stack_of_one

N_IMAGES = 50
CONV = Architecture(conv_channels=(4, 8), hidden_layers=(32,))


def one_at_a_time(served: ServedNet, images: torch.Tensor, mode: str) -> list[int]:
    return [served.predict(image[None], mode).classes[0] for image in images]


@pytest.mark.parametrize("bn_impl", ["bnlab", "torch"])
def test_bn_net_predicts_one_class_for_every_single_image_in_batch_mode(
    trained_pair: Trainer, splits: Splits, bn_impl: BNImpl
) -> None:
    served = ServedNet(stack_of_one(trained_pair, "bn", bn_impl=bn_impl))
    predictions = one_at_a_time(served, splits.test.images[:N_IMAGES], "batch")
    assert len(set(predictions)) == 1


def test_bn_net_predicts_single_images_well_in_population_mode(
    trained_pair: Trainer, splits: Splits
) -> None:
    served = ServedNet(stack_of_one(trained_pair, "bn"))
    predictions = torch.tensor(one_at_a_time(served, splits.test.images[:N_IMAGES], "population"))
    assert len(set(predictions.tolist())) > 5
    assert (predictions == splits.test.labels[:N_IMAGES]).double().mean() >= 0.9


def test_plain_net_ignores_the_mode(trained_pair: Trainer, splits: Splits) -> None:
    served = ServedNet(stack_of_one(trained_pair, "plain"))
    images = splits.test.images[:N_IMAGES]
    by_mode = {mode: served.predict(images, mode) for mode in MODES}
    assert all(not p.mode_applies for p in by_mode.values())
    for mode in MODES:
        assert by_mode[mode].classes == by_mode["population"].classes
        assert by_mode[mode].probabilities == by_mode["population"].probabilities
    assert one_at_a_time(served, images, "batch") == by_mode["population"].classes


def test_bn_net_says_the_mode_applies(trained_pair: Trainer, splits: Splits) -> None:
    served = ServedNet(stack_of_one(trained_pair, "bn"))
    assert all(served.predict(splits.test.images[:2], m).mode_applies for m in MODES)


def test_batch_mode_on_large_batches_is_about_as_accurate_as_population_mode(
    trained_pair: Trainer, splits: Splits
) -> None:
    stack = stack_of_one(trained_pair, "bn")
    [population] = accuracy(stack, splits.test, "population")
    [large_batches] = accuracy(stack, splits.test, "batch", batch_size=1000)
    [single_images] = accuracy(stack, splits.test, "batch", batch_size=1)
    assert population >= 0.9
    assert abs(large_batches - population) <= 0.05
    assert single_images <= 0.2  # the collapse is about batch size


def test_fused_mlp_equals_population_mode(trained_pair: Trainer, splits: Splits) -> None:
    served = ServedNet(stack_of_one(trained_pair, "bn"))
    images = splits.test.images[:N_IMAGES]
    fused, population = served.predict(images, "fused"), served.predict(images, "population")
    # Folding BN into a layer regroups one multiply-add per weight: a pre-activation of K = 100
    # terms rounds by ~sqrt(K) * 1.2e-7 relative, ~1e-6 of values < 10: logits agree to 1e-5.
    torch.testing.assert_close(
        torch.tensor(fused.probabilities), torch.tensor(population.probabilities), atol=1e-5, rtol=0
    )
    assert fused.classes == population.classes
    torch.testing.assert_close(
        logits(served.stack, images, "fused"),
        logits(served.stack, images, "population"),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.fixture(scope="module")
def trained_conv_pair(splits: Splits) -> Trainer:
    spec = TrainingSpec(learning_rate=0.3, training_batches=50, batches_per_sample=50)
    trainer = lone_trainer(CONV, spec, splits)
    trainer.run(lambda sample: None)
    return trainer


def test_fused_conv_net_equals_population_mode(trained_conv_pair: Trainer, splits: Splits) -> None:
    stack = stack_of_one(trained_conv_pair, "bn", CONV)
    images = splits.test.images[:N_IMAGES]
    fused, population = logits(stack, images, "fused"), logits(stack, images, "population")
    # as for the MLP: a regrouped multiply-add per weight, ~sqrt(K) float32 epsilons of values
    # < 10 (K = 25 per kernel, 784 into the linear layer)
    torch.testing.assert_close(fused, population, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.softmax(dim=2), population.softmax(dim=2), atol=1e-5, rtol=0)
    # BN shifted the maps by more than rounding, so a fold that forgot it would show
    assert not torch.allclose(logits(stack, images, "batch"), population, atol=1e-3)
