"""Inference in BN's three ways.

- ``population``: BN uses its running (population) statistics, as a served model should.
- ``batch``: BN normalizes with the statistics of exactly the images given and leaves the running
  statistics alone. One image has zero variance, so every BN output equals beta and every image
  gets the same prediction: the collapse the study shows.
- ``fused``: ``population`` with BN folded into the preceding layer's weight and bias, so serving
  runs a plain net.

Only the variants whose output depends on the batch (`bn`, `bn_after`, `bn_noisy`) have modes:
the others (`plain`, `layer_norm`, `group_norm`) answer the same in every mode, and
`Prediction.mode_applies` says so. A `bn_noisy` net serves as a `bn` net (its noise is for
training only). ``fused`` folds a `bn` or `bn_noisy` net's BN into the layer before it; a
`bn_after` net's BN sits after the activation, with nothing linear right before it to fold into
(and zero padding and max-pooling between it and the next conv), so ``fused`` serves it as
``population``, which it equals.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from bnlab.models.batchnorm import EPSILON
from bnlab.models.data import Split, to_inputs
from bnlab.models.network import NetStack, Stack
from bnlab.vocabulary import Mode


@dataclass(frozen=True)
class Prediction:
    classes: list[int]
    probabilities: list[list[float]]
    mode: Mode
    mode_applies: bool  # False where no BN depends on the batch: every mode is the same


@torch.no_grad()
def logits(stack: Stack, images: Tensor, mode: Mode) -> Tensor:
    """Logits (net, image, class) for uint8 or [0, 1] float images (N, 28, 28)."""
    inputs = to_inputs(images) if images.dtype == torch.uint8 else images
    if mode == "fused" and stack.foldable:
        stack = fuse(stack)
    result: Tensor = stack(inputs, "batch" if mode == "batch" else "population")
    return result


class ServedNet:
    """One net ready to serve: its stack in eval mode, and its BN-fused twin, made once."""

    def __init__(self, stack: Stack) -> None:
        assert stack.size == 1, "a served net is a stack of one"
        self.stack = stack.eval()
        self.fused = fuse(stack) if stack.foldable else self.stack

    @property
    def mode_applies(self) -> bool:
        """Whether the mode changes this net's answers: only where they depend on the batch."""
        return self.stack.depends_on_batch

    def predict(self, images: Tensor, mode: Mode) -> Prediction:
        """Predictions for a batch of images (N, 28, 28)."""
        stack = self.fused if mode == "fused" else self.stack
        probabilities = logits(stack, images, mode)[0].softmax(dim=1)
        return Prediction(
            classes=probabilities.argmax(dim=1).tolist(),
            probabilities=probabilities.tolist(),
            mode=mode,
            mode_applies=self.mode_applies,
        )


def accuracy(stack: Stack, split: Split, mode: Mode, batch_size: int = 1000) -> list[float]:
    """Each net's accuracy on a whole split, evaluated `batch_size` images at a time (in `batch`
    mode the batch size is what decides the statistics, so it matters)."""
    correct = torch.zeros(stack.size, dtype=torch.long, device=split.labels.device)
    for start in range(0, len(split), batch_size):
        chunk = slice(start, start + batch_size)
        guesses = logits(stack, split.images[chunk], mode).argmax(dim=2)
        correct += (guesses == split.labels[chunk]).sum(dim=1)
    return (correct.double() / len(split)).tolist()


@torch.no_grad()
def fuse(stack: Stack) -> NetStack:
    """The same nets with BN folded into the layer before it: W' = W * s, b' = beta - mean * s,
    s = gamma / sqrt(running_var + eps). Equal to ``population`` up to float rounding."""
    states = [_fused_state(stack.net_state(i), stack) for i in range(stack.size)]
    fused = NetStack.from_net_states(stack.arch, "plain", states, stack.bn_impl)
    return fused.to(stack.output_bias.device).eval()


def _fused_state(state: dict[str, Tensor], stack: Stack) -> dict[str, Tensor]:
    n_hidden = len(stack.arch.weight_shapes()) - 1
    if "bn.0.gamma" not in state:
        return state
    fused = {"output_bias": state["output_bias"], f"weight.{n_hidden}": state[f"weight.{n_hidden}"]}
    for i in range(n_hidden):
        scale = state[f"bn.{i}.gamma"] * torch.rsqrt(state[f"bn.{i}.running_var"] + EPSILON)
        weight = state[f"weight.{i}"]  # (out, in) or (out, in, k, k): scale each output
        fused[f"weight.{i}"] = weight * scale.view(-1, *[1] * (weight.dim() - 1))
        fused[f"bias.{i}"] = state[f"bn.{i}.beta"] - state[f"bn.{i}.running_mean"] * scale
    return fused
