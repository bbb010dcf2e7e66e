"""The paired trainer: nets stepping in lockstep on one reproducible sequence of mini-batches.

Nets train in *lanes*: a lane is one `NetStack` (one or more nets computed as one module) stepped
by one thread; lanes run in parallel, one core each, and meet at every sample point. The study's
pair is two lanes of one net, so `plain` and `bn` train on both cores at once.

Plain SGD: each net's loss is weighted by its own learning rate and torch's SGD steps with lr 1,
the same update with one optimizer for a whole stack. MLPs with torch's BN kernel (the default)
take that step written out (`backprop`): the same numbers, without autograd's bookkeeping.

Every `batches_per_sample` steps (and at step 0, before any training) the trainer reports each
net's validation accuracy with population statistics and its mean training loss since the last
report. A net whose loss turns non-finite is `diverged` (at that step): at the next sample point
it is taken out of its stack and frozen, while the others carry on.
"""

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.models import backprop
from bnlab.models.backprop import WrittenOutStep
from bnlab.models.batchnorm import BNImpl
from bnlab.models.data import BatchOrder, Split, Splits, to_inputs
from bnlab.models.graphs import GraphedStep
from bnlab.models.inference import accuracy
from bnlab.models.network import VARIANTS, Architecture, NetStack, initial_weights
from bnlab.models.probes import PROBE_SIZE, LayerStats, layer_stats, weight_grad_norms


@dataclass(frozen=True)
class TrainingSpec:
    """The study's knobs. Defaults are the study's: 50,000 batches of 60, sampled every 500."""

    learning_rate: float = 0.01
    training_batches: int = 50_000
    batches_per_sample: int = 500
    batch_size: int = 60
    weight_std: float = 0.05  # "good" initial weights; the study's "bad" ones are 5.0
    seed: int = 0


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


@dataclass(frozen=True)
class Sample:
    """One sample point: the nets still stepping, and every net diverged so far (and when)."""

    step: int
    nets: dict[str, NetSample]
    diverged_at: dict[str, int] = field(default_factory=dict)


TrainerEnd = Literal["finished", "cancelled"]


@dataclass(frozen=True)
class Net:
    label: str
    learning_rate: float


