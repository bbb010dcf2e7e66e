"""A sweep's report: per cell (or per cell over its seeds), how each variant did, and whether BN
helped. The same rows as JSON, CSV and Markdown.

Every variant is compared with `plain` where the cells trained it, else with the first variant
they trained (the row's `against`); the study's own verdict and speed-up (bn against plain)
keep their columns.

Cells that differ only in their seed share a row: means, sample standard deviations and the
fraction of seeds that reached 0.90, per variant; the study's "BN does not always work" as
numbers. Only succeeded cells are summarized; a report of a running sweep says `complete: false`.

Where the cells ran probes (the `why` preset), each variant's median beta-smoothness and
sharpness, and plain's beta-smoothness over bn's: why BN helped, in numbers.
"""

import csv
import io
import json
import statistics
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from bnlab.api.sweeps.schemas import (
    Comparison,
    Outcome,
    ReportRow,
    SweepReport,
    VariantSummary,
    Verdict,
    WhyNumbers,
)
from bnlab.store import queries
from bnlab.store.queries import run_of
from bnlab.store.tables import Experiment, Landscape, Run, Sharpness, Sweep
from bnlab.sweeps import varying_fields
from bnlab.vocabulary import STATUSES, STUDY_VARIANTS, TERMINAL, VARIANTS, Status, Variant

SUMMARY_FIELDS = tuple(VariantSummary.model_fields)
COMPARISON_FIELDS = tuple(Comparison.model_fields)
WHY_FIELDS = tuple(WhyNumbers.model_fields)
BN_VERDICTS: dict[Outcome, Verdict] = {"better": "BN better", "same": "same", "worse": "BN worse"}
# Per measurement (a `WhyNumbers` field), its known values per experiment and variant.
Probed = dict[str, dict[tuple[int, Variant], list[float]]]


def probed(session: Session, sweep: Sweep) -> Probed:
    """What the sweep's probes measured that the report summarizes (empty where none ran)."""
    ids = [experiment.id for experiment in sweep.experiments]
    columns = {"beta_smoothness": Landscape.beta_smoothness, "sharpness": Sharpness.eigenvalue}
    return {name: queries.probe_values(session, ids, column) for name, column in columns.items()}


def build(sweep: Sweep, tolerance: float, measured: Probed | None = None) -> SweepReport:
    experiments = list(sweep.experiments)
    columns = [f for f in varying_fields([e.spec for e in experiments]) if f != "seed"]
    rows: dict[str, list[Experiment]] = {}
    for experiment in experiments:
        key = json.dumps([experiment.spec.get(column) for column in columns])
        rows.setdefault(key, []).append(experiment)
    return SweepReport(
        sweep_id=sweep.id,
        complete=all(e.status in TERMINAL for e in experiments),
        counts=status_counts(experiments),
        columns=columns,
        tolerance=tolerance,
        rows=[_row(cells, columns, tolerance, measured or {}) for cells in rows.values()],
    )


