"""The study's words, defined once. Torch-free: the ORM, the API's schemas, the spec, the CLI,
the report and the engine all import their names and their lists of allowed values from here.

Each word is a `Literal` type (what type checkers and pydantic see) and the tuple of its values
(what code iterates over and what the database's CHECK constraints list), the tuple derived
from the type so the two cannot drift apart.
"""

from typing import Literal, get_args

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = get_args(Status)
# An experiment in one of these has ended: nothing will change it again.
TERMINAL: frozenset[Status] = frozenset({"succeeded", "failed", "cancelled"})

# The kinds of net an experiment trains side by side, from copies of the same initial weights:
# without normalization; BN before every hidden activation; BN after it; LayerNorm, resp.
# GroupNorm, before it; BN before it with noise added in training (Santurkar et al. 2018's noisy
# BatchNorm: a new mean and variance every step).
Variant = Literal["plain", "bn", "bn_after", "layer_norm", "group_norm", "bn_noisy"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
# The study's pair: what an experiment trains unless it asks for other variants.
STUDY_VARIANTS: tuple[Variant, ...] = ("plain", "bn")
# The variants whose output for one image depends on the other images of its batch (BN's batch
# statistics): only for these do the `population` and `batch` modes differ.
BATCH_DEPENDENT: frozenset[Variant] = frozenset({"bn", "bn_after", "bn_noisy"})

# Which statistics BN normalizes with at inference: the running (population) estimate, the
# batch at hand's, or the population ones folded into the preceding layer.
Mode = Literal["population", "batch", "fused"]
MODES: tuple[Mode, ...] = get_args(Mode)

# The broker queue a job waits in, and so the kind of worker that trains it.
Queue = Literal["cpu", "gpu"]
QUEUES: tuple[Queue, ...] = get_args(Queue)

Activation = Literal["relu", "sigmoid", "tanh", "leaky_relu", "elu"]
ACTIVATIONS: tuple[Activation, ...] = get_args(Activation)

Dataset = Literal["mnist", "fashion-mnist"]
DATASETS: tuple[Dataset, ...] = get_args(Dataset)

# What reads the image: the study's MLP (with conv layers first if asked), or an LSTM reading
# it as a sequence (the study's last section), row by row (28 steps) or pixel by pixel (784).
ArchitectureKind = Literal["mlp", "rnn"]
ARCHITECTURES: tuple[ArchitectureKind, ...] = get_args(ArchitectureKind)
SequenceOrder = Literal["rows", "pixels"]
# The variants an rnn takes: no normalization, Cooijmans et al.'s BN per time step, LayerNorm.
RNN_VARIANTS: tuple[Variant, ...] = ("plain", "bn", "layer_norm")

# A sweep's named grid: "classic" is the study's table (activations x learning rates x weights);
# "why" measures why BN helps in its most telling cells (bnlab/sweeps.py).
Preset = Literal["classic", "why"]

# How a sweep's report is written out.
ReportFormat = Literal["json", "csv", "md"]
