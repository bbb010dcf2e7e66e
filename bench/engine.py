"""A lone experiment's trainer (its plain and bn pair) against the loop a user would write.

The baseline: `nn.Sequential`, `torch.optim.SGD`, a random index per batch, the data as one
float tensor; one net at a time. Prints per-net throughput ratios (with and without BN), the
ratio for a whole paired experiment against the two baseline nets run one after the other, and
the process's peak resident memory.

    python bench/engine.py --data-dir /tmp/fdata --steps 5000            # quick
    python bench/engine.py --data-dir /tmp/fdata --steps 50000 --sample-every 500   # the study
    python bench/engine.py --data-dir /tmp/fdata --device cuda     # on a GPU (CUDA graphs)

The data dir must hold FashionMNIST/raw (Debian: apt install dataset-fashion-mnist, then copy
/usr/share/datasets/fashion-mnist/* into <data-dir>/FashionMNIST/raw/).
"""

import argparse
import resource
import time
from itertools import pairwise
from pathlib import Path

import torch
from torch import nn

from bnlab.models.batchnorm import BNImpl
from bnlab.models.data import Splits, load_splits, to_inputs
from bnlab.models.network import Architecture
from bnlab.models.trainer import Cell, Lane, TrainingSpec, build_trainer

CPU = torch.device("cpu")


def plain_loop(
    splits: Splits, with_bn: bool, spec: TrainingSpec, device: torch.device = CPU
) -> float:
    """Seconds for `spec.training_batches` steps of the obvious loop, sampling accuracy as the
    trainer does, so both do the same work."""
    torch.manual_seed(spec.seed)
    layers: list[nn.Module] = []
    widths = [784, 100, 100, 100]
    for n_in, n_out in pairwise(widths):
        layers.append(nn.Linear(n_in, n_out, bias=not with_bn))
        if with_bn:
            layers.append(nn.BatchNorm1d(n_out, eps=1e-3, momentum=0.01))
        layers.append(nn.ReLU())
    return timed_loop(nn.Sequential(*layers, nn.Linear(100, 10)), splits, spec, device)


def timed_loop(
    net: nn.Module, splits: Splits, spec: TrainingSpec, device: torch.device = CPU
) -> float:
    """Seconds for the plain SGD loop a user writes around `net` (any torch MLP on flat images)."""
    net = net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=spec.learning_rate)
    images = to_inputs(splits.train.images).flatten(1).to(device)
    labels = splits.train.labels.to(device)
    val_images = to_inputs(splits.validation.images).flatten(1).to(device)
    val_labels = splits.validation.labels.to(device)
    synchronize(device)
    start = time.perf_counter()
    for step in range(spec.training_batches):
        index = torch.randint(len(labels), (spec.batch_size,), device=device)
        loss = nn.functional.cross_entropy(net(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % spec.batches_per_sample == 0:
            net.eval()
            with torch.no_grad():
                (net(val_images).argmax(1) == val_labels).float().mean().item()
            net.train()
    synchronize(device)
    return time.perf_counter() - start


def paired(
    splits: Splits, spec: TrainingSpec, bn_impl: BNImpl, device: torch.device = CPU
) -> float:
    trainer = build_trainer(Architecture(), [Cell("pair", spec)], splits, device, bn_impl)
    synchronize(device)
    start = time.perf_counter()
    trainer.run(lambda sample: None)
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--bn-impl", default="bnlab", choices=["bnlab", "torch"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    splits = load_splits(args.dataset, args.data_dir, download=False)
    spec = TrainingSpec(training_batches=args.steps, batches_per_sample=args.sample_every)

    plain_loop(splits, False, TrainingSpec(training_batches=200), device)  # warm-up
    paired(splits, TrainingSpec(training_batches=200), args.bn_impl, device)
    base_plain = plain_loop(splits, False, spec, device)
    base_bn = plain_loop(splits, True, spec, device)
    pair = paired(splits, spec, args.bn_impl, device)
    rate = args.steps / pair
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads")
    print(f"{args.steps} steps, sampled every {args.sample_every}")
    print(f"baseline plain net: {args.steps / base_plain:8.0f} steps/s")
    print(f"baseline bn net:    {args.steps / base_bn:8.0f} steps/s")
    print(f"paired trainer:     {rate:8.0f} pair steps/s ({args.bn_impl} BN)")
    print(f"per-net throughput vs plain loop, without BN: {rate * base_plain / args.steps:.2f}x")
    print(f"per-net throughput vs plain loop, with BN:    {rate * base_bn / args.steps:.2f}x")
    print(
        f"paired experiment / (plain + bn loops run one after the other): "
        f"{pair / (base_plain + base_bn):.2f}x"
    )
    if device.type == "cuda":  # what capturing the step as a CUDA graph buys
        Lane.cuda_graphs = False
        eager = paired(splits, spec, args.bn_impl, device)
        Lane.cuda_graphs = True
        print(f"paired trainer, CUDA graphs off: {args.steps / eager:8.0f} pair steps/s")
        print(f"paired experiment with / without CUDA graphs: {pair / eager:.2f}x")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
