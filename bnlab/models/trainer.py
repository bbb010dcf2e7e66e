"""The trainer: the cells of a group, stepping in lockstep on one reproducible batch sequence.

A *cell* is one experiment of the study: a net of each of the trainer's variants (the study's
`plain` and `bn` by default), all from copies of the same initial weights, with its own learning
rate. A lone experiment is a group of one cell; a sweep
trains up to 16 cells that share an architecture, a batch order (seed, batch size) and a
schedule (training batches, sample interval) as one group, so each step costs one pass over the
batch for all of them.

Nets train in *lanes*: a lane is one `Stack` (a `NetStack`, or an rnn's `LSTMStack`) holding
every cell's net of one variant, stepped by one thread; the lanes run in parallel, sharing the
cores, and meet at every sample point.

Plain SGD: each net's loss is weighted by its own learning rate and torch's SGD steps with lr 1,
the same update with one optimizer for a whole stack. On the CPU, MLPs of every variant but
`bn_noisy` take that step written out (`backprop`; where they have BN, with torch's BN kernel, the
worker's setting), a sample interval in one call: the same numbers, without autograd's
bookkeeping.

Every `batches_per_sample` steps (and at step 0, before any training) the trainer reports each
net's validation accuracy with population statistics and its mean training loss since the last
report. A net whose loss turns non-finite is `diverged` (at that step): at the next sample point
it is taken out of its stack and frozen, while the others carry on. A cell can be dropped at a
sample point (its experiment was cancelled); the others carry on from exactly where they were.
"""

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.models import backprop
from bnlab.models.backprop import WrittenOutStep
from bnlab.models.batchnorm import BNImpl
from bnlab.models.data import BatchOrder, Split, Splits, to_inputs
from bnlab.models.graphs import GraphedStep
from bnlab.models.inference import accuracy
from bnlab.models.network import (
    Architecture,
    Stack,
    bn_noise,
    initial_weights,
    stack_class,
)
from bnlab.models.probes import PROBE_SIZE, LayerStats, layer_stats, weight_grad_norms
from bnlab.models.why import NO_PROBES, Batch, Probes, WhySample, measure
from bnlab.vocabulary import STUDY_VARIANTS, Variant

T = TypeVar("T")


@dataclass(frozen=True)
class TrainingSpec:
    """The study's knobs. Defaults are the study's: 50,000 batches of 60, sampled every 500."""

    learning_rate: float = 0.01
    training_batches: int = 50_000
    batches_per_sample: int = 500
    batch_size: int = 60
    weight_std: float = 0.05  # "good" initial weights; the study's "bad" ones are 5.0
    seed: int = 0


# What the cells of one trainer share; learning_rate and weight_std may differ from cell to cell.
SHARED_FIELDS = ("training_batches", "batches_per_sample", "batch_size", "seed")


@dataclass(frozen=True)
class Cell:
    """One experiment: a net per variant of its trainer, from copies of the same initial weights.
    `name` is whatever the caller names it by (the worker uses the experiment id)."""

    name: str
    spec: TrainingSpec


@dataclass(frozen=True)
class LayerSample:
    """One hidden layer at a sample point (see `probes`): its pre-activations and dead units on
    the probe batch, and its weight's gradient norm on the last training batch."""

    stats: LayerStats
    grad_norm: float | None  # None at step 0


@dataclass(frozen=True)
class NetSample:
    val_accuracy: float
    train_loss: float | None  # mean since the last sample; None at step 0
    layers: tuple[LayerSample, ...] = ()  # per hidden layer, conv layers first
    why: WhySample | None = None  # where `Probes` ran at this sample point (see `why`)


