"""The classic study's grid, batched as a sweep job trains it, against the loop a user would write.

The classic preset's 50,000-batch cells are 12 comparisons x 2 nets. A sweep job trains the
cells that share an activation as one stacked model (a `plain` lane and a `bn` lane of 6 nets
each, bnlab/models/trainer.py); the baseline is bench/engine.py's `plain_loop`, one net at a time.
Both run `--steps` steps per net (the study's 50,000 take long; the ratio is what counts), sampling
validation accuracy every 500 steps as the study does, so that sampling costs the same share.

Scaling: the baseline trains one plain and one bn net and is multiplied by 12 (every cell is one
of each); plain_loop's nets are ReLU, a little cheaper than sigmoid ones, so the baseline is, if
anything, flattered. The batched side really trains all 24 nets, one group after the other, as one
worker does.

    python bench/sweep.py --data-dir /tmp/fdata --steps 2000 --repeats 3
    python bench/sweep.py --synthetic --device cuda --scaling     # nets at once on a GPU

`--scaling` trains stacks of 1, 2, 4, ... nets per lane and reports the step rate, which is each
net's throughput, and where it falls to half of a lone net's.

The grid's arithmetic rate: each network-step's FLOPs from the architecture (`step_flops`: the
forward's GEMMs, the weight gradients' as many, the input gradients of every layer but the
first), against sgemm's rate on the same threads in the same run (one per lane, side by side, as
the lanes run): a large square one, the wide first layer (60x784 by 784x600) and the per-net one
each net of a lane really runs (60x784 by 784x100); the ratio is to the fastest of them.

The other CPU's kernel path: `--kernels avx2` re-runs the script with MKL and ATen restricted to
AVX2 (`MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2`, which take effect only if set
before torch loads), as an AVX2-only AMD CPU would run it; on such a CPU, `--kernels avx512` is
a no-op.
"""

import argparse
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from engine import plain_loop  # bench/engine.py: this script runs from bench/

from bnlab.models.data import Split, Splits, load_splits
from bnlab.models.network import Architecture
from bnlab.models.trainer import Cell, TrainingSpec, build_trainer
from bnlab.spec import ExperimentSpec
from bnlab.sweeps import SweepRequest, expand, groups

STUDY_SAMPLE_INTERVAL = 500
LANES = 2  # a sweep group's plain and bn lanes, one thread each
KERNEL_ENV = {
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "native": {},
}


def classic_long_cells() -> list[ExperimentSpec]:
    specs = expand(SweepRequest(preset="classic"), max_cells=256)
    return [spec for spec in specs if spec.training_batches == 50_000]


def batched_seconds(
    splits: Splits, steps: int, sample_every: int, device: torch.device, bn_impl: str
) -> tuple[float, list[int]]:
    """Seconds to train the classic grid's 50,000-batch cells for `steps` steps, group after
    group as the sweep job does; and the group sizes."""
    cells = classic_long_cells()
    total, sizes = 0.0, []
    for group in groups(cells, stack=True, max_cells=16):
        specs = [cells[i] for i in group]
        stacked = [
            Cell(str(i), _shortened(spec, steps, sample_every).training())
            for i, spec in zip(group, specs, strict=True)
        ]
        trainer = build_trainer(specs[0].architecture(), stacked, splits, device, bn_impl)  # type: ignore[arg-type]
        start = time.perf_counter()
        trainer.run(lambda sample: None)
        _sync(device)
        total += time.perf_counter() - start
        sizes.append(len(group))
    return total, sizes


def step_flops(arch: Architecture, batch_size: int) -> int:
    """FLOPs of one MLP network-step: forward 2*B*in*out per layer, the weight gradient as many,
    the input gradient as many for every layer but the first (its input is the images). The
    784-100-100-100-10 net at batch 60: 11.9 + 11.9 + 2.5 = 26.4 MFLOP."""
    sizes = [n_in * n_out for n_out, n_in in arch.weight_shapes()]
    return 2 * batch_size * (2 * sum(sizes) + sum(sizes[1:]))


def sgemm_gflops(m: int, k: int, n: int, lanes: int = LANES, seconds: float = 1.0) -> float:
    """GFLOP/s of (m, k) @ (k, n) float32 GEMMs run in `lanes` threads side by side, each with
    the intra-op threads a lane gets (trainer.py's `_threads_per_lane`)."""
    threads = max(1, (os.cpu_count() or 1) // lanes)

    def run() -> float:
        """This thread's GEMMs per second, timed from after its warm-up call (thread start,
        allocation and the first call's packing are not the kernel's rate)."""
        torch.set_num_threads(threads)
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        torch.mm(a, b, out=out)  # warm
        calls, start = 0, time.perf_counter()
        while time.perf_counter() < start + seconds:
            torch.mm(a, b, out=out)
            calls += 1
        return calls / (time.perf_counter() - start)

    with ThreadPoolExecutor(lanes) as pool:
        calls_per_second = sum(pool.map(lambda _: run(), range(lanes)))
    return 2 * m * k * n * calls_per_second / 1e9


def arithmetic_lines(network_steps_per_second: float) -> list[str]:
    """The grid's achieved GFLOP/s against sgemm's on the same threads, measured now; the peak
    is the fastest of the three shapes (MKL's rate depends on the shape)."""
    flops = step_flops(Architecture(), 60)
    achieved = network_steps_per_second * flops / 1e9
    shapes = {"2048^3": (2048, 2048, 2048), "60x784 by 784x600": (60, 784, 600)}
    shapes["60x784 by 784x100"] = (60, 784, 100)
    rates = {name: sgemm_gflops(*shape) for name, shape in shapes.items()}
    peak = max(rates.values())
    measured = ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items())
    return [
        f"batched grid: {achieved:.1f} GFLOP/s ({flops / 1e6:.1f} MFLOP per network-step)",
        f"sgemm GFLOP/s, {LANES} threads side by side: {measured}",
        f"batched grid / fastest sgemm: {achieved / peak:.2f}  (target >= 0.5)",
    ]


