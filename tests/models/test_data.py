"""The study's data: IDX files read through torchvision, split as the study splits them, and
drawn in a reproducible order of mini-batches."""

import gzip
import struct
from pathlib import Path

import pytest
import torch

from bnlab.models.data import BatchOrder, DataUnavailable, Splits, load_splits, to_inputs
from tests.idx import FILES, write_idx_dataset
from tests.models.conftest import CPU, VALIDATION_SIZE


def read_idx(path: Path) -> torch.Tensor:
    """The file's contents, parsed here independently of torchvision."""
    data = path.read_bytes()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).view(n, rows, cols)
    assert magic == 2049
    return torch.frombuffer(bytearray(data[8:]), dtype=torch.uint8).long()


def test_last_training_images_are_the_validation_split(idx_data_dir: Path, splits: Splits) -> None:
    raw = idx_data_dir / "MNIST" / "raw"
    images, labels = (read_idx(raw / name) for name in FILES["train"])
    cut = len(labels) - VALIDATION_SIZE
    assert torch.equal(splits.train.images, images[:cut])
    assert torch.equal(splits.train.labels, labels[:cut])
    assert torch.equal(splits.validation.images, images[cut:])
    assert torch.equal(splits.validation.labels, labels[cut:])
    test_images, test_labels = (read_idx(raw / name) for name in FILES["test"])
    assert torch.equal(splits.test.images, test_images)
    assert torch.equal(splits.test.labels, test_labels)


def test_splits_have_the_sizes_asked_for(splits: Splits) -> None:
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (1000, 200, 300)
    assert splits.train.images.dtype == torch.uint8
    assert splits.train.images.shape[1:] == (28, 28)


def test_validation_size_must_leave_training_images(idx_data_dir: Path) -> None:
    with pytest.raises(ValueError, match="validation_size"):
        load_splits("mnist", idx_data_dir, download=False, validation_size=1200)


def test_pixels_are_scaled_to_zero_one() -> None:
    images = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    inputs = to_inputs(images)
    assert inputs.dtype == torch.float32
    torch.testing.assert_close(inputs, torch.tensor([[0.0, 0.2, 1.0]]))
    assert images.tolist() == [[0, 51, 255]]  # the uint8 images are left as they were


def test_a_split_as_inputs_holds_the_floats_each_batch_would_get(splits: Splits) -> None:
    floats = splits.validation.as_inputs()
    assert floats.labels is splits.validation.labels
    for chunk in (slice(0, 60), slice(60, 199), slice(199, None)):
        assert torch.equal(floats.images[chunk], to_inputs(splits.validation.images[chunk]))
    # asked again (a trainer handed a converted split), the floats are not scaled a second time
    assert torch.equal(floats.as_inputs().images, floats.images)


def test_loading_twice_does_not_read_the_files_again(idx_data_dir: Path, splits: Splits) -> None:
    again = load_splits("mnist", idx_data_dir, download=False, validation_size=VALIDATION_SIZE)
    assert again.train.images.data_ptr() == splits.train.images.data_ptr()
    assert again.test.images.data_ptr() == splits.test.images.data_ptr()


def test_gzipped_only_raw_folder_is_extracted_and_loads(tmp_path: Path, splits: Splits) -> None:
    raw = write_idx_dataset(tmp_path) / "MNIST" / "raw"
    for file in list(raw.iterdir()):
        (raw / f"{file.name}.gz").write_bytes(gzip.compress(file.read_bytes()))
        file.unlink()
    loaded = load_splits("mnist", tmp_path, download=False, validation_size=VALIDATION_SIZE)
    assert torch.equal(loaded.train.images, splits.train.images)
    assert torch.equal(loaded.test.labels, splits.test.labels)


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_missing_data_names_the_folder_and_the_files_expected(
    tmp_path: Path, dataset: str, folder: str
) -> None:
    with pytest.raises(DataUnavailable) as raised:
        load_splits(dataset, tmp_path, download=False)
    message = str(raised.value)
    assert str(tmp_path / folder / "raw") in message
    for name in [*FILES["train"], *FILES["test"]]:
        assert name in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_fashion_mnist_loads_from_its_own_folder(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, n_train=100, n_test=50, name="FashionMNIST")
    loaded = load_splits("fashion-mnist", tmp_path, download=False, validation_size=20)
    assert (len(loaded.train), len(loaded.validation), len(loaded.test)) == (80, 20, 50)


def batches(order: BatchOrder, steps: range) -> list[list[int]]:
    return [order.indices(step).tolist() for step in steps]


def positions(order: BatchOrder, steps: range) -> list[int]:
    """The images of consecutive batches, one after another."""
    return torch.cat([order.indices(step) for step in steps]).tolist()


def test_batch_order_is_the_same_for_the_same_seed() -> None:
    first, again = BatchOrder(100, 10, seed=5, device=CPU), BatchOrder(100, 10, seed=5, device=CPU)
    other = BatchOrder(100, 10, seed=6, device=CPU)
    assert batches(first, range(30)) == batches(again, range(30))
    assert batches(first, range(30)) != batches(other, range(30))


def test_batches_cover_each_epoch_exactly_once() -> None:
    order = BatchOrder(100, 10, seed=0, device=CPU)
    epochs = [positions(order, range(e * 10, (e + 1) * 10)) for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(100))
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_batches_straddling_epochs_still_cover_each_epoch_once() -> None:
    order = BatchOrder(25, 10, seed=0, device=CPU)
    stream = positions(order, range(5))  # 50 positions: exactly two epochs
    assert sorted(stream[:25]) == list(range(25))
    assert sorted(stream[25:]) == list(range(25))


def test_a_steps_batch_depends_only_on_seed_and_step() -> None:
    walked = BatchOrder(100, 10, seed=3, device=CPU)
    walked_batches = batches(walked, range(40))
    for step in (37, 5, 12, 0):
        fresh = BatchOrder(100, 10, seed=3, device=CPU)
        assert fresh.indices(step).tolist() == walked_batches[step]
        assert walked.indices(step).tolist() == walked_batches[step]  # asked again, later


def test_batch_larger_than_the_training_set_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        BatchOrder(50, 60, seed=0, device=CPU)