def status_counts(experiments: Sequence[Experiment]) -> dict[Status, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for experiment in experiments:
        counts[experiment.status] += 1
    return counts


def _row(
    cells: list[Experiment], columns: list[str], tolerance: float, measured: Probed
) -> ReportRow:
    done = [cell for cell in cells if cell.status == "succeeded"]
    trained = cells[0].variants  # the cells of a row differ in their seed only
    summaries = {v: summarize([run_of(cell, v) for cell in done]) for v in trained}
    against = "plain" if "plain" in summaries else trained[0]
    comparisons = {
        variant: _comparison(summaries[against], summary, tolerance, bool(done))
        for variant, summary in summaries.items()
        if variant != against
    }
    study = comparisons.get("bn", Comparison()) if against == "plain" else Comparison()
    why = _why(done, trained, measured)
    return ReportRow(
        values={column: cells[0].spec.get(column) for column in columns},
        experiment_ids=[cell.id for cell in cells],
        seeds=[cell.spec.get("seed", 0) for cell in cells],
        done=len(done),
        plain=summaries.get("plain", VariantSummary()),
        bn=summaries.get("bn", VariantSummary()),
        test_accuracy_gain=study.test_accuracy_gain,
        verdict=BN_VERDICTS[study.verdict] if study.verdict else None,
        speedup_90=study.speedup_90,
        variants=summaries,
        against=against,
        comparisons=comparisons,
        why=why,
        beta_smoothness_plain_over_bn=_plain_over_bn(why, "beta_smoothness"),
    )


def _why(
    cells: list[Experiment], variants: list[Variant], measured: Probed
) -> dict[Variant, WhyNumbers]:
    """Per variant probed, the medians over the cells' probed steps."""
    numbers = {}
    for variant in variants:
        medians = {
            name: _median([v for cell in cells for v in values.get((cell.id, variant), [])])
            for name, values in measured.items()
        }
        if any(median is not None for median in medians.values()):
            numbers[variant] = WhyNumbers(**medians)
    return numbers


def _plain_over_bn(why: dict[Variant, WhyNumbers], name: str) -> float | None:
    plain, bn = (getattr(why.get(v, WhyNumbers()), name) for v in ("plain", "bn"))
    return plain / bn if plain is not None and bn else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _comparison(
    reference: VariantSummary, other: VariantSummary, tolerance: float, done: bool
) -> Comparison:
    if not done:
        return Comparison()
    gain, verdict = compare(reference, other, tolerance)
    return Comparison(
        test_accuracy_gain=gain,
        verdict=verdict,
        speedup_90=_speedup(reference.steps_to_90, other.steps_to_90),
    )


def summarize(runs: Sequence[Run]) -> VariantSummary:
    """One variant over the seeds of a row (its succeeded cells)."""
    if not runs:
        return VariantSummary()
    # A diverged net has no final or test accuracy: the means are over the nets that trained,
    # and `diverged` says how many did not.
    finals = [r.final_val_accuracy for r in runs if r.final_val_accuracy is not None]
    tests = [r.test_accuracy for r in runs if r.test_accuracy is not None]
    diverged = [r.diverged_at_step for r in runs if r.diverged_at_step is not None]
    return VariantSummary(
        final_val_accuracy=_mean(finals),
        final_val_accuracy_std=_std(finals),
        test_accuracy=_mean(tests),
        test_accuracy_std=_std(tests),
        steps_to_90=_mean([r.steps_to_90 for r in runs if r.steps_to_90 is not None]),
        steps_to_95=_mean([r.steps_to_95 for r in runs if r.steps_to_95 is not None]),
        reached_90=sum(r.steps_to_90 is not None for r in runs) / len(runs),
        diverged_at_step=min(diverged) if diverged else None,
        diverged=len(diverged) / len(runs),
    )


def compare(
    reference: VariantSummary, other: VariantSummary, tolerance: float
) -> tuple[float | None, Outcome]:
    """`other`'s mean test accuracy minus `reference`'s, and the verdict it gives at
    `tolerance`."""
    if reference.test_accuracy is None or other.test_accuracy is None:
        # Every seed's net diverged on one side (or both): the one that trained wins.
        if reference.test_accuracy is not None:
            return None, "worse"
        return None, "better" if other.test_accuracy is not None else "same"
    # Rounded: test accuracies are multiples of 1/10,000, and 0.98 - 0.97 must be "same" at 0.01.
    gain = round(other.test_accuracy - reference.test_accuracy, 9)
    if abs(gain) <= tolerance:
        return gain, "same"
    return gain, "better" if gain > 0 else "worse"


def _mean(values: Sequence[float | int]) -> float | None:
    if not values:
        return None
    return values[0] if len(values) == 1 else statistics.fmean(values)


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def _speedup(reference_steps: float | None, other_steps: float | None) -> float | None:
    if reference_steps is None or not other_steps:
        return None
    return reference_steps / other_steps


# CSV: one flat line per row, the same numbers as the JSON.


def to_csv(report: SweepReport) -> str:
    variants, others, probed = _variants_of(report), _beyond_the_pair(report), _probed(report)
    why_header = [f"{variant}_{name}" for variant in probed for name in WHY_FIELDS]
    header = [
        *report.columns,
        "seeds",
        "done",
        *(f"{variant}_{name}" for variant in variants for name in SUMMARY_FIELDS),
        "test_accuracy_gain",
        "verdict",
        "speedup_90",
        *(["against"] if others else []),
        *(f"{variant}_{name}" for variant in others for name in COMPARISON_FIELDS),
        *why_header,
        *(["beta_smoothness_plain_over_bn"] if probed else []),
        "tolerance",
        "experiment_ids",
        "complete",
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in report.rows:
        summaries = (row.variants.get(variant, VariantSummary()) for variant in variants)
        comparisons = (row.comparisons.get(variant, Comparison()) for variant in others)
        whys = (row.why.get(variant, WhyNumbers()) for variant in probed)
        writer.writerow(
            [
                *(_text(row.values[column]) for column in report.columns),
                ";".join(map(str, row.seeds)),
                row.done,
                *(_text(getattr(s, name)) for s in summaries for name in SUMMARY_FIELDS),
                _text(row.test_accuracy_gain),
                row.verdict or "",
                _text(row.speedup_90),
                *([row.against or ""] if others else []),
                *(_text(getattr(c, name)) for c in comparisons for name in COMPARISON_FIELDS),
                *(_text(getattr(w, name)) for w in whys for name in WHY_FIELDS),
                *([_text(row.beta_smoothness_plain_over_bn)] if probed else []),
                report.tolerance,
                ";".join(map(str, row.experiment_ids)),
                _text(report.complete),
            ]
        )
    return out.getvalue()


def _variants_of(report: SweepReport) -> list[Variant]:
    """The variants any row trained, in the vocabulary's order (the study's pair if none)."""
    trained = {variant for row in report.rows for variant in row.variants}
    return [variant for variant in VARIANTS if variant in trained] or list(STUDY_VARIANTS)


def _beyond_the_pair(report: SweepReport) -> list[Variant]:
    """The variants compared beyond the study's bn against plain."""
    compared = {
        v for row in report.rows for v in row.comparisons if (v, row.against) != ("bn", "plain")
    }
    return [variant for variant in VARIANTS if variant in compared]


def _probed(report: SweepReport) -> list[Variant]:
    """The variants any row has probe measurements of, in the vocabulary's order."""
    probed = {variant for row in report.rows for variant in row.why}
    return [variant for variant in VARIANTS if variant in probed]


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


# Markdown: the table a person reads, numbers rounded.


def to_markdown(report: SweepReport) -> str:
    several = any(len(row.seeds) > 1 for row in report.rows)
    done = report.counts["succeeded"]
    total = sum(report.counts.values())
    state = "complete" if report.complete else "still running: what is done so far"
    lines = [
        f"# Sweep {report.sweep_id}: with and without batch normalization",
        "",
        f"{done} of {total} cells succeeded ({state}).{_others(report.counts)}",
        "",
        _legend(report.tolerance, several),
        "",
    ]
    header = [
        *report.columns,
        *(["seeds"] if several else []),
        "plain test",
        "BN test",
        "plain val",
        "BN val",
        "plain →0.90",
        "BN →0.90",
        "plain →0.95",
        "BN →0.95",
        "diverged (plain / BN)",
        "verdict",
        "speed-up",
    ]
    lines += [_md_line(header), _md_line(["---"] * len(header))]
    for row in report.rows:
        lines.append(_md_line(_md_cells(row, report.columns, several)))
    others = _beyond_the_pair(report)
    if others:
        lines += ["", *_md_comparisons(report, others, several)]
    probed = _probed(report)
    if probed:
        lines += ["", *_md_why(report, probed)]
    return "\n".join(lines) + "\n"


def _md_why(report: SweepReport, probed: list[Variant]) -> list[str]:
    """Why BN helped, measured: each variant's median beta-smoothness and sharpness, and plain's
    beta-smoothness over bn's."""
    header = [*report.columns]
    for variant in probed:
        header += [f"{variant} β-smoothness", f"{variant} sharpness"]
    header.append("β plain / BN")
    lines = [
        "Why BN helps, measured (medians over the probed steps): *β-smoothness*, the largest "
        "gradient change per unit of step along the gradient; *sharpness*, the top Hessian "
        "eigenvalue (gradient descent is stable below 2/lr):",
        "",
        _md_line(header),
        _md_line(["---"] * len(header)),
    ]
    for row in report.rows:
        cells = [_md_value(row.values[column]) for column in report.columns]
        for variant in probed:
            numbers = row.why.get(variant, WhyNumbers())
            cells += [_md_number(numbers.beta_smoothness), _md_number(numbers.sharpness)]
        ratio = row.beta_smoothness_plain_over_bn
        cells.append("…" if ratio is None else f"{ratio:.1f}x")
        lines.append(_md_line(cells))
    return lines


def _md_number(value: float | None) -> str:
    return "…" if value is None else f"{value:.3g}"


def _md_comparisons(report: SweepReport, others: list[Variant], several: bool) -> list[str]:
    """Each variant beyond the pair against its row's reference: test accuracy, verdict,
    speed-up to 0.90."""
    header = [*report.columns, "against"]
    for variant in others:
        header += [f"{variant} test", f"{variant} verdict", f"{variant} speed-up"]
    lines = ["Each variant against `plain` (or, without it, the row's first variant):", ""]
    lines += [_md_line(header), _md_line(["---"] * len(header))]
    for row in report.rows:
        cells = [_md_value(row.values[column]) for column in report.columns]
        cells.append(row.against or "")
        for variant in others:
            summary, comparison = row.variants.get(variant), row.comparisons.get(variant)
            if summary is None or comparison is None:
                cells += ["not trained"] * 3
                continue
            pending = row.done == 0
            cells.append("…" if pending else _md_accuracy(summary, "test_accuracy", several))
            cells.append(comparison.verdict or "…")
            speedup = comparison.speedup_90
            cells.append("…" if pending else "n/a" if speedup is None else f"{speedup:.1f}x")
        lines.append(_md_line(cells))
    return lines


def _legend(tolerance: float, several: bool) -> str:
    over_seeds = " (mean ± sd over the seeds)" if several else ""
    how_many = " (mean over the seeds that got there; how many did)" if several else ""
    return (
        f"*test*: test accuracy with population statistics{over_seeds}; *val*: final "
        f"validation accuracy; *→0.90*, *→0.95*: steps until validation accuracy reached "
        f"it{how_many}; *verdict*: BN's test accuracy against plain's, `same` within "
        f"±{tolerance:g}; *speed-up*: plain's steps to 0.90 over BN's."
    )


def _others(counts: dict[Status, int]) -> str:
    others = [f"{n} {status}" for status, n in counts.items() if n and status != "succeeded"]
    return f" Others: {', '.join(others)}." if others else ""


def _md_cells(row: ReportRow, columns: list[str], several: bool) -> list[str]:
    cells = [_md_value(row.values[column]) for column in columns]
    if several:
        cells.append(f"{row.done}/{len(row.seeds)}")
    pending = row.done == 0
    for name in ("test_accuracy", "final_val_accuracy"):
        for variant in (row.plain, row.bn):
            cells.append("…" if pending else _md_accuracy(variant, name, several))
    for steps, reached in (("steps_to_90", "reached_90"), ("steps_to_95", None)):
        for variant in (row.plain, row.bn):
            cells.append("…" if pending else _md_steps(variant, steps, reached, row, several))
    cells.append(
        "…" if pending else f"{_md_diverged(row.plain, row)} / {_md_diverged(row.bn, row)}"
    )
    cells.append(row.verdict or "…")
    cells.append("…" if pending else _md_speedup(row))
    return cells


def _md_value(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return _text(value)


def _md_accuracy(summary: VariantSummary, name: str, several: bool) -> str:
    mean, std = getattr(summary, name), getattr(summary, f"{name}_std")
    if mean is None:
        return "diverged"
    return f"{mean:.3f} ± {std:.3f}" if several and std is not None else f"{mean:.3f}"


def _md_steps(
    summary: VariantSummary, name: str, reached: str | None, row: ReportRow, several: bool
) -> str:
    steps = getattr(summary, name)
    text = "never" if steps is None else f"{steps:,.0f}"
    if several and reached is not None and summary.reached_90 is not None:
        text += f" ({round(summary.reached_90 * row.done)}/{row.done})"
    return text


def _md_diverged(summary: VariantSummary, row: ReportRow) -> str:
    if not summary.diverged:
        return "no"
    if row.done == 1:
        return f"at {summary.diverged_at_step:,}"
    return f"{round(summary.diverged * row.done)}/{row.done}"


def _md_speedup(row: ReportRow) -> str:
    if row.speedup_90 is not None:
        return f"{row.speedup_90:.1f}x"
    plain, bn = row.plain.steps_to_90, row.bn.steps_to_90
    if bn is not None and plain is None:
        return "only BN reached 0.90"
    if plain is not None and bn is None:
        return "only plain reached 0.90"
    return "neither reached 0.90"


def _md_line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
