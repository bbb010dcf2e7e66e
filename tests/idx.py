"""A small learnable stand-in for MNIST, written as real IDX files so torchvision's loader runs.

Each class is a bright blob at its own place on a ring around the centre, jittered a little,
with a short stroke through it and dim noise everywhere: white on black, 28x28, uint8, like MNIST.
An MLP separates the classes in a few hundred batches, with or without BN.
"""

import math
import struct
from pathlib import Path

import torch

SIDE = 28
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def make_images(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 images (N, 28, 28) whose structure depends on their labels."""
    n = len(labels)
    angle = labels.double() * (2 * math.pi / 10)
    jitter = (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5) * 4
    centre_y = SIDE / 2 + 8 * torch.sin(angle) + jitter[:, 0]
    centre_x = SIDE / 2 + 8 * torch.cos(angle) + jitter[:, 1]
    ys = torch.arange(SIDE, dtype=torch.float64).view(1, SIDE, 1)
    xs = torch.arange(SIDE, dtype=torch.float64).view(1, 1, SIDE)
    dy, dx = ys - centre_y.view(n, 1, 1), xs - centre_x.view(n, 1, 1)
    blob = torch.exp(-(dy**2 + dx**2) / (2 * 2.5**2))
    # a stroke from the blob towards the centre, so classes differ in shape as well as place
    along = -(dy * torch.sin(angle).view(n, 1, 1) + dx * torch.cos(angle).view(n, 1, 1))
    across = dy * torch.cos(angle).view(n, 1, 1) - dx * torch.sin(angle).view(n, 1, 1)
    stroke = ((along > 0) & (along < 7) & (across.abs() < 1.0)).double() * 0.8
    brightness = 0.7 + 0.3 * torch.rand(n, 1, 1, generator=generator, dtype=torch.float64)
    noise = torch.rand(n, SIDE, SIDE, generator=generator, dtype=torch.float64) * 0.15
    pixels = (torch.maximum(blob, stroke) * brightness + noise).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8)


def write_images(path: Path, images: torch.Tensor) -> None:
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, rows, cols) + images.numpy().tobytes())


def write_labels(path: Path, labels: torch.Tensor) -> None:
    path.write_bytes(
        struct.pack(">II", 2049, len(labels)) + labels.to(torch.uint8).numpy().tobytes()
    )


def write_idx_dataset(
    root: Path, n_train: int = 1200, n_test: int = 300, seed: int = 0, name: str = "MNIST"
) -> Path:
    """Write `<root>/<name>/raw/` as torchvision's MNIST (or FashionMNIST) expects it; returns
    `root`, the data directory to hand to `load_splits`."""
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = torch.randint(0, 10, (n,), generator=generator)
        images_file, labels_file = FILES[split]
        write_images(raw / images_file, make_images(labels, generator))
        write_labels(raw / labels_file, labels)
    return Path(root)
