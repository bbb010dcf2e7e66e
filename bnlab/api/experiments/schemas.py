"""What the API takes and returns, as pydantic models: the OpenAPI document is made from these.

`ExperimentSpec` (the POST body) lives in `bnlab.spec` because the worker reads it too.
"""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, JsonValue, Tag

from bnlab.store.tables import Annotatable, CurvePoint, Experiment, Run
from bnlab.vocabulary import VARIANTS, Mode, Queue, Status, Variant

# Experiment ids are an INTEGER column (32 bits on PostgreSQL): a larger number in a URL is a
# 422, not a database overflow error.
MAX_ID = 2**31 - 1


class Message(BaseModel):
    """An error, said for a person."""

    detail: str


class Progress(BaseModel):
    step: int
    total: int
    steps_per_second: float | None
    eta_seconds: float | None

    @classmethod
    def of(cls, experiment: Experiment) -> "Progress":
        """How far an experiment's training is: the one mapping from its row."""
        return cls(
            step=experiment.progress_step,
            total=experiment.progress_total,
            steps_per_second=experiment.steps_per_second,
            eta_seconds=experiment.eta_seconds,
        )


class RunResults(BaseModel):
    """One variant's outcome; each value stays null until the worker knows it."""

    final_val_accuracy: float | None = None
    test_accuracy: float | None = None
    test_accuracy_batch_stats: float | None = Field(
        default=None, description="Test accuracy with BN using each test batch's own statistics."
    )
    steps_to_90: int | None = None
    steps_to_95: int | None = None
    diverged_at_step: int | None = None

    @classmethod
    def from_run(cls, run: Run | None) -> "RunResults":
        if run is None:
            return cls()
        return cls(
            final_val_accuracy=run.final_val_accuracy,
            test_accuracy=run.test_accuracy,
            test_accuracy_batch_stats=run.test_accuracy_batch_stats,
            steps_to_90=run.steps_to_90,
            steps_to_95=run.steps_to_95,
            diverged_at_step=run.diverged_at_step,
        )


class Annotations(BaseModel):
    """What a person wrote on an experiment or a sweep (PATCH sets it)."""

    name: str | None = Field(default=None, description="A name a person gave it.")
    notes: str = Field(default="", description="Markdown.")
    tags: list[str] = Field(default_factory=list, description="In alphabetical order.")

    @classmethod
    def of(cls, row: Annotatable) -> dict[str, Any]:
        """The fields, for a model that has them."""
        return {"name": row.name, "notes": row.notes, "tags": row.tags}


class Change(BaseModel):
    parent: JsonValue = Field(description="The parent's value.")
    fork: JsonValue = Field(description="The fork's.")


class ForkedFrom(BaseModel):
    """Where a fork continues another experiment (POST /experiments/{id}/fork)."""

    id: int | None = Field(description="The parent; null once it was deleted.")
    step: int = Field(description="The parent's sample point it starts from.")
    changes: dict[str, Change] = Field(
        description="The spec fields it changed there; none: the parent's run, continued."
    )

    @classmethod
    def of(cls, experiment: Experiment) -> "ForkedFrom | None":
        if experiment.fork_step is None:
            return None
        changes = experiment.fork_changes or {}
        return cls(id=experiment.parent_id, step=experiment.fork_step, changes=changes)


class ExperimentOut(Annotations):
    id: int
    status: Status
    queue: Queue
    # As stored: the spec the job was made from, even if the schema has moved on since.
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool = Field(
        description="A cancel was asked for; a running job stops at its next sample point."
    )
    progress: Progress
    results: dict[Variant, RunResults]
    error: str | None = Field(description="Why the experiment failed.")
    notice: str | None = Field(
        description="Something a person should do, e.g. start a worker for the experiment's queue."
    )
    sweep_id: int | None = Field(default=None, description="The sweep it is a cell of, if any.")
    provenance: dict[str, Any] | None = Field(
        default=None,
        description="What trained it, as its worker recorded it: bnlab (version, git commit), "
        "python, torch, cuda, device, cpu (model, capability, kernel variables), bn_impl, "
        "dataset (name, files' sha256), seed. Null before a worker took it.",
    )
    imported_from: dict[str, Any] | None = Field(
        default=None,
        description="For an experiment taken in from a bundle: its id where it came from, "
        "the bundle's file name and sha256, the bnlab that made it, when it was imported.",
    )
    parent: ForkedFrom | None = Field(default=None, description="What it is a fork of, if any.")
    forks: list[int] | None = Field(
        default=None,
        description="The experiments forked from it, oldest first (null in lists).",
    )
    kept_steps: list[int] | None = Field(
        default=None,
        description="The sample points whose training state it kept: the steps it can be "
        "forked from (null in lists).",
    )

    @classmethod
    def from_row(cls, experiment: Experiment, notice: str | None = None) -> "ExperimentOut":
        runs = {run.variant: run for run in experiment.runs}
        return cls(
            id=experiment.id,
            status=experiment.status,
            queue=experiment.queue,
            spec=experiment.spec,
            created_at=experiment.created_at,
            started_at=experiment.started_at,
            finished_at=experiment.finished_at,
            cancel_requested=experiment.cancel_requested,
            progress=Progress.of(experiment),
            results={v: RunResults.from_run(runs[v]) for v in VARIANTS if v in runs},
            error=experiment.error,
            notice=notice,
            sweep_id=experiment.sweep_id,
            provenance=experiment.provenance,
            imported_from=experiment.imported_from,
            parent=ForkedFrom.of(experiment),
            **Annotations.of(experiment),
        )


