"""The rnn (issue 11) against the loops a user would write for it.

Per variant: its lane in bnlab's trainer (one cell, that variant alone) against the obvious
torch loop of the same net: `nn.LSTM` and a linear layer for `plain`; for `bn`, the paper's
BN-LSTM (Cooijmans et al. 2016) written the obvious way, a step loop with an `nn.BatchNorm1d`
per step for each normalized term; for `layer_norm` the same loop with `nn.LayerNorm`. Same
shapes (hidden 100, batch 60, 28 rows of 28 pixels, or 784 pixels with --sequence pixels),
steps, sampling, `torch.optim.SGD` and a random index per batch. Each figure is the fastest of
`--repeats` runs, the loop and the lane taking turns. With --train-only, the training steps alone:
`Lane.train` after a few steps of warm-up against the loop's steps without its sampling.

    python bench/rnn.py --data-dir /tmp/fdata --steps 300
    python bench/rnn.py --data-dir /tmp/fdata --steps 40 --train-only --threads 1

The data dir must hold FashionMNIST/raw (see bench/engine.py).
"""

import argparse
import time
from pathlib import Path

import torch
from engine import timed_loop  # bench/engine.py: this script runs from bench/
from torch import Tensor, nn

from bnlab.models.batchnorm import EPSILON, MOMENTUM
from bnlab.models.data import Splits, load_splits
from bnlab.models.network import SEQUENCE_SHAPES, Architecture
from bnlab.models.recurrent import GAMMA
from bnlab.models.trainer import Cell, TrainingSpec, build_trainer
from bnlab.vocabulary import RNN_VARIANTS, SequenceOrder, Variant

CPU = torch.device("cpu")
HIDDEN = 100
WARM_UP = 5  # steps before a train-only lane's timing starts


class TorchLSTM(nn.Module):
    """`plain`: nn.LSTM on the image's rows (or pixels), a linear layer on the last state."""

    def __init__(self, steps: int, inputs: int) -> None:
        super().__init__()
        self.steps, self.inputs = steps, inputs
        self.lstm = nn.LSTM(inputs, HIDDEN, batch_first=True)
        self.out = nn.Linear(HIDDEN, 10)

    def forward(self, flat: Tensor) -> Tensor:
        _, (last, _) = self.lstm(flat.view(-1, self.steps, self.inputs))
        out: Tensor = self.out(last[0])
        return out


class NormalizedLSTM(nn.Module):
    """The paper's BN-LSTM as a user writes it from its equations: a module per term and (BN)
    per step, gamma 0.1. LayerNorm in their place for `layer_norm`."""

    def __init__(self, steps: int, inputs: int, variant: Variant) -> None:
        super().__init__()
        self.steps, self.inputs = steps, inputs
        self.w_x = nn.Linear(inputs, 4 * HIDDEN, bias=False)
        self.w_h = nn.Linear(HIDDEN, 4 * HIDDEN)
        self.out = nn.Linear(HIDDEN, 10)
        count = steps if variant == "bn" else 1

        def norms(width: int) -> nn.ModuleList:
            modules = [
                nn.BatchNorm1d(width, eps=EPSILON, momentum=MOMENTUM)
                if variant == "bn"
                else nn.LayerNorm(width, eps=EPSILON)
                for _ in range(count)
            ]
            for module in modules:
                nn.init.constant_(module.weight, GAMMA)
            return nn.ModuleList(modules)

        self.n_x, self.n_h, self.n_c = norms(4 * HIDDEN), norms(4 * HIDDEN), norms(HIDDEN)

    def forward(self, flat: Tensor) -> Tensor:
        x = flat.view(-1, self.steps, self.inputs)
        h = c = x.new_zeros(x.shape[0], HIDDEN)
        for t in range(self.steps):
            n = min(t, len(self.n_x) - 1)
            z = self.n_x[n](self.w_x(x[:, t])) + self.n_h[n](self.w_h(h))
            i, f, g, o = z.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self.n_c[n](c))
        out: Tensor = self.out(h)
        return out


def user_loop(
    splits: Splits, variant: Variant, sequence: SequenceOrder, spec: TrainingSpec
) -> float:
    torch.manual_seed(spec.seed)
    steps, inputs = SEQUENCE_SHAPES[sequence]
    net = TorchLSTM(steps, inputs) if variant == "plain" else NormalizedLSTM(steps, inputs, variant)
    return timed_loop(net, splits, spec)


def trainer_run(
    splits: Splits, variant: Variant, sequence: SequenceOrder, spec: TrainingSpec
) -> float:
    arch = Architecture("tanh", (), rnn_hidden=HIDDEN, sequence=sequence)
    trainer = build_trainer(arch, [Cell("cell", spec)], splits, CPU, variants=[variant])
    start = time.perf_counter()
    trainer.run(lambda sample: None)
    return time.perf_counter() - start


def lane_steps(
    splits: Splits, variant: Variant, sequence: SequenceOrder, spec: TrainingSpec
) -> float:
    """Seconds for the lane's `spec.training_batches` training steps alone, after WARM_UP."""
    arch = Architecture("tanh", (), rnn_hidden=HIDDEN, sequence=sequence)
    [lane] = build_trainer(arch, [Cell("cell", spec)], splits, CPU, variants=[variant]).lanes
    lane.train(0, WARM_UP)
    start = time.perf_counter()
    lane.train(WARM_UP, WARM_UP + spec.training_batches)
    elapsed = time.perf_counter() - start
    if lane.diverged_at:  # a diverged net stops stepping: what was timed is not its steps
        raise RuntimeError(f"the {variant} lane's net diverged at step {lane.diverged_at}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--sequence", choices=["rows", "pixels"], default="rows")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch's intra-op threads (0: torch's default)"
    )
    parser.add_argument(
        "--train-only", action="store_true", help="time the training steps alone, no sampling"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # validation_size: the trainer and the loop sample the same 5,000 images
    splits = load_splits(args.dataset, args.data_dir, download=False)
    # train-only: the loop samples every `batches_per_sample` steps, so never
    every = args.steps + 1 if args.train_only else args.sample_every
    spec = TrainingSpec(training_batches=args.steps, batches_per_sample=every)
    warm_up = TrainingSpec(training_batches=10, batches_per_sample=10)
    lane_run = lane_steps if args.train_only else trainer_run
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, "
        f"{args.sequence}{', training steps alone' if args.train_only else ''}"
    )
    for variant in RNN_VARIANTS:
        user_loop(splits, variant, args.sequence, warm_up)
        lane_run(splits, variant, args.sequence, warm_up)
        loop, lane = float("inf"), float("inf")
        for _ in range(args.repeats):
            loop = min(loop, user_loop(splits, variant, args.sequence, spec))
            lane = min(lane, lane_run(splits, variant, args.sequence, spec))
        print(
            f"{variant:>10}: user loop {args.steps / loop:6.1f} steps/s, "
            f"bnlab lane {args.steps / lane:6.1f} steps/s: {loop / lane:.2f}x"
        )


if __name__ == "__main__":
    main()
