"""The study's data: MNIST or Fashion-MNIST through torchvision, split as the study splits it.

The last `validation_size` training images are held out for the accuracy curve; the 10,000 test
images give the final accuracy. Images stay uint8 in memory and become floats in [0, 1] only
when a batch is drawn, exactly as at inference (`to_inputs`); a trainer keeps the validation
images as floats, converted once (`Split.as_inputs`).
"""

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor
from torchvision import datasets
from torchvision.datasets.utils import extract_archive

from bnlab.vocabulary import Dataset

LOADERS: dict[Dataset, type[datasets.MNIST]] = {
    "mnist": datasets.MNIST,
    "fashion-mnist": datasets.FashionMNIST,
}


class DataUnavailable(Exception):
    """The dataset's files are not in the data directory and could not be downloaded."""


@dataclass(frozen=True)
class Split:
    images: Tensor  # uint8, (N, 28, 28); or `as_inputs`' floats
    labels: Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def as_inputs(self) -> "Split":
        """The split with its images already the floats nets take (`to_inputs`), for one that
        is read many times: the validation images, at every sample point of every net. A split
        whose images are floats already is returned as it is."""
        if self.images.is_floating_point():
            return self
        return Split(to_inputs(self.images), self.labels)


@dataclass(frozen=True)
class Splits:
    train: Split
    validation: Split
    test: Split


def to_inputs(images: Tensor) -> Tensor:
    """uint8 pixels to the floats in [0, 1] every net takes, training and serving alike."""
    return images.float().div_(255)


def load_splits(
    dataset: Dataset, data_dir: Path, download: bool, validation_size: int = 5000
) -> Splits:
    """The study's three splits. The files are read once per process; splits are views."""
    train, test = _read(dataset, str(Path(data_dir).absolute()), download)
    if not 0 < validation_size < len(train):
        raise ValueError(f"validation_size must be between 1 and {len(train) - 1}")
    cut = len(train) - validation_size
    return Splits(
        train=Split(train.images[:cut], train.labels[:cut]),
        validation=Split(train.images[cut:], train.labels[cut:]),
        test=test,
    )


@lru_cache(maxsize=4)
def _read(dataset: Dataset, data_dir: str, download: bool) -> tuple[Split, Split]:
    cls = LOADERS[dataset]
    raw_folder = Path(data_dir) / cls.__name__ / "raw"
    expected = [os.path.basename(url).removesuffix(".gz") for url, _ in cls.resources]
    _extract_archives(raw_folder, expected)
    missing = [name for name in expected if not (raw_folder / name).exists()]
    try:
        if missing and not download:
            raise RuntimeError("downloading is off (BNLAB_DOWNLOAD=false)")
        splits = [cls(data_dir, train=train, download=download) for train in (True, False)]
    except Exception as error:  # torchvision raises bare RuntimeErrors and URLErrors
        raise DataUnavailable(
            f"{dataset} is not available in {raw_folder}: expected the IDX files "
            f"{', '.join(expected)} (or the same with .gz); could not download them: {error}"
        ) from None
    return tuple(Split(s.data, s.targets) for s in splits)  # type: ignore[return-value]


def _extract_archives(raw_folder: Path, expected: list[str]) -> None:
    # Offline copies often come gzipped (Debian's dataset-fashion-mnist does); torchvision only
    # reads the extracted files.
    for name in expected:
        archive = raw_folder / f"{name}.gz"
        if archive.exists() and not (raw_folder / name).exists():
            extract_archive(str(archive), str(raw_folder))


class BatchOrder:
    """The reproducible sequence of mini-batches: batch k is positions [kB, (k+1)B) of an endless
    stream of shuffled epochs, epoch e shuffled by a generator seeded from (seed, e). A batch thus
    depends only on the seed and its step, so resuming needs nothing but the step.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} training images")
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, device
        self._epochs: dict[int, Tensor] = {}

    def indices(self, step: int) -> Tensor:
        start = step * self.batch_size
        epoch, offset = divmod(start, self.n)
        end = offset + self.batch_size
        if end <= self.n:
            return self._epoch(epoch)[offset:end]
        return torch.cat([self._epoch(epoch)[offset:], self._epoch(epoch + 1)[: end - self.n]])

    def _epoch(self, epoch: int) -> Tensor:
        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epochs = {e: p for e, p in self._epochs.items() if e >= epoch - 1}
            perm = torch.randperm(self.n, generator=generator)
            self._epochs[epoch] = perm.to(self.device)
        return self._epochs[epoch]
