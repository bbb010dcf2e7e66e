"""What a user asks for: one experiment of the study. Validated by the API, read by the worker."""

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bnlab.models.network import Architecture
from bnlab.models.trainer import TrainingSpec
from bnlab.models.why import MAX_ITERATIONS, STEP_MULTIPLES, TOLERANCE, Probes
from bnlab.vocabulary import (
    ARCHITECTURES,
    RNN_VARIANTS,
    STUDY_VARIANTS,
    VARIANTS,
    Activation,
    ArchitectureKind,
    Dataset,
    Queue,
    SequenceOrder,
    Variant,
)

GOOD_WEIGHT_STD = 0.05
BAD_WEIGHT_STD = 5.0
# What the study's datasets hold: the validation split is cut from the 60,000 training images.
TRAINING_IMAGES = 60_000


class ProbesSpec(BaseModel):
    """Which measurements of why BN helps run, per net, at every `every`-th sample point
    (`bnlab.models.why.Probes`). Off by default: an experiment costs what it did without them."""

    model_config = ConfigDict(extra="forbid")

    landscape: bool = Field(
        default=False,
        description="Along the gradient g of the next training batch (Santurkar et al. 2018, "
        "§3.1): the loss at theta - eta g and the gradient change "
        "||grad L(theta) - grad L(theta - eta g)|| on that batch for eta = the learning rate "
        f"times {', '.join(f'{m:g}' for m in STEP_MULTIPLES)}, and the effective "
        "beta-smoothness, the largest gradient change per unit of step (norms over all "
        "parameters).",
    )
    ics: bool = Field(
        default=False,
        description="Internal covariate shift per weight layer (Santurkar et al. Def. 2.1), on "
        "the same batch: the layer's weight gradient G, and G' after every earlier layer took "
        "its SGD step; ||G - G'|| and cos(G, G'). The first layer has none: 0 and 1.",
    )
    sharpness: bool = Field(
        default=False,
        description="The top eigenvalue of the training loss's Hessian on a fixed batch (step "
        "0's), beside 2 / learning rate, gradient descent's edge of stability (Cohen et al. "
        f"2021): Lanczos iteration on Hessian-vector products from a fixed random vector, at "
        f"most {MAX_ITERATIONS}, until the estimate changes by at most {TOLERANCE:g} "
        "relatively.",
    )
    every: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="At every N-th sample point, the first (step 0) included.",
    )

    def probes(self) -> Probes:
        return Probes(**self.model_dump())


