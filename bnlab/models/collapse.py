"""The study's last experiment, and where it ends.

One image at a time, BN on batch statistics normalizes each image by its own mean and variance:
every BN output is beta, and every image gets the same class. The collapse is about batch size,
not about batch statistics as such: evaluated in large batches, batch statistics do almost as
well as population ones. `batch_size_effect` traces the accuracy in between.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from bnlab.models.data import Split
from bnlab.models.inference import accuracy, logits
from bnlab.models.network import Stack
from bnlab.vocabulary import Mode

LARGEST_BATCH = 1024


@torch.no_grad()
def one_at_a_time(stack: Stack, images: Tensor, mode: Mode) -> Tensor:
    """Classes (net, image), each image classified alone, as a batch of one."""
    guesses = [logits(stack, images[i : i + 1], mode).argmax(dim=2) for i in range(len(images))]
    return torch.cat(guesses, dim=1)


def batch_sizes(n_images: int, largest: int = LARGEST_BATCH) -> list[int]:
    """1, 2, 4, ... up to `largest` or the number of images, whichever is smaller."""
    sizes = [1]
    while sizes[-1] * 2 <= min(largest, n_images):
        sizes.append(sizes[-1] * 2)
    return sizes


def batch_size_effect(stack: Stack, split: Split, sizes: Sequence[int]) -> list[list[float]]:
    """Per batch size, each net's accuracy on the split with BN on the statistics of its batch
    (consecutive batches of that size; the last one holds what is left)."""
    return [accuracy(stack, split, "batch", batch_size=size) for size in sizes]