def _shortened(spec: ExperimentSpec, steps: int, sample_every: int) -> ExperimentSpec:
    return spec.model_copy(update={"training_batches": steps, "batches_per_sample": sample_every})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(args: argparse.Namespace, splits: Splits) -> None:
    # The study's sample interval, so that validation costs the same share of each step.
    steps, every = args.steps, min(STUDY_SAMPLE_INTERVAL, args.steps)
    spec = TrainingSpec(training_batches=steps, batches_per_sample=every)
    plain_loop(splits, False, TrainingSpec(training_batches=200, batches_per_sample=200))  # warm
    batched_seconds(splits, 20, 20, torch.device("cpu"), args.bn_impl)  # compiles the step
    # Rounds alternate the two sides; each side keeps its quietest round (the machine is shared).
    pairs, batches = [], []
    for round_ in range(args.repeats):
        pairs.append(plain_loop(splits, False, spec) + plain_loop(splits, True, spec))
        seconds, sizes = batched_seconds(splits, steps, every, torch.device("cpu"), args.bn_impl)
        batches.append(seconds)
        print(f"round {round_ + 1}: plain pair {pairs[-1]:.1f} s, batched grid {seconds:.1f} s")
    baseline_pair, batched = min(pairs), min(batches)
    cells = len(classic_long_cells())
    baseline = cells * baseline_pair
    net_steps = 2 * cells * steps
    scale = 50_000 / steps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.bn_impl} BN, "
        f"ATen {torch.backends.cpu.get_cpu_capability()}, MKL_ENABLE_INSTRUCTIONS="
        f"{os.environ.get('MKL_ENABLE_INSTRUCTIONS', '(all)')}",
        f"{cells} cells x 2 nets x {steps} steps = {net_steps:,} network-steps, "
        f"sampled every {every}",
        f"plain loop, one plain + one bn net: {baseline_pair:.1f} s; "
        f"x {cells} cells = {baseline:.1f} s",
        f"batched, groups of {sizes} cells: {batched:.1f} s",
        f"batched / plain loop: {batched / baseline:.3f}x  (target <= 0.2x)",
        f"network-steps per second: plain loop {net_steps / baseline:,.0f}, "
        f"batched {net_steps / batched:,.0f}",
        f"the classic grid's 50,000-batch cells (1.2 million network-steps) at this pace: "
        f"{batched * scale / 60:.0f} min batched, {baseline * scale / 60:.0f} min plain loop",
        f"peak resident memory: {peak_mb:.0f} MB",
        *arithmetic_lines(net_steps / batched),
    ]
    print("\n".join(lines))


def scaling(args: argparse.Namespace, splits: Splits) -> None:
    """Step rate of stacks of G nets per lane (two lanes: plain and bn), G = 1, 2, 4, ..."""
    device = torch.device(args.device)
    if device.type == "cuda":
        print(torch.cuda.get_device_name(device))
    arch = Architecture(activation="relu")
    steps = args.steps
    lone_rate, size = None, 1
    while size <= args.max_nets:
        cells = [
            Cell(
                str(i),
                TrainingSpec(learning_rate=0.01, training_batches=steps, batches_per_sample=steps),
            )
            for i in range(size)
        ]
        trainer = build_trainer(arch, cells, splits, device, args.bn_impl)
        trainer.run(lambda sample: None)  # warm-up: trace, allocate, cuBLAS handles
        trainer = build_trainer(arch, cells, splits, device, args.bn_impl)
        _sync(device)
        start = time.perf_counter()
        trainer.run(lambda sample: None)
        _sync(device)
        rate = steps / (time.perf_counter() - start)
        lone_rate = lone_rate or rate
        half = " <- per-net throughput halved" if rate < lone_rate / 2 else ""
        print(
            f"{size:5d} nets per lane ({2 * size} nets): {rate:8.0f} steps/s per net, "
            f"{2 * size * rate:10.0f} network-steps/s{half}"
        )
        size *= 2


def synthetic_splits(device: torch.device) -> Splits:
    """MNIST-shaped random data: throughput does not depend on what the pixels show."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator)
        return Split(images, torch.randint(0, 10, (n,), generator=generator))

    return Splits(split(55_000), split(5_000), split(10_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/fdata"))
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--synthetic", action="store_true", help="random MNIST-shaped data")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--bn-impl", default="torch", choices=["bnlab", "torch"])
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the quietest counts")
    parser.add_argument("--scaling", action="store_true", help="nets at once, not the grid")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-nets", type=int, default=4096)
    parser.add_argument(
        "--kernels", default="native", choices=sorted(KERNEL_ENV), help="CPU kernel path"
    )
    args = parser.parse_args()
    restricted = KERNEL_ENV[args.kernels]
    if any(os.environ.get(name) != value for name, value in restricted.items()):
        # Read once when torch loads, which it already has: run again with them set.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **restricted})
    if args.synthetic:
        splits = synthetic_splits(torch.device("cpu"))
    else:
        splits = load_splits(args.dataset, args.data_dir, download=False)
    if args.scaling:
        scaling(args, splits)
    else:
        compare(args, splits)


if __name__ == "__main__":
    main()
