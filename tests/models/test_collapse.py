"""The study's last experiment: one image at a time, batch statistics collapse every prediction to
one class; the collapse fades as the inference batch grows."""

import torch

from bnlab.models.collapse import batch_size_effect, batch_sizes, one_at_a_time
from bnlab.models.data import Splits
from bnlab.models.inference import accuracy, logits
from bnlab.models.trainer import Trainer
from tests.models.conftest import stack_of_one

N_IMAGES = 100


def test_one_at_a_time_batch_statistics_give_every_image_the_same_class(
    trained_pair: Trainer, splits: Splits
) -> None:
    stack = stack_of_one(trained_pair, "bn")
    images, labels = splits.test.images[:N_IMAGES], splits.test.labels[:N_IMAGES]
    [batch] = one_at_a_time(stack, images, "batch").tolist()
    [population] = one_at_a_time(stack, images, "population")
    assert len(set(batch)) == 1
    assert (population == labels).double().mean() >= 0.9
    # one at a time or all at once, population statistics answer alike
    assert population.tolist() == logits(stack, images, "population")[0].argmax(dim=1).tolist()


def test_batch_sizes_double_up_to_1024_or_the_images_there_are() -> None:
    assert batch_sizes(10_000) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert batch_sizes(300) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert batch_sizes(1) == [1]


def test_accuracy_climbs_from_chance_to_population_as_the_batch_grows(
    trained_pair: Trainer, splits: Splits
) -> None:
    stack = stack_of_one(trained_pair, "bn")
    sizes = batch_sizes(len(splits.test))
    effect = [net_accuracy for [net_accuracy] in batch_size_effect(stack, splits.test, sizes)]
    [population] = accuracy(stack, splits.test, "population")
    # batch of one: one class for every image, right only for the images of that class
    one_class = torch.bincount(splits.test.labels).max().item() / len(splits.test)
    assert effect[0] <= one_class
    assert effect[-1] >= population - 0.05
    assert effect[-1] - effect[0] > 0.5
