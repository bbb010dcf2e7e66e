"""What the inside view (bnlab/models/probes.py) costs training: the paired trainer with the
per-layer statistics at every sample point, against the same trainer with them switched off,
runs alternating in one process; and one sample point's probe against its validation pass.

    python bench/probes.py --data-dir /tmp/fdata                    # 2,000 steps, sampled every 500
    python bench/probes.py --data-dir /tmp/fdata --sample-every 50  # sampling 10x as often

The data dir must hold FashionMNIST/raw (see bench/engine.py).
"""

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from bnlab.models import trainer as trainer_module
from bnlab.models.data import Splits, load_splits
from bnlab.models.inference import accuracy
from bnlab.models.network import Architecture, NetStack, initial_weights
from bnlab.models.probes import PROBE_SIZE, layer_stats
from bnlab.models.trainer import Cell, TrainingSpec, build_trainer


@contextmanager
def probes_off() -> Iterator[None]:
    """The trainer as it was before the probes: no layer statistics, no gradient norms."""
    stats, norms = trainer_module.layer_stats, trainer_module.weight_grad_norms
    trainer_module.layer_stats = lambda stack, images: [[] for _ in range(stack.size)]  # type: ignore[assignment]
    trainer_module.weight_grad_norms = lambda stack, rates: None  # type: ignore[assignment]
    try:
        yield
    finally:
        trainer_module.layer_stats, trainer_module.weight_grad_norms = stats, norms


def paired_seconds(splits: Splits, spec: TrainingSpec) -> float:
    trainer = build_trainer(
        Architecture(), [Cell("pair", spec)], splits, torch.device("cpu"), "torch"
    )
    start = time.perf_counter()
    trainer.run(lambda sample: None)
    return time.perf_counter() - start


def sample_point_ms(splits: Splits, repeats: int = 20) -> tuple[float, float]:
    """Median milliseconds of one net's probe (layer_stats on 256 images) and of its
    validation accuracy pass, the work a sample point did before."""
    stack = NetStack(Architecture(), "bn", [initial_weights(Architecture(), 0.05, 0)]).eval()
    probe = splits.validation.images[:PROBE_SIZE]
    probe_times, validation_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        layer_stats(stack, probe)
        probe_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        accuracy(stack, splits.validation, "population")
        validation_times.append(time.perf_counter() - start)
    return statistics.median(probe_times) * 1e3, statistics.median(validation_times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    splits = load_splits(args.dataset, args.data_dir, download=False)
    spec = TrainingSpec(training_batches=args.steps, batches_per_sample=args.sample_every)

    paired_seconds(splits, TrainingSpec(training_batches=100, batches_per_sample=50))  # warm-up
    with_probes, without = [], []
    for _ in range(args.repeats):
        with_probes.append(paired_seconds(splits, spec))
        with probes_off():
            without.append(paired_seconds(splits, spec))
    # The fastest run of each: on a shared machine, other processes only ever add time.
    on, off = min(with_probes), min(without)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.steps} steps sampled every {args.sample_every}, best of {args.repeats} runs:")
    print(f"  with probes:    {args.steps / on:7.0f} pair steps/s")
    print(f"  without probes: {args.steps / off:7.0f} pair steps/s")
    print(f"  time with / without: {on / off:.3f}x")
    probe_ms, validation_ms = sample_point_ms(splits)
    print(
        f"one net's probe: {probe_ms:.1f} ms; its validation pass "
        f"({len(splits.validation)} images): {validation_ms:.1f} ms"
    )
    interval_ms = args.sample_every / (args.steps / off) * 1e3
    print(
        f"probe / training time of a sample interval ({args.sample_every} steps, "
        f"{interval_ms:.0f} ms): {probe_ms / interval_ms:.2%}"
    )


if __name__ == "__main__":
    main()