class Lane:
    """Nets of one stack (one variant), stepped together by one thread. On a GPU, the training
    step is captured as a CUDA graph (`graphs`), unless `cuda_graphs` is switched off."""

    cuda_graphs = True

    def __init__(self, stack: NetStack, nets: Sequence[Net], train: Split, spec: TrainingSpec):
        self.nets = {net.label: net for net in nets}
        self.train_split = train
        self.device = train.labels.device
        self.order = BatchOrder(len(train), spec.batch_size, spec.seed, self.device)
        self.diverged_at: dict[str, int] = {}
        self.frozen: dict[str, dict[str, Tensor]] = {}  # diverged nets, as they were
        self._mean_loss: list[float] | None = None  # per active net, since the last sample
        self._grad_norms: dict[str, list[float]] = {}  # per net and layer, at the last step
        self._use(stack, [net.label for net in nets])

    def _use(self, stack: NetStack, active: list[str]) -> None:
        self.stack = stack
        self.active = active
        self.optimizer = torch.optim.SGD(stack.parameters(), lr=1.0, foreach=True)
        rates = [self.nets[label].learning_rate for label in active]
        self._loss_weights = torch.tensor(rates, device=self.device)
        self._graph: GraphedStep | None = None  # captured at the first step on a GPU
        self._written_out: WrittenOutStep | None = None
        if active and backprop.applies(stack):
            self._written_out = WrittenOutStep(stack, self._loss_weights)
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
        losses = torch.empty(end_step - first_step, len(self.active), device=self.device)
        # The traced graph runs op by op under eager autograd: an optimizing executor would swap
        # in its own derivatives after a few calls, and a resumed run (traced afresh) would then
        # not be bit-identical to an uninterrupted one.
        with torch.jit.optimized_execution(False):
            for row, step in enumerate(range(first_step, end_step)):
                losses[row] = self._train_step(step, keep_grads=step == end_step - 1)
        # Read before a diverged net is taken out: rebuilding the stack drops the gradients.
        rates = [self.nets[label].learning_rate for label in self.active]
        norms = weight_grad_norms(self.stack, rates)
        self._grad_norms = dict(zip(self.active, norms, strict=True)) if norms else {}
        # Checked once per interval, not per step: a per-step check would stall on the device.
        # Nets are independent inside a stack, so a diverged one harms no other meanwhile.
        finite = torch.isfinite(losses).all(dim=0).tolist()
        if not all(finite):
            self._freeze_diverged(losses, finite, first_step)
            losses = losses[:, [i for i, ok in enumerate(finite) if ok]]
        self._mean_loss = losses.double().mean(dim=0).tolist()

    def _train_step(self, step: int, keep_grads: bool = True) -> Tensor:
        indices = self.order.indices(step)
        if self.device.type != "cuda" or not self.cuda_graphs:
            return self._step(indices, keep_grads)
        if self._graph is None:
            state = [*self.stack.parameters(), *self.stack.buffers()]
            self._graph = GraphedStep(self._step, state, indices)
        return self._graph.replay(indices)

    def _step(self, indices: Tensor, keep_grads: bool = True) -> Tensor:
        # index_select copies whole rows: 10x faster than advanced indexing here (3 vs 31 us)
        images = self.train_split.images.index_select(0, indices)
        labels = self.train_split.labels.index_select(0, indices)
        if self._written_out is not None:
            return self._written_out(images, labels, keep_grads)
        losses = self._losses(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        losses.dot(self._loss_weights).backward()
        self.optimizer.step()
        return losses.detach()

    def _freeze_diverged(self, losses: Tensor, finite: list[bool], first_step: int) -> None:
        """Take the nets whose loss turned non-finite out of the stack; the others carry on."""
        for index, label in enumerate(self.active):
            if not finite[index]:
                first_bad = int((~torch.isfinite(losses[:, index])).nonzero()[0])
                self.diverged_at[label] = first_step + first_bad + 1
                self.frozen[label] = self.stack.net_state(index)
        keep = [label for index, label in enumerate(self.active) if finite[index]]
        self._rebuild({label: self.net_state(label) for label in keep})

    def _rebuild(self, states: dict[str, dict[str, Tensor]]) -> None:
        """A stack of the nets in `states` (the ones still stepping), from those states."""
        if not states:  # every net of the lane diverged: no stack is left to step
            self.active = []
            return
        arch, variant, bn_impl = self.stack.arch, self.stack.variant, self.stack.bn_impl
        stack = NetStack.from_net_states(arch, variant, list(states.values()), bn_impl)
        self._use(stack.to(self.device), list(states))

    def net_state(self, label: str) -> dict[str, Tensor]:
        """One net's tensors (a diverged one as it was when its divergence was seen)."""
        if label in self.frozen:
            return self.frozen[label]
        return self.stack.net_state(self.active.index(label))

    def sample(self, validation: Split) -> dict[str, NetSample]:
        val_accuracy = accuracy(self.stack, validation, "population") if self.active else []
        stats = layer_stats(self.stack, validation.images[:PROBE_SIZE]) if self.active else []
        mean_loss, grad_norms = self._mean_loss, self._grad_norms
        self._mean_loss, self._grad_norms = None, {}
        return {
            label: NetSample(
                val_accuracy[i],
                mean_loss[i] if mean_loss else None,
                _layer_samples(stats[i], grad_norms.get(label)),
            )
            for i, label in enumerate(self.active)
        }

    def restore(self, states: dict[str, dict[str, Tensor]], diverged_at: dict[str, int]) -> None:
        self.diverged_at = {
            label: diverged_at[label] for label in self.nets if label in diverged_at
        }
        self.frozen = {label: states[label] for label in self.diverged_at}
        self._rebuild(
            {label: states[label] for label in self.nets if label not in self.diverged_at}
        )


def _layer_samples(
    stats: list[LayerStats], grad_norms: list[float] | None
) -> tuple[LayerSample, ...]:
    norms = grad_norms or [None] * len(stats)
    return tuple(LayerSample(s, g) for s, g in zip(stats, norms, strict=True))


class _Losses(nn.Module):
    """Each net's mean cross-entropy on a batch of uint8 images: a training step's forward."""

    def __init__(self, stack: NetStack) -> None:
        super().__init__()
        self.stack = stack

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        logits = self.stack(to_inputs(images), "train")
        size = logits.shape[0]
        targets = labels.expand(size, -1).flatten()  # a view for a lone net, no copy
        losses = F.cross_entropy(logits.flatten(0, 1), targets, reduction="none")
        return losses.view(size, -1).mean(dim=1)


def _traced_losses(stack: NetStack, train: Split, batch_size: int) -> torch.jit.ScriptModule:
    """The forward as one TorchScript graph. Eager, each of its ~60 small ops takes and drops
    the GIL, and lanes in threads then run one at a time; traced, a lane holds the GIL only to
    call the graph, and the lanes really run side by side. Same ops, same results."""
    buffers = [buffer.clone() for buffer in stack.buffers()]
    example = (train.images[:batch_size], train.labels[:batch_size])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about sizes: batches have one size
        traced = torch.jit.trace(_Losses(stack), example, check_trace=False)
    with torch.no_grad():  # tracing ran one training forward: undo its BN statistics update
        for buffer, before in zip(stack.buffers(), buffers, strict=True):
            buffer.copy_(before)
    return traced


class Trainer:
    """Trains lanes of nets in lockstep, reporting a `Sample` at every sample point."""

    def __init__(self, lanes: Sequence[Lane], validation: Split, spec: TrainingSpec) -> None:
        self.lanes = list(lanes)
        self.validation = validation
        self.spec = spec
        self.step = 0

    @property
    def labels(self) -> list[str]:
        return [label for lane in self.lanes for label in lane.nets]

    @property
    def diverged_at(self) -> dict[str, int]:
        return {label: step for lane in self.lanes for label, step in lane.diverged_at.items()}

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
            return lane.sample(self.validation)

        nets = {
            k: v for samples in pool.map(train_and_sample, self.lanes) for k, v in samples.items()
        }
        self.step = end
        return Sample(self.step, nets, self.diverged_at)

    def net_state(self, label: str) -> dict[str, Tensor]:
        return next(lane.net_state(label) for lane in self.lanes if label in lane.nets)

    def state(self) -> tuple[dict[str, Tensor], dict[str, object]]:
        """Tensors and metadata of the whole training state at a sample point."""
        tensors = {
            f"{label}/{name}": tensor
            for label in self.labels
            for name, tensor in self.net_state(label).items()
        }
        return tensors, {"step": self.step, "diverged_at": self.diverged_at}

    def restore(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Continue from a `state()`: the same weights, BN buffers, step and diverged nets."""
        states: dict[str, dict[str, Tensor]] = {label: {} for label in self.labels}
        for key, tensor in tensors.items():
            label, name = key.split("/", 1)
            states[label][name] = tensor
        diverged_at = {label: int(step) for label, step in meta["diverged_at"].items()}
        for lane in self.lanes:
            lane.restore(states, diverged_at)
        self.step = int(meta["step"])


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


def paired_trainer(
    arch: Architecture,
    spec: TrainingSpec,
    splits: Splits,
    device: torch.device,
    bn_impl: BNImpl = "bnlab",
) -> Trainer:
    """The study's pair, `plain` and `bn`, from copies of the same initial weights, a lane each."""
    weights = initial_weights(arch, spec.weight_std, spec.seed)
    train = splits.train.to(device)
    lanes = [
        Lane(
            NetStack(arch, variant, [weights], bn_impl).to(device),
            [Net(variant, spec.learning_rate)],
            train,
            spec,
        )
        for variant in VARIANTS
    ]
    return Trainer(lanes, splits.validation.to(device), spec)


def first_step_reaching(
    steps: Sequence[int], accuracies: Sequence[float], level: float
) -> int | None:
    """The first sampled step whose validation accuracy reached `level`, or None."""
    return next((s for s, a in zip(steps, accuracies, strict=True) if a >= level), None)
