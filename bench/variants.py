"""The variants (issue 11) against the loops a user would write for them.

Per variant: its lane in bnlab's trainer (one cell, that variant alone) against `nn.Sequential`
with torch's module for it (`nn.BatchNorm1d` after `nn.ReLU`, `nn.LayerNorm`, `nn.GroupNorm`;
bn_noisy's noise drawn per step), `torch.optim.SGD` and a random index per batch, same shapes,
steps and sampling. Then issue 11's five MLP variants (all but bn_noisy) in one trainer (a lane
per variant, sharing the cores) against their five loops run one after the other, and all six
likewise. Fashion-MNIST, the study's 784-100-100-100-10 ReLU MLP. Each figure is the fastest of
`--repeats` runs, the loop and the lane taking turns, so that a busy machine's worst moments
count against neither.

    python bench/variants.py --data-dir /tmp/fdata --steps 3000

The data dir must hold FashionMNIST/raw (see bench/engine.py).
"""

import argparse
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import torch
from engine import timed_loop  # bench/engine.py: this script runs from bench/
from torch import Tensor, nn

from bnlab.models.batchnorm import EPSILON, MOMENTUM
from bnlab.models.data import Splits, load_splits
from bnlab.models.network import NOISE_MEAN, NOISE_STD, Architecture
from bnlab.models.trainer import Cell, TrainingSpec, build_trainer
from bnlab.vocabulary import VARIANTS, Variant

CPU = torch.device("cpu")
ARCH = Architecture()
ISSUE_11: tuple[Variant, ...] = tuple(v for v in VARIANTS if v != "bn_noisy")


class Noise(nn.Module):
    """bn_noisy's noise as a user would add it in training: per unit a mean in
    U(-NOISE_MEAN, NOISE_MEAN) and a std in U(1, NOISE_STD), drawn each step, then i.i.d.
    normal noise of them on every value."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        mean = (torch.rand(x.shape[1]) * 2 - 1) * NOISE_MEAN
        std = 1 + torch.rand(x.shape[1]) * (NOISE_STD - 1)
        return x + mean + std * torch.randn_like(x)


def hidden_layer(variant: Variant, n_in: int, n_out: int) -> list[nn.Module]:
    """One hidden layer as a user would write it with torch's modules."""
    linear = nn.Linear(n_in, n_out, bias=variant in ("plain", "bn_after"))
    bn = nn.BatchNorm1d(n_out, eps=EPSILON, momentum=MOMENTUM)
    if variant == "plain":
        return [linear, nn.ReLU()]
    if variant == "bn":
        return [linear, bn, nn.ReLU()]
    if variant == "bn_noisy":
        return [linear, bn, Noise(), nn.ReLU()]
    if variant == "bn_after":
        return [linear, nn.ReLU(), bn]
    if variant == "layer_norm":
        return [linear, nn.LayerNorm(n_out, eps=EPSILON), nn.ReLU()]
    return [linear, nn.GroupNorm(ARCH.norm_groups(), n_out, eps=EPSILON), nn.ReLU()]


def user_loop(splits: Splits, variant: Variant, spec: TrainingSpec) -> float:
    """Seconds for the obvious loop of one net, sampling validation accuracy as the trainer."""
    torch.manual_seed(spec.seed)
    widths = [784, *ARCH.hidden_layers]
    layers = [m for n_in, n_out in pairwise(widths) for m in hidden_layer(variant, n_in, n_out)]
    return timed_loop(nn.Sequential(*layers, nn.Linear(widths[-1], 10)), splits, spec)


def trainer_run(
    splits: Splits, variants: Sequence[Variant], spec: TrainingSpec
) -> tuple[float, float]:
    """Seconds of wall time and of CPU time (all threads) for a trainer of `variants`."""
    trainer = build_trainer(ARCH, [Cell("cell", spec)], splits, CPU, "torch", variants)
    start, start_cpu = time.perf_counter(), time.process_time()
    trainer.run(lambda sample: None)
    return time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch's intra-op threads (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_splits(args.dataset, args.data_dir, download=False)
    spec = TrainingSpec(training_batches=args.steps, batches_per_sample=args.sample_every)
    warm_up = TrainingSpec(training_batches=100, batches_per_sample=100)
    for variant in VARIANTS:
        user_loop(splits, variant, warm_up)
        trainer_run(splits, [variant], warm_up)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps")
    loops: dict[Variant, float] = {}
    lane_cpu: dict[Variant, float] = {}
    for variant in VARIANTS:
        loops[variant], lane, lane_cpu[variant] = float("inf"), float("inf"), float("inf")
        for _ in range(args.repeats):
            loops[variant] = min(loops[variant], user_loop(splits, variant, spec))
            wall, cpu = trainer_run(splits, [variant], spec)
            lane, lane_cpu[variant] = min(lane, wall), min(lane_cpu[variant], cpu)
        print(
            f"{variant:>10}: user loop {args.steps / loops[variant]:6.0f} steps/s, "
            f"bnlab lane {args.steps / lane:6.0f} steps/s: {loops[variant] / lane:.2f}x"
        )
    # CPU seconds too: on a machine others load, what the lanes in parallel would need of a
    # quiet one's cores
    for variants in (ISSUE_11, VARIANTS):
        wall, cpu = min(trainer_run(splits, variants, spec) for _ in range(args.repeats))
        one_after_another = sum(loops[variant] for variant in variants)
        print(
            f"all {len(variants)} ({', '.join(variants)}) in one trainer: {wall:.1f} s "
            f"(CPU {cpu:.1f} s; the lanes alone {sum(lane_cpu[v] for v in variants):.1f} s); "
            f"their user loops one after the other: {one_after_another:.1f} s: "
            f"{wall / one_after_another:.2f}x"
        )


if __name__ == "__main__":
    main()