class ExperimentSpec(BaseModel):
    """One experiment: its variants side by side, from the same initial weights. The defaults
    are the study's pair."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"activation": "relu", "learning_rate": 0.01, "use_bad_weights": False},
                {
                    "dataset": "fashion-mnist",
                    "activation": "sigmoid",
                    "learning_rate": 1.0,
                    "training_batches": 2000,
                    "batches_per_sample": 50,
                    "seed": 7,
                },
            ]
        },
    )

    dataset: Dataset = "mnist"
    activation: Activation = "relu"
    learning_rate: float = Field(default=0.01, gt=0, le=100, description="Plain SGD step size.")
    use_bad_weights: bool = Field(
        default=False,
        description="The study's 'bad' initial weights: normal with std 5.0 (else 0.05).",
    )
    weight_std: float | None = Field(
        default=None, gt=0, le=100, description="Any std for the normal initial weights instead."
    )
    training_batches: int = Field(default=50_000, ge=1, le=1_000_000)
    batches_per_sample: int = Field(
        default=500, ge=1, description="Validation accuracy sampled every N."
    )
    keep_states_every: int = Field(
        default=10,
        ge=1,
        description=(
            "Keep the training state of every k-th sample point (and always the last), to fork "
            "the experiment from there (POST /experiments/{id}/fork). Each kept state holds "
            "every net's weights and statistics: about 0.8 MB for the study's 784-100-100-100-10 "
            "pair, so 11 states, 8.8 MB, at the defaults (50,000 batches sampled every 500)."
        ),
    )
    batch_size: int = Field(
        default=60, ge=2, le=4096, description="BN cannot train on one example."
    )
    hidden_layers: list[int] = Field(default=[100, 100, 100], min_length=1, max_length=10)
    conv_channels: list[int] = Field(
        default=[],
        max_length=3,
        description="Conv layers before the MLP head, e.g. [8, 16]; [] = MLP.",
    )
    net: ArchitectureKind = Field(
        default="mlp",
        description=(
            f"The architecture, one of {', '.join(ARCHITECTURES)}: the study's MLP (after "
            "conv_channels' conv layers, if any), or an LSTM reading it as a sequence "
            "(rnn_hidden, sequence) and classifying from its last hidden state."
        ),
    )
    rnn_hidden: int = Field(default=100, ge=1, le=1024, description="An rnn's LSTM width.")
    sequence: SequenceOrder = Field(
        default="rows",
        description=(
            "How an rnn reads the image: rows (28 steps of 28 pixels) or pixels (784 steps of "
            "one: 28 times the steps, so about 28 times the training time)."
        ),
    )
    variants: list[Variant] = Field(
        default=list(STUDY_VARIANTS),
        min_length=1,
        description=(
            "The nets trained side by side from copies of the same initial weights, any of "
            f"{', '.join(VARIANTS)}: no normalization; BN before each hidden activation; BN "
            "after it; LayerNorm, resp. GroupNorm, before it."
        ),
    )
    groups: int | None = Field(
        default=None,
        ge=1,
        description=(
            "group_norm's groups in every hidden layer and conv layer; it must divide each "
            "width and channel count, 2 features a group or more. Default: the most, up to 32, "
            "that divide them all into groups of 4 or more."
        ),
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    # The queue that trains it: cpu or gpu workers.
    device: Queue = "cpu"
    validation_size: int = Field(default=5000, ge=100, le=TRAINING_IMAGES // 2)
    probes: ProbesSpec = Field(
        default_factory=ProbesSpec,
        description='Why BN helps, measured: e.g. {"landscape": true, "ics": true, '
        '"sharpness": true, "every": 5}; off by default.',
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.batches_per_sample > self.training_batches:
            raise ValueError(
                f"batches_per_sample ({self.batches_per_sample}) cannot exceed "
                f"training_batches ({self.training_batches})"
            )
        if self.use_bad_weights and self.weight_std is not None:
            raise ValueError("give either use_bad_weights or weight_std, not both")
        if not all(1 <= width <= 4096 for width in self.hidden_layers):
            raise ValueError("hidden_layers: each width must be between 1 and 4096")
        if not all(1 <= channels <= 256 for channels in self.conv_channels):
            raise ValueError("conv_channels: each count must be between 1 and 256")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants: each at most once, not {self.variants}")
        widths = [*self.conv_channels, *self.hidden_layers]
        # a group of one feature would normalize it to its beta, whatever the image
        too_small = any(width < 2 * (self.groups or 1) for width in self.hidden_layers)
        if self.groups is not None and (too_small or any(w % self.groups for w in widths)):
            raise ValueError(
                f"groups ({self.groups}) must divide every hidden width and conv channel count "
                f"({', '.join(map(str, widths))}) and leave a hidden layer's groups 2 features "
                f"or more: try {self._default_groups()}"
            )
        return self

    @model_validator(mode="after")
    def _recurrent(self) -> Self:
        # Fields of the other architecture are refused unless left at their defaults (a form
        # or a client sends every field).
        if self.net == "mlp":
            given = self._changed("rnn_hidden", "sequence")
            if given:
                raise ValueError(f'{", ".join(given)}: only for "net": "rnn"')
            return self
        others = [v for v in self.variants if v not in RNN_VARIANTS]
        if others:
            raise ValueError(
                f"variants: an rnn takes {', '.join(RNN_VARIANTS)}; not {', '.join(others)}"
            )
        given = self._changed("activation", "hidden_layers", "conv_channels", "groups")
        if given:
            raise ValueError(
                f"{', '.join(given)}: not for an rnn (an LSTM rnn_hidden units wide, with its "
                "own sigmoid gates and tanh): leave them out"
            )
        return self

    def _changed(self, *names: str) -> list[str]:
        """Those of `names` whose value is not their field's default."""
        fields = type(self).model_fields
        return [
            n for n in names if getattr(self, n) != fields[n].get_default(call_default_factory=True)
        ]

    def _default_groups(self) -> int:
        return Architecture(
            hidden_layers=tuple(self.hidden_layers), conv_channels=tuple(self.conv_channels)
        ).norm_groups()

    @property
    def initial_std(self) -> float:
        if self.weight_std is not None:
            return self.weight_std
        return BAD_WEIGHT_STD if self.use_bad_weights else GOOD_WEIGHT_STD

    def architecture(self) -> Architecture:
        if self.net == "rnn":
            hidden = self.rnn_hidden
            return Architecture("tanh", (), rnn_hidden=hidden, sequence=self.sequence)
        return Architecture(
            activation=self.activation,
            hidden_layers=tuple(self.hidden_layers),
            conv_channels=tuple(self.conv_channels),
            groups=self.groups,
        )

    def keeps_state(self, step: int, start: int = 0) -> bool:
        """Whether the training state at sample point `step` is kept: every
        `keep_states_every`-th sample point counted from `start` (0, or the step a fork starts
        from), and the last."""
        if step == self.training_batches:
            return True
        return (step - start) // self.batches_per_sample % self.keep_states_every == 0

    def training(self) -> TrainingSpec:
        return TrainingSpec(
            learning_rate=self.learning_rate,
            training_batches=self.training_batches,
            batches_per_sample=self.batches_per_sample,
            batch_size=self.batch_size,
            weight_std=self.initial_std,
            seed=self.seed,
        )
