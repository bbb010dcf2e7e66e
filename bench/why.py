"""What issue 12's measurements (bnlab/models/why.py) cost an experiment: the study's pair trained
with every probe at the default cadence (every 5th sample point) against the same trainer with
probes off, runs alternating in one process; and each probe's cost at one sample point, per net.

    python bench/why.py --data-dir /tmp/fdata                        # 5,000 steps, every 500
    python bench/why.py --data-dir /tmp/fdata --steps 2500 --repeats 1

The data dir must hold FashionMNIST/raw (see bench/engine.py). The share for a whole study run
(50,000 steps: 101 sample points, probes at 21) is extrapolated from the per-point cost.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from bnlab.models.data import BatchOrder, Splits, load_splits
from bnlab.models.network import Architecture, NetStack, initial_weights
from bnlab.models.trainer import Cell, Sample, TrainingSpec, build_trainer
from bnlab.models.why import Batch, Probes, measure

ALL = Probes(landscape=True, ics=True, sharpness=True)  # every 5th sample point
EACH = {
    "landscape": Probes(landscape=True),
    "ics": Probes(ics=True),
    "sharpness": Probes(sharpness=True),
}
CPU = torch.device("cpu")


def experiment_seconds(
    splits: Splits, spec: TrainingSpec, probes: Probes
) -> tuple[float, dict[bool, list[float]]]:
    """Seconds for the experiment, and each sample interval's seconds (training to the sample
    point and sampling it) by whether probes ran at its end."""
    trainer = build_trainer(
        Architecture(), [Cell("pair", spec)], splits, CPU, "torch", probes=probes
    )
    intervals: dict[bool, list[float]] = {True: [], False: []}
    last = start = time.perf_counter()

    def on_sample(sample: Sample) -> None:
        nonlocal last
        now = time.perf_counter()
        if sample.step > 0:
            intervals[probes.due(sample.step, spec.batches_per_sample)].append(now - last)
        last = now

    trainer.run(on_sample)
    return time.perf_counter() - start, intervals


def probe_ms(splits: Splits, spec: TrainingSpec, repeats: int) -> dict[str, dict[str, float]]:
    """Median milliseconds of each probe at one sample point, for one net of each variant."""
    order = BatchOrder(len(splits.train), spec.batch_size, spec.seed, CPU)
    batch, fixed = (
        Batch(splits.train.images[order.indices(s)], splits.train.labels[order.indices(s)])
        for s in (spec.batches_per_sample, 0)
    )
    weights = initial_weights(Architecture(), spec.weight_std, spec.seed)
    costs: dict[str, dict[str, float]] = {}
    for variant in ("plain", "bn"):
        stack = NetStack(Architecture(), variant, [weights], "torch")
        costs[variant] = {}
        for name, probes in EACH.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                measure(stack, [spec.learning_rate], probes, batch, (), fixed)
                times.append(time.perf_counter() - start)
            costs[variant][name] = 1000 * statistics.median(times)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each")
    args = parser.parse_args()
    splits = load_splits(args.dataset, args.data_dir, download=False)
    spec = TrainingSpec(training_batches=args.steps, batches_per_sample=args.sample_every)

    experiment_seconds(splits, TrainingSpec(training_batches=200, batches_per_sample=100), ALL)
    off, on = [], []
    intervals: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        off.append(experiment_seconds(splits, spec, Probes())[0])
        seconds, by_due = experiment_seconds(splits, spec, ALL)
        on.append(seconds)
        for due, durations in by_due.items():
            intervals[due] += durations
    points = -(-args.steps // args.sample_every) + 1
    probed = len([n for n in range(points) if n % ALL.every == 0])
    best_off, best_on = min(off), min(on)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.steps} steps sampled every {args.sample_every}: probes at {probed} of {points}")
    print(f"probes off: {best_off:6.2f} s   all probes: {best_on:6.2f} s", end="  ")
    print(f"(fastest of {args.repeats})")
    print(f"probes' share of the experiment: {(best_on - best_off) / best_on:.1%}")

    # Within the probed runs, intervals ending in a probed sample point against the others:
    # side by side in time, so a loaded machine's swings hit both alike.
    plain_interval = statistics.median(intervals[False])
    per_point = statistics.median(intervals[True]) - plain_interval
    print(
        f"a sample interval: {plain_interval:.2f} s without probes at its end, "
        f"{per_point:+.2f} s with them ({len(intervals[True])} vs {len(intervals[False])})"
    )
    # The study's run: 50,000 steps, 101 sample points, probes at 21 of them.
    study = 21 * per_point / (21 * per_point + 100 * plain_interval * 500 / args.sample_every)
    print(f"extrapolated to the study's 50,000 steps (probes at 21 of 101 points): {study:.1%}")

    torch.set_num_threads(1)  # as in a lane of the pair
    costs = probe_ms(splits, spec, repeats=5)
    print("each probe at one sample point, one net, 1 thread (median ms):")
    for variant, by_probe in costs.items():
        listed = "  ".join(f"{name} {ms:6.1f}" for name, ms in by_probe.items())
        print(f"  {variant:6s} {listed}  total {sum(by_probe.values()):6.1f}")


if __name__ == "__main__":
    main()
