"""A sweep's curves as one PNG: a small plot per cell, both variants in each, titled with the
cell's values. Matplotlib's object API only, as in bnlab/api/core/plotting.py (thread-safe)."""

import io
import json
import math
import textwrap
from collections.abc import Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bnlab.api.core.plotting import COLORS, LABELS
from bnlab.store.tables import CurvePoint, Experiment
from bnlab.vocabulary import STUDY_VARIANTS, Variant

PANEL_INCHES = (2.8, 2.1)
DPI = 80
LEGEND_INCHES = 0.4
TITLE_WIDTH = 34  # characters per title line on a panel
FIELD_NAMES = {
    "activation": "",
    "learning_rate": "lr ",
    "use_bad_weights": "",
    "training_batches": "",
    "batches_per_sample": "every ",
    "seed": "seed ",
}


def sweep_png(
    cells: Sequence[Experiment],
    curves: dict[int, dict[Variant, list[CurvePoint]]],
    varying: list[str],
) -> bytes:
    columns = max(1, math.ceil(math.sqrt(len(cells))))
    rows = max(1, math.ceil(len(cells) / columns))
    width, height = PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows + LEGEND_INCHES
    figure = Figure(figsize=(width, height), dpi=DPI)
    # Margins in inches, made fractions: a fixed layout, as matplotlib's constrained one takes
    # over a minute for 256 panels.
    figure.subplots_adjust(
        left=0.5 / width,
        right=1 - 0.15 / width,
        bottom=(LEGEND_INCHES + 0.2) / height,
        top=1 - 0.45 / height,
        wspace=0.25,
        hspace=0.55 * PANEL_INCHES[1] / (PANEL_INCHES[1] - 0.55),
    )
    # Not sharey: sharing makes every set_ylim visit every panel, quadratic in the cells.
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(grid.flat):
        if index >= len(cells):
            axes.set_axis_off()
            continue
        cell = cells[index]
        for variant, points in curves.get(cell.id, {}).items():
            axes.plot(
                [p.step for p in points],
                [p.val_accuracy for p in points],
                color=COLORS[variant],
                label=LABELS[variant],
                linewidth=1.2,
            )
        axes.set_ylim(0, 1)
        if index % columns:
            axes.tick_params(labelleft=False)
        axes.set_xlim(0, cell.spec.get("training_batches") or None)
        axes.grid(True, alpha=0.3)
        axes.tick_params(labelsize=7)
        axes.xaxis.set_major_locator(MaxNLocator(4, steps=[1, 2, 5, 10]))
        axes.xaxis.get_offset_text().set_fontsize(7)
        title = textwrap.fill(f"#{cell.id} {label(cell.spec, varying)}", TITLE_WIDTH)
        axes.set_title(title, fontsize=8)
        if cell.status != "succeeded":
            axes.text(0.5, 0.5, cell.status, transform=axes.transAxes, ha="center", alpha=0.5)
        _mark_diverged(axes, cell)
    # The variants drawn (the study's pair before any point), one legend line.
    drawn = {variant for lines in curves.values() for variant in lines} or set(STUDY_VARIANTS)
    handles = [
        grid.flat[0].plot([], [], color=COLORS[v], label=LABELS[v])[0] for v in COLORS if v in drawn
    ]
    figure.legend(
        handles=handles, loc="lower center", ncols=len(handles), fontsize=8, frameon=False
    )
    figure.supylabel("validation accuracy", fontsize=9, x=0.08 / width)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _mark_diverged(axes: Axes, cell: Experiment) -> None:
    """A net that diverged early leaves next to no curve: say so in its colour."""
    for line, run in enumerate(r for r in cell.runs if r.diverged_at_step is not None):
        axes.text(
            0.97,
            0.05 + 0.1 * line,
            f"{LABELS[run.variant]} diverged at step {run.diverged_at_step:,}",
            transform=axes.transAxes,
            ha="right",
            fontsize=7,
            color=COLORS[run.variant],
        )


def label(spec: dict[str, Any], varying: list[str]) -> str:
    """The cell's values of the varying fields, short: "relu, lr 1, bad init, 2,000"."""
    parts = []
    for name in varying:
        value = spec.get(name)
        if name == "use_bad_weights":
            parts.append("bad init" if value else "good init")
        elif name == "training_batches" and isinstance(value, int):
            parts.append(f"{value:,} batches")
        elif name in FIELD_NAMES:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(f"{FIELD_NAMES[name]}{shown}")
        else:
            parts.append(f"{name} {json.dumps(value)}")
    return ", ".join(parts)
