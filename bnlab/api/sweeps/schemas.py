"""What /sweeps returns, as pydantic models (the OpenAPI document is made from these).

The request body, `SweepRequest`, lives in `bnlab.sweeps` with the grid's expansion."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from bnlab.api.experiments.schemas import Annotations, Progress
from bnlab.vocabulary import Status, Variant

Verdict = Literal["BN better", "same", "BN worse"]
# A variant against the row's reference variant, by test accuracy.
Outcome = Literal["better", "same", "worse"]


class SweepCell(BaseModel):
    """One cell: an ordinary experiment, also listed under /experiments."""

    id: int
    url: str = Field(description="The experiment's URL: its curve, results and checkpoints.")
    status: Status
    values: dict[str, Any] = Field(description="The cell's values of the sweep's varying fields.")
    progress: Progress
    error: str | None


class SweepProgress(BaseModel):
    steps_done: int = Field(description="Training steps done, summed over the cells.")
    steps_total: int
    fraction: float


class SweepOut(Annotations):
    id: int
    status: Status = Field(
        description="queued or running until every cell has finished; then succeeded when all "
        "cells did, else failed (if any failed) or cancelled."
    )
    spec: dict[str, Any] = Field(description="The sweep as posted.")
    created_at: datetime
    cancel_requested: bool
    varying: list[str] = Field(description="The experiment fields whose value differs by cell.")
    counts: dict[Status, int] = Field(description="Cells per status.")
    progress: SweepProgress
    cells: list[SweepCell]
    notice: str | None = Field(
        description="Something a person should do, e.g. start a worker for the cells' queue."
    )


class SweepSummary(Annotations):
    """A sweep in a list: its status and how far its cells are."""

    id: int
    url: str
    status: Status
    created_at: datetime
    cells: int
    counts: dict[Status, int] = Field(description="Cells per status.")
    progress: SweepProgress


class SweepPage(BaseModel):
    items: list[SweepSummary]
    total: int = Field(description="How many sweeps there are, on all pages.")
    limit: int
    offset: int


class VariantSummary(BaseModel):
    """One variant (plain or bn) over the row's finished seeds. With one seed the values are
    that experiment's; with several, means, sample standard deviations and fractions."""

    final_val_accuracy: float | None = Field(
        default=None, description="Mean over the seeds whose net did not diverge."
    )
    final_val_accuracy_std: float | None = Field(
        default=None, description="Null with fewer than 2."
    )
    test_accuracy: float | None = Field(
        default=None, description="Mean over the seeds whose net did not diverge."
    )
    test_accuracy_std: float | None = Field(default=None, description="Null with fewer than 2.")
    steps_to_90: int | float | None = Field(
        default=None,
        description="Steps to 0.90 validation accuracy: mean over the seeds that got there.",
    )
    steps_to_95: int | float | None = Field(default=None, description="The same for 0.95.")
    reached_90: float | None = Field(
        default=None, description="Fraction of seeds whose net reached 0.90 validation accuracy."
    )
    diverged_at_step: int | None = Field(
        default=None,
        description="The step its loss turned non-finite (the earliest over the seeds).",
    )
    diverged: float | None = Field(
        default=None, description="Fraction of seeds whose net diverged."
    )


class Comparison(BaseModel):
    """One variant against its row's reference variant (`ReportRow.against`)."""

    test_accuracy_gain: float | None = Field(
        default=None, description="Its mean test accuracy minus the reference's."
    )
    verdict: Outcome | None = Field(
        default=None, description="As `ReportRow.verdict`, for this variant. Null until done."
    )
    speedup_90: float | None = Field(
        default=None,
        description="The reference's steps to 0.90 divided by this variant's; null unless both "
        "got there.",
    )


class WhyNumbers(BaseModel):
    """One variant's measurements of why BN helps over the row's probed steps and seeds (where
    the cells ran probes, see /experiments/{id}/landscape and /sharpness)."""

    beta_smoothness: float | None = Field(
        default=None, description="The median effective beta-smoothness."
    )
    sharpness: float | None = Field(
        default=None, description="The median top Hessian eigenvalue (against 2/lr)."
    )


class ReportRow(BaseModel):
    values: dict[str, Any] = Field(description="The row's values of the varying fields.")
    experiment_ids: list[int] = Field(description="Its cells: one per seed.")
    seeds: list[int]
    done: int = Field(description="How many of its cells have succeeded (and are summarized).")
    plain: VariantSummary
    bn: VariantSummary
    test_accuracy_gain: float | None = Field(
        default=None,
        description="bn's mean test accuracy minus plain's (a net that diverged has none).",
    )
    verdict: Verdict | None = Field(
        default=None,
        description="By test accuracy: `same` within the report's tolerance; a variant whose "
        "nets all diverged loses to one that trained. Null until a cell is done.",
    )
    speedup_90: float | None = Field(
        default=None,
        description="plain's steps to 0.90 divided by bn's; null unless both got there.",
    )
    variants: dict[Variant, VariantSummary] = Field(
        default_factory=dict,
        description="Every variant the row's cells trained (`plain` and `bn` above are empty "
        "where they trained none).",
    )
    against: Variant | None = Field(
        default=None,
        description="What `comparisons` compare with: `plain` where the cells trained it, else "
        "the first variant they trained.",
    )
    comparisons: dict[Variant, Comparison] = Field(
        default_factory=dict, description="Each other variant against `against`."
    )
    why: dict[Variant, WhyNumbers] = Field(
        default_factory=dict, description="Where the cells ran probes: per variant, medians."
    )
    beta_smoothness_plain_over_bn: float | None = Field(
        default=None,
        description="plain's median beta-smoothness over bn's: how many times rougher the "
        "landscape is without BN (Santurkar et al.); null unless both were probed.",
    )


class SweepReport(BaseModel):
    sweep_id: int
    complete: bool = Field(description="False while cells are still queued or running.")
    counts: dict[Status, int] = Field(description="Cells per status.")
    columns: list[str] = Field(description="The varying fields, as in each row's `values`.")
    tolerance: float = Field(description="Test-accuracy difference still called `same`.")
    rows: list[ReportRow] = Field(description="One per cell, or per cell over its seeds.")