class ExperimentPage(BaseModel):
    items: list[ExperimentOut]
    total: int = Field(description="How many experiments match, on all pages.")
    limit: int
    offset: int


class Series(BaseModel):
    step: list[int]
    val_accuracy: list[float]
    train_loss: list[float | None] = Field(description="Null at step 0 and where not finite.")

    @classmethod
    def from_points(cls, points: list[CurvePoint]) -> "Series":
        return cls(
            step=[point.step for point in points],
            val_accuracy=[point.val_accuracy for point in points],
            train_loss=[point.train_loss for point in points],
        )


class Curve(BaseModel):
    series: dict[Variant, Series]


# A pixel as the nets take it: MNIST's uint8 divided by 255, white digit on black.
Pixel = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def _digit_one() -> list[JsonValue]:
    """A crude '1' for the docs' example: a vertical bar, white on black."""
    return [
        [1.0 if 12 <= column <= 15 and 4 <= row <= 23 else 0.0 for column in range(28)]
        for row in range(28)
    ]


def pixels_depth(value: Any) -> str | None:
    """How deeply `pixels` nests: "1" (784 numbers), "2" (28 rows, or a batch of flat images),
    "3" (a batch of 28x28 images); None for anything else."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        if not value:
            break
        value = value[0]
    return str(depth) if 1 <= depth <= 3 else None


class PixelsBody(BaseModel):
    """Images as numbers: 784 values, or 28 rows of 28, each in [0, 1]; a list of such images is
    a batch (and gets a list of predictions)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"pixels": _digit_one()}, {"pixels": [_digit_one(), _digit_one()]}]
        },
    )

    # Discriminated by depth, so an error names the offending number in the one shape that was
    # meant, not once per shape. `uploads.parse_pixels` has faster single-shape twins.
    pixels: Annotated[
        Annotated[list[Pixel], Tag("1")]
        | Annotated[list[list[Pixel]], Tag("2")]
        | Annotated[list[list[list[Pixel]]], Tag("3")],
        Discriminator(
            pixels_depth,
            custom_error_type="pixels_shape",
            custom_error_message="must be 784 numbers, 28 rows of 28, or a list of such images",
        ),
        Field(description="784 numbers, 28 rows of 28, or a list of either (a batch), in [0, 1]."),
    ]


class PredictQuery(BaseModel):
    """/predict's query parameters."""

    # A misspelt parameter (`?modes=batch`) must not silently fall back to the default.
    model_config = ConfigDict(extra="forbid")

    experiment_id: int = Field(ge=1, le=MAX_ID, description="A succeeded experiment's id.")
    variant: Variant = Field(default="bn", description="Which of the pair answers.")
    mode: Mode = Field(
        default="population",
        description="BN's statistics: `population` (running statistics, as served models "
        "should), `batch` (those of the images sent; one image collapses every answer to the "
        "same class), `fused` (population, with BN folded into the weights).",
    )
    version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ID,
        description="The checkpoint version: 1 as trained, 2 and up made by "
        "POST /experiments/{id}/recalibrate. Default: the latest.",
    )


class PredictionOut(BaseModel):
    prediction: int = Field(description="The most probable class, 0-9.")
    probabilities: list[float] = Field(description="Softmax over the 10 classes.")
    mode: Mode
    variant: Variant
    mode_applies: bool = Field(
        description="False for the plain net: it has no BN, so every mode gives the same answer."
    )


class Health(BaseModel):
    database: str = Field(description='"ok", or what is wrong.')
    broker: str = Field(description='"ok", or what is wrong.')
    workers: dict[Queue, int] | None = Field(
        description="Live workers per queue; null when the database cannot say."
    )
    worker: str | None = Field(
        default=None,
        description="Under `bnlab up`: why it stopped restarting its worker (then 503); "
        "null otherwise.",
    )