@dataclass(frozen=True)
class CellSample:
    """One cell at a sample point, as a lone experiment reports it: its nets still stepping, and
    every net of the cell diverged so far (and when)."""

    nets: dict[Variant, NetSample]
    diverged_at: dict[Variant, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """One sample point: every cell still in the trainer, by name."""

    step: int
    cells: dict[str, CellSample]


# One cell's training state: tensors keyed "<variant>/<name>", and metadata
# {"step": int, "diverged_at": {variant: step}}; a lone experiment's state file holds one.
TrainingState = tuple[dict[str, Tensor], dict[str, object]]


TrainerEnd = Literal["finished", "cancelled"]

# A written-out lane's steps per call (see `Lane`): the study's whole interval of 500, a few
# megabytes of batch indices at most.
STEPS_PER_CALL = 1000


@dataclass(frozen=True)
class Net:
    cell: str
    learning_rate: float


class Lane:
    """The nets of one variant, one per cell, stacked and stepped together by one thread; a
    lane names its nets by their cells. On a GPU, the training step is captured as a CUDA graph
    (`graphs`), unless `cuda_graphs` is switched off."""

    cuda_graphs = True

    def __init__(
        self,
        stack: Stack,
        nets: Sequence[Net],
        train: Split,
        spec: TrainingSpec,
        probes: Probes = NO_PROBES,
    ) -> None:
        self.variant: Variant = stack.variant
        self.probes = probes
        self.batches_per_sample = spec.batches_per_sample
        self.nets = {net.cell: net for net in nets}
        self.train_split = train
        self.device = train.labels.device
        self.order = BatchOrder(len(train), spec.batch_size, spec.seed, self.device)
        self.diverged_at: dict[str, int] = {}
        self.frozen: dict[str, dict[str, Tensor]] = {}  # diverged nets, as they were
        self._mean_loss: list[float] | None = None  # per active net, since the last sample
        self._grad_norms: dict[str, list[float]] = {}  # per net and layer, at the last step
        self._use(stack, [net.cell for net in nets])

    def _use(self, stack: Stack, active: list[str]) -> None:
        self.stack = stack
        self.active = active
        self.optimizer = torch.optim.SGD(stack.parameters(), lr=1.0, foreach=True)
        rates = [self.nets[cell].learning_rate for cell in active]
        self._loss_weights = torch.tensor(rates, device=self.device)
        self._graph: GraphedStep | None = None  # captured at the first step on a GPU
        self._written_out: WrittenOutStep | None = None
        if active and backprop.applies(stack):
            self._written_out = WrittenOutStep(stack, rates)
        elif active:
            self._losses = _traced_losses(stack, self.train_split, self.order.batch_size)

    @property
    def written_out(self) -> bool:
        """Whether this lane steps with `backprop`'s written-out step (else autograd)."""
        return self._written_out is not None

    def train(self, first_step: int, end_step: int) -> None:
        """Steps [first_step, end_step): one sample interval."""
        if not self.active or end_step <= first_step:
            return
        with _unoptimized_torchscript():
            if self._written_out is not None:
                losses = self._train_written_out(first_step, end_step)
            else:
                losses = torch.empty(end_step - first_step, len(self.active), device=self.device)
                for row, step in enumerate(range(first_step, end_step)):
                    losses[row] = self._train_step(step)  # a copy: a CUDA graph reuses its output
        # Read before a diverged net is taken out: rebuilding the stack drops the gradients.
        self._grad_norms = dict(zip(self.active, self._per_net(self._grad_norms_of), strict=True))
        # Checked once per interval, not per step: a per-step check would stall on the device.
        # Nets are independent inside a stack, so a diverged one harms no other meanwhile.
        finite = torch.isfinite(losses).all(dim=0).tolist()
        if not all(finite):
            self._freeze_diverged(losses, finite, first_step)
            losses = losses[:, [i for i, ok in enumerate(finite) if ok]]
        self._mean_loss = losses.double().mean(dim=0).tolist()

    def _train_written_out(self, first_step: int, end_step: int) -> Tensor:
        """The interval's steps in one call of the written-out step (see `backprop`)."""
        assert self._written_out is not None
        split, chunks = self.train_split, []
        # In chunks: an interval's indices at once could be gigabytes (1,000,000 batches of 4096)
        for start in range(first_step, end_step, STEPS_PER_CALL):
            steps = range(start, min(start + STEPS_PER_CALL, end_step))
            indices = torch.stack([self.order.indices(step) for step in steps])
            last = steps[-1] == end_step - 1  # its weight gradients stay for the probes
            chunks.append(self._written_out.train(split.images, split.labels, indices, last))
        self._written_out.sync()
        return torch.cat(chunks)

    def _train_step(self, step: int) -> Tensor:
        inputs = (self.order.indices(step), *self._noise(step))
        if self.device.type != "cuda" or not self.cuda_graphs:
            return self._step(*inputs)
        if self._graph is None:
            state = [*self.stack.parameters(), *self.stack.buffers()]
            self._graph = GraphedStep(self._step, state, inputs)
        return self._graph.replay(inputs)

    def _noise(self, step: int) -> list[Tensor]:
        """A bn_noisy lane's noise at `step` (none for the other variants)."""
        if not self.stack.noisy:
            return []
        noise = bn_noise(self.stack.arch, self.order.batch_size, self.order.seed, step)
        return [n.to(self.device) for n in noise]

    def _step(self, indices: Tensor, *noise: Tensor) -> Tensor:
        # index_select copies whole rows: 10x faster than advanced indexing here (3 vs 31 us)
        images = self.train_split.images.index_select(0, indices)
        labels = self.train_split.labels.index_select(0, indices)
        losses: Tensor = self._losses(images, labels, *noise)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(losses.dot(self._loss_weights))  # Tensor.backward is untyped
        self.optimizer.step()
        return losses.detach()

    def _freeze_diverged(self, losses: Tensor, finite: list[bool], first_step: int) -> None:
        """Take the nets whose loss turned non-finite out of the stack; the others carry on."""
        for index, cell in enumerate(self.active):
            if not finite[index]:
                first_bad = int((~torch.isfinite(losses[:, index])).nonzero()[0])
                self.diverged_at[cell] = first_step + first_bad + 1
                self.frozen[cell] = self.stack.net_state(index)
        keep = [cell for index, cell in enumerate(self.active) if finite[index]]
        self._rebuild({cell: self.net_state(cell) for cell in keep})

    def _rebuild(self, states: dict[str, dict[str, Tensor]]) -> None:
        """A stack of the nets in `states` (the ones still stepping), from those states."""
        if not states:  # every net of the lane diverged: no stack is left to step
            self.active = []
            return
        arch, bn_impl = self.stack.arch, self.stack.bn_impl
        states_list = list(states.values())
        stack = stack_class(arch).from_net_states(arch, self.variant, states_list, bn_impl)
        self._use(stack.to(self.device), list(states))

    def drop(self, cells: set[str]) -> None:
        """Take the nets of `cells` out of this lane at a sample point; the others carry on
        from exactly where they were."""
        gone = cells & set(self.nets)
        if not gone:
            return
        keep = {cell: self.net_state(cell) for cell in self.active if cell not in gone}
        for cell in gone:
            del self.nets[cell]
            self.frozen.pop(cell, None)
            self.diverged_at.pop(cell, None)
        self._rebuild(keep)

    def net_state(self, cell: str) -> dict[str, Tensor]:
        """One net's tensors (a diverged one as it was when its divergence was seen)."""
        if cell in self.frozen:
            return self.frozen[cell]
        return self.stack.net_state(self.active.index(cell))

    def _rates(self, cells: Sequence[str]) -> list[float]:
        return [self.nets[cell].learning_rate for cell in cells]

    def _per_net(self, measure: Callable[[Stack, list[str]], list[T]]) -> list[T]:
        """`measure(stack, its cells)` over the stacks the active nets train in, per net. A
        written-out lane trains each net as a stack of one and measures it so: what a net
        reports then does not depend on the nets beside it either."""
        if not self.active:
            return []
        if self._written_out is None:
            return measure(self.stack, self.active)
        singles = zip(self._written_out.singles, self.active, strict=True)
        return [result for net, cell in singles for result in measure(net, [cell])]

    def _grad_norms_of(self, stack: Stack, cells: list[str]) -> list[list[float]]:
        norms = weight_grad_norms(stack, self._rates(cells))
        assert norms is not None, "a training step leaves its weight gradients"
        return norms

    def sample(self, validation: Split, step: int) -> dict[str, NetSample]:
        val_accuracy = self._per_net(lambda stack, _: accuracy(stack, validation, "population"))
        probe = validation.images[:PROBE_SIZE]
        stats = self._per_net(lambda stack, _: layer_stats(stack, probe))
        why = self._why(step) if self.probes.due(step, self.batches_per_sample) else None
        mean_loss, grad_norms = self._mean_loss, self._grad_norms
        self._mean_loss, self._grad_norms = None, {}
        return {
            cell: NetSample(
                val_accuracy[i],
                mean_loss[i] if mean_loss else None,
                _layer_samples(stats[i], grad_norms.get(cell)),
                why[i] if why else None,
            )
            for i, cell in enumerate(self.active)
        }

    def _why(self, step: int) -> list[WhySample]:
        """`probes`' measurements at the sample point of `step`, per net: on the next training
        batch (the one step `step` trains on) and on step 0's batch (see `why`)."""
        batch, fixed = self._batch(step), self._batch(0)
        next_noise = self._noise(step + 1)
        return self._per_net(
            lambda stack, cells: measure(
                stack, self._rates(cells), self.probes, batch, next_noise, fixed
            )
        )

    def _batch(self, step: int) -> Batch:
        indices = self.order.indices(step)
        images = self.train_split.images.index_select(0, indices)
        return Batch(images, self.train_split.labels.index_select(0, indices), self._noise(step))

    def test_accuracies(self, test: Split, batch_size: int) -> dict[str, tuple[float, float]]:
        """Per net still training: accuracy with population and with batch statistics."""
        population = self._per_net(lambda stack, _: accuracy(stack, test, "population"))
        batch = self._per_net(lambda stack, _: accuracy(stack, test, "batch", batch_size))
        return {cell: (population[i], batch[i]) for i, cell in enumerate(self.active)}

    def restore(self, states: dict[str, dict[str, Tensor]], diverged_at: dict[str, int]) -> None:
        self.diverged_at = {cell: diverged_at[cell] for cell in self.nets if cell in diverged_at}
        self.frozen = {cell: states[cell] for cell in self.diverged_at}
        self._rebuild({cell: states[cell] for cell in self.nets if cell not in self.diverged_at})


def _layer_samples(
    stats: list[LayerStats], grad_norms: list[float] | None
) -> tuple[LayerSample, ...]:
    norms: Sequence[float | None] = grad_norms or [None] * len(stats)
    return tuple(LayerSample(s, g) for s, g in zip(stats, norms, strict=True))


class _Losses(nn.Module):
    """Each net's mean cross-entropy on a batch of uint8 images: a training step's forward."""

    def __init__(self, stack: Stack) -> None:
        super().__init__()
        self.stack = stack

    def forward(self, images: Tensor, labels: Tensor, *noise: Tensor) -> Tensor:
        logits = self.stack(to_inputs(images), "train", noise=noise)
        size = logits.shape[0]
        targets = labels.expand(size, -1).flatten()  # a view for a lone net, no copy
        losses = F.cross_entropy(logits.flatten(0, 1), targets, reduction="none")
        return losses.view(size, -1).mean(dim=1)


def _traced_losses(stack: Stack, train: Split, batch_size: int) -> torch.jit.ScriptModule:
    """The forward as one TorchScript graph. Eager, each of its ~60 small ops takes and drops
    the GIL, and lanes in threads then run one at a time; traced, a lane holds the GIL only to
    call the graph, and the lanes really run side by side. Same ops, same results."""
    buffers = [buffer.clone() for buffer in stack.buffers()]
    noise = bn_noise(stack.arch, batch_size, 0, 0) if stack.noisy else []
    example = (train.images[:batch_size], train.labels[:batch_size], *noise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about sizes: batches have one size
        # torch.jit.trace has no type annotations
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            _Losses(stack), example, check_trace=False
        )
    with torch.no_grad():  # tracing ran one training forward: undo its BN statistics update
        for buffer, before in zip(stack.buffers(), buffers, strict=True):
            buffer.copy_(before)
    return traced


class Trainer:
    """Trains the cells of a group in lockstep, reporting a `Sample` at every sample point."""

    def __init__(self, lanes: Sequence[Lane], validation: Split, spec: TrainingSpec) -> None:
        self.lanes = list(lanes)  # one per variant
        # Converted once, not by every net at every sample point (the same floats either way).
        self.validation = validation.as_inputs()
        self.spec = spec  # the schedule the cells share
        self.step = 0

    @property
    def cells(self) -> list[str]:
        """The names of the cells still in the trainer (not dropped)."""
        return list(self.lanes[0].nets)

    def _lane(self, variant: Variant) -> Lane:
        return next(lane for lane in self.lanes if lane.variant == variant)

    def run(
        self,
        on_sample: Callable[[Sample], None],
        should_cancel: Callable[[], bool] = lambda: False,
    ) -> TrainerEnd:
        """Train to `training_batches`, from wherever the trainer stands (0 or a resumed step)."""
        with _threads_per_lane(len(self.lanes)) as pool:
            # All torch work, sampling included, runs in the lane threads: the calling thread's
            # own intra-op threads would otherwise spin on the cores the lanes need.
            if self.step == 0:
                on_sample(self._sample(pool, self.step))
            while self.step < self.spec.training_batches:
                if should_cancel():
                    return "cancelled"
                end = min(self.step + self.spec.batches_per_sample, self.spec.training_batches)
                on_sample(self._sample(pool, end))
        return "finished"

    def _sample(self, pool: ThreadPoolExecutor, end: int) -> Sample:
        """Train every lane up to `end`, then sample them all."""

        def train_and_sample(lane: Lane) -> dict[str, NetSample]:
            lane.train(self.step, end)
            return lane.sample(self.validation, end)

        by_lane = list(zip(self.lanes, pool.map(train_and_sample, self.lanes), strict=True))
        self.step = end
        return Sample(
            self.step,
            {
                cell: CellSample(
                    {lane.variant: nets[cell] for lane, nets in by_lane if cell in nets},
                    self._diverged_at(cell),
                )
                for cell in self.cells
            },
        )

    def _diverged_at(self, cell: str) -> dict[Variant, int]:
        return {
            lane.variant: lane.diverged_at[cell] for lane in self.lanes if cell in lane.diverged_at
        }

    def drop(self, cells: Iterable[str]) -> None:
        """Stop training `cells` (at a sample point): their nets leave the stacks, and the
        others carry on exactly as they would have."""
        names = set(cells)
        for lane in self.lanes:
            lane.drop(names)

    def net_state(self, cell: str, variant: Variant) -> dict[str, Tensor]:
        return self._lane(variant).net_state(cell)

    def state(self, cell: str) -> TrainingState:
        """One cell's tensors and metadata at a sample point: what a lone experiment saves."""
        tensors = {
            f"{lane.variant}/{name}": tensor
            for lane in self.lanes
            for name, tensor in lane.net_state(cell).items()
        }
        return tensors, {"step": self.step, "diverged_at": self._diverged_at(cell)}

    def restore(self, states: Mapping[str, TrainingState]) -> bool:
        """Continue from `state()`s, by cell name: the same weights, BN buffers, step and
        diverged nets. False, and the trainer untouched, unless every cell of the trainer has a
        state and all of them are at one step."""
        if not set(self.cells) <= set(states):
            return False
        steps = {_as_int(states[cell][1]["step"]) for cell in self.cells}
        if len(steps) != 1:
            return False
        for lane in self.lanes:
            nets: dict[str, dict[str, Tensor]] = {}
            diverged_at: dict[str, int] = {}
            for cell in self.cells:
                tensors, meta = states[cell]
                nets[cell] = {
                    key.split("/", 1)[1]: tensor
                    for key, tensor in tensors.items()
                    if key.split("/", 1)[0] == lane.variant
                }
                cell_diverged = meta["diverged_at"]
                assert isinstance(cell_diverged, dict)
                if lane.variant in cell_diverged:
                    diverged_at[cell] = _as_int(cell_diverged[lane.variant])
            lane.restore(nets, diverged_at)
        self.step = steps.pop()
        return True

    def test_accuracies(self, test: Split) -> dict[str, dict[Variant, tuple[float, float]]]:
        """Per cell, per net still training: test accuracy with population statistics, and with
        the statistics of batches of the training batch size."""
        test = test.to(self.lanes[0].device).as_inputs()
        # In the lanes' threads, as training and sampling: the calling thread's two intra-op
        # threads made each of the ~170 small batch-mode forwards wait for a core another
        # process held (measured on a busy 2-core machine: 3-9 s for a pair, against 0.23 s).
        with _threads_per_lane(len(self.lanes)) as pool:
            results = pool.map(
                lambda lane: lane.test_accuracies(test, self.spec.batch_size), self.lanes
            )
        by_lane = {lane.variant: result for lane, result in zip(self.lanes, results, strict=True)}
        return {
            cell: {
                variant: results[cell] for variant, results in by_lane.items() if cell in results
            }
            for cell in self.cells
        }


def _as_int(value: object) -> int:
    """A step read back from a state's metadata (an int, or the string a file stores)."""
    assert isinstance(value, int | str), f"not a step: {value!r}"
    return int(value)


@contextmanager
def _unoptimized_torchscript() -> Iterator[None]:
    """TorchScript graphs (traced or scripted) run op by op, as written, in this thread: an
    optimizing executor would swap in its own derivatives after a few calls, and a resumed run
    (compiled afresh) would then not be bit-identical to an uninterrupted one. The setting is
    per thread; `torch.jit.optimized_execution` does the same, but is untyped."""
    before = torch._C._get_graph_executor_optimize()
    torch._C._set_graph_executor_optimize(False)
    try:
        yield
    finally:
        torch._C._set_graph_executor_optimize(before)


@contextmanager
def _threads_per_lane(n_lanes: int) -> Iterator[ThreadPoolExecutor]:
    """A thread per lane, each with its share of the cores for torch's intra-op threads, set in
    the thread itself (OpenMP keeps the setting per thread). Tiny per-net ops gain little from a
    second intra-op thread; a second net on the other core gains almost 2x."""
    threads = max(1, (os.cpu_count() or 1) // n_lanes) if n_lanes > 1 else torch.get_num_threads()
    with ThreadPoolExecutor(
        max_workers=n_lanes,
        thread_name_prefix="bnlab-lane",
        initializer=torch.set_num_threads,
        initargs=(threads,),
    ) as pool:
        yield pool


def build_trainer(
    arch: Architecture,
    cells: Sequence[Cell],
    splits: Splits,
    device: torch.device,
    bn_impl: BNImpl = "bnlab",
    variants: Sequence[Variant] = STUDY_VARIANTS,
    probes: Probes = NO_PROBES,
) -> Trainer:
    """A lane per variant holding every cell's net of that variant; each cell's nets start from
    copies of the same initial weights (drawn from its weight_std and seed) and step on the same
    batch sequence. `probes` (none by default) are measured at every `probes.every`-th sample
    point, in the lanes' threads."""
    if not cells:
        raise ValueError("a trainer needs at least one cell")
    if not variants or len(set(variants)) != len(variants):
        raise ValueError(f"a trainer needs distinct variants, at least one: not {variants}")
    schedule = cells[0].spec
    for cell in cells:
        differing = [f for f in SHARED_FIELDS if getattr(cell.spec, f) != getattr(schedule, f)]
        if differing:
            raise ValueError(
                f"cell {cell.name} differs from cell {cells[0].name} in {', '.join(differing)}: "
                "the cells of a trainer must share their batch order and schedule"
            )
    weights = [initial_weights(arch, cell.spec.weight_std, cell.spec.seed) for cell in cells]
    train = splits.train.to(device)
    lanes = [
        Lane(
            stack_class(arch)(arch, variant, weights, bn_impl).to(device),
            [Net(cell.name, cell.spec.learning_rate) for cell in cells],
            train,
            schedule,
            probes,
        )
        for variant in variants
    ]
    return Trainer(lanes, splits.validation.to(device), schedule)


def first_step_reaching(
    steps: Sequence[int], accuracies: Sequence[float], level: float
) -> int | None:
    """The first sampled step whose validation accuracy reached `level`, or None."""
    return next((s for s, a in zip(steps, accuracies, strict=True) if a >= level), None)
