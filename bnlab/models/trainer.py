"""The paired trainer: nets stepping in lockstep on one reproducible sequence of mini-batches.

Every net of a `NetStack` sees the same batches. Plain SGD: each net's loss is weighted by its
own learning rate and torch's SGD steps with lr 1, which is the same update with one optimizer
for the whole stack. Every `batches_per_sample` steps (and at step 0, before any training) the
trainer reports each net's validation accuracy with population statistics and its mean training
loss since the last report. A net whose loss turns non-finite is `diverged`: it is taken out of
the stack and frozen while the others carry on.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.models.batchnorm import BNImpl
from bnlab.models.data import BatchOrder, Split, Splits, to_inputs
from bnlab.models.inference import accuracy
from bnlab.models.network import VARIANTS, Architecture, NetStack, Variant, initial_weights


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
class NetSample:
    val_accuracy: float
    train_loss: float | None  # mean since the last sample; None at step 0


@dataclass(frozen=True)
class Sample:
    """One sample point: the nets still stepping, and every net diverged so far (and when)."""

    step: int
    nets: dict[str, NetSample]
    diverged_at: dict[str, int] = field(default_factory=dict)


TrainerEnd = Literal["finished", "cancelled"]


class Trainer:
    """Trains the nets of a stack, named by `labels`, with one learning rate each."""

    def __init__(
        self,
        stack: NetStack,
        labels: Sequence[str],
        learning_rates: Sequence[float],
        splits: Splits,
        spec: TrainingSpec,
    ) -> None:
        self.device = stack.output_bias.device
        self.spec = spec
        self.labels = list(labels)
        self.variants = dict(zip(self.labels, stack.variants, strict=True))
        self.learning_rates = dict(zip(self.labels, learning_rates, strict=True))
        self.train = splits.train.to(self.device)
        self.validation = splits.validation.to(self.device)
        self.order = BatchOrder(len(self.train), spec.batch_size, spec.seed, self.device)
        self.step = 0
        self.diverged_at: dict[str, int] = {}
        self.frozen: dict[str, dict[str, Tensor]] = {}  # diverged nets, as they were
        self._loss_sum = torch.zeros(len(self.labels), device=self.device, dtype=torch.float64)
        self._loss_steps = 0
        self._use(stack, self.labels)

    def _use(self, stack: NetStack, active: list[str]) -> None:
        self.stack = stack
        self.active = active
        self.optimizer = torch.optim.SGD(stack.parameters(), lr=1.0, foreach=True)
        self._loss_weights = torch.tensor([self.learning_rates[n] for n in active]).to(self.device)

    def run(
        self,
        on_sample: Callable[[Sample], None],
        should_cancel: Callable[[], bool] = lambda: False,
    ) -> TrainerEnd:
        """Train to `training_batches`, from wherever the trainer stands (0 or a resumed step)."""
        if self.step == 0:
            on_sample(self._sample())
        while self.step < self.spec.training_batches:
            if not self.active:  # every net diverged: nothing left to train
                self.step = self.spec.training_batches
                on_sample(self._sample())
                break
            self._train_step()
            if self.step % self.spec.batches_per_sample == 0 or (
                self.step == self.spec.training_batches
            ):
                on_sample(self._sample())
                if self.step < self.spec.training_batches and should_cancel():
                    return "cancelled"
        return "finished"

    def _train_step(self) -> None:
        indices = self.order.indices(self.step)
        images, labels = self.train.images[indices], self.train.labels[indices]
        logits = self.stack(to_inputs(images), "train")
        losses = F.cross_entropy(
            logits.flatten(0, 1), labels.repeat(len(self.active)), reduction="none"
        ).view(len(self.active), -1).mean(dim=1)
        self.optimizer.zero_grad(set_to_none=True)
        (losses * self._loss_weights).sum().backward()
        self.optimizer.step()
        self.step += 1
        self._loss_sum += losses.detach()
        self._loss_steps += 1
        if not torch.isfinite(losses).all():
            self._freeze_diverged(torch.isfinite(losses).tolist())

    def _freeze_diverged(self, finite: list[bool]) -> None:
        """Take the nets whose loss is not finite out of the stack; the others carry on."""
        for index, label in enumerate(self.active):
            if not finite[index]:
                self.diverged_at[label] = self.step
                self.frozen[label] = self.stack.net_state(index)
        keep = [i for i, ok in enumerate(finite) if ok]
        self._loss_sum = self._loss_sum[keep]
        self._rebuild_stack([self.active[i] for i in keep])

    def _rebuild_stack(self, active: list[str], states: dict[str, dict[str, Tensor]] | None = None) -> None:
        """A stack of the `active` nets only, from their current (or the given) states."""
        states = states or {label: self.net_state(label) for label in active}
        variants = [self.variants[label] for label in active]
        stack = NetStack.from_net_states(
            self.stack.arch, variants, [states[label] for label in active], self.stack.bn_impl
        )
        self._use(stack.to(self.device), active)

    def net_state(self, label: str) -> dict[str, Tensor]:
        """One net's tensors (frozen ones as they were when they diverged)."""
        if label in self.frozen:
            return self.frozen[label]
        return self.stack.net_state(self.active.index(label))

    def _sample(self) -> Sample:
        val_accuracy = accuracy(self.stack, self.validation, "population") if self.active else []
        mean_loss = (self._loss_sum / max(self._loss_steps, 1)).tolist()
        nets = {
            label: NetSample(
                val_accuracy=val_accuracy[i],
                train_loss=mean_loss[i] if self._loss_steps else None,
            )
            for i, label in enumerate(self.active)
        }
        self._loss_sum.zero_()
        self._loss_steps = 0
        return Sample(self.step, nets, dict(self.diverged_at))

    # Saving and restoring: enough to continue exactly where a sample point left off.

    def state(self) -> tuple[dict[str, Tensor], dict[str, object]]:
        """Tensors and metadata of the whole training state, as of the last sample point."""
        assert self._loss_steps == 0, "state is taken at sample points"
        tensors = {
            f"{label}/{name}": tensor
            for label in self.labels
            for name, tensor in self.net_state(label).items()
        }
        return tensors, {"step": self.step, "diverged_at": self.diverged_at}

    def restore(self, tensors: dict[str, Tensor], meta: dict) -> None:
        states = {label: {} for label in self.labels}
        for key, tensor in tensors.items():
            label, name = key.split("/", 1)
            states[label][name] = tensor.to(self.device)
        self.step = int(meta["step"])
        self.diverged_at = {k: int(v) for k, v in meta["diverged_at"].items()}
        self.frozen = {label: states[label] for label in self.diverged_at}
        self._loss_sum = torch.zeros(len(self.labels) - len(self.frozen), device=self.device, dtype=torch.float64)
        active = [label for label in self.labels if label not in self.diverged_at]
        self._rebuild_stack(active, states)


def paired_trainer(
    arch: Architecture,
    spec: TrainingSpec,
    splits: Splits,
    device: torch.device,
    bn_impl: BNImpl = "bnlab",
) -> Trainer:
    """The study's pair: `plain` and `bn`, from copies of the same initial weights."""
    weights = initial_weights(arch, spec.weight_std, spec.seed)
    stack = NetStack(arch, VARIANTS, [weights, weights], bn_impl).to(device)
    return Trainer(stack, VARIANTS, [spec.learning_rate] * 2, splits, spec)


def first_step_reaching(steps: Sequence[int], accuracies: Sequence[float], level: float) -> int | None:
    """The first sampled step whose validation accuracy reached `level`, or None."""
    return next((s for s, a in zip(steps, accuracies, strict=True) if a >= level), None)

