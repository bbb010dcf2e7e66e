"""The papers' pictures from the user's run, as PNGs: Santurkar et al. 2018's loss and
gradient-predictiveness bands and beta-smoothness (Fig. 4), their covariate shift per layer
(Fig. 3's measure, Def. 2.1), and Cohen et al. 2021's sharpness against 2/lr. Matplotlib's object
API only, as in bnlab/api/core/plotting.py (requests render side by side in the threadpool)."""

import io
import math
from collections.abc import Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bnlab.api.core.plotting import COLORS, LABELS, title
from bnlab.api.why.schemas import IcsOut, LandscapeOut, Measured, SharpnessOut

PANEL_INCHES = (4.6, 3.2)
EDGE_COLOR = "black"


def landscape_png(landscape: LandscapeOut, spec: dict[str, Any]) -> bytes:
    """Three panels over training: the loss band (min..max over the step sizes), the
    gradient-predictiveness band, and the effective beta-smoothness; a color per variant."""
    figure, (loss, change, beta) = _figure(3, 1)
    for variant, series in landscape.variants.items():
        color, label = COLORS.get(variant), LABELS.get(variant, variant)
        loss.fill_between(
            series.step,
            _nan(series.loss_min),
            _nan(series.loss_max),
            color=color,
            alpha=0.4,
            label=label,
        )
        change.fill_between(
            series.step,
            _nan(series.grad_change_min),
            _nan(series.grad_change_max),
            color=color,
            alpha=0.4,
            label=label,
        )
        beta.plot(series.step, _nan(series.beta_smoothness), color=color, marker=".", label=label)
    nets = landscape.variants.values()
    _label(loss, "loss along the gradient", "training loss at theta - eta g")
    _label(change, "gradient predictiveness", "||grad L - grad L'|| along the gradient")
    _label(beta, "effective beta-smoothness", "max over eta of grad change / ||eta g||")
    _log_if_positive(loss, *(net.loss_max for net in nets))
    _log_if_positive(change, *(net.grad_change_max for net in nets))
    _log_if_positive(beta, *(net.beta_smoothness for net in nets))
    steps = ", ".join(f"{eta:g}" for eta in _first_step_sizes(landscape))
    return _finish(figure, landscape, spec, f"step sizes eta: {steps}")


def ics_png(ics: IcsOut, spec: dict[str, Any]) -> bytes:
    """A row per weight layer: ||G - G'|| and cos(G, G') over training, a color per variant."""
    layers = max((len(series) for series in ics.variants.values()), default=0)
    figure, grid = _figure(2, max(layers, 1))
    for variant, series in ics.variants.items():
        color, label = COLORS.get(variant), LABELS.get(variant, variant)
        for row, shift in enumerate(series):
            norm, cosine = grid[2 * row], grid[2 * row + 1]
            norm.plot(shift.step, _nan(shift.norm), color=color, marker=".", label=label)
            cosine.plot(shift.step, _nan(shift.cosine), color=color, marker=".", label=label)
            _log_if_positive(norm, shift.norm)
    for row in range(max(layers, 1)):
        which = "output layer" if row == layers - 1 else f"layer {row + 1}"
        _label(grid[2 * row], f"{which}: ||G - G'||", "gradient change")
        _label(grid[2 * row + 1], f"{which}: cos(G, G')", "cosine (1: no shift)")
        grid[2 * row + 1].set_ylim(-1.05, 1.05)
    note = "G, G': a layer's weight gradient before and after the earlier layers' SGD step"
    return _finish(figure, ics, spec, note)


def sharpness_png(sharpness: SharpnessOut, spec: dict[str, Any]) -> bytes:
    """The top Hessian eigenvalue over training per variant, and 2/lr dashed."""
    figure, (axes,) = _figure(1, 1, width=8.0, height=4.5)
    for variant, series in sharpness.variants.items():
        axes.plot(
            series.step,
            _nan(series.eigenvalue),
            color=COLORS.get(variant),
            marker=".",
            label=LABELS.get(variant, variant),
        )
    axes.axhline(
        sharpness.edge, color=EDGE_COLOR, linestyle="--", label=f"2 / lr = {sharpness.edge:g}"
    )
    _label(axes, "sharpness", "top eigenvalue of the Hessian")
    _log_if_positive(axes, [sharpness.edge], *(s.eigenvalue for s in sharpness.variants.values()))
    return _finish(figure, sharpness, spec, "edge of stability: 2 / learning rate")


def _figure(
    columns: int, rows: int, width: float = PANEL_INCHES[0], height: float = PANEL_INCHES[1]
) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(width * columns, height * rows + 0.9), dpi=80)
    grid = figure.subplots(rows, columns, squeeze=False)
    return figure, [axes for row in grid for axes in row]


def _label(axes: Axes, name: str, ylabel: str) -> None:
    axes.set_title(name, fontsize=9)
    axes.set_xlabel("training step", fontsize=8)
    axes.set_ylabel(ylabel, fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(True, alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7)


def _log_if_positive(axes: Axes, *series: Sequence[float | None]) -> None:
    """A log y axis, where there is something positive to show on one: these measurements
    span orders of magnitude between the nets (zeros, e.g. the first layer's shift, are left
    out)."""
    if any(value is not None and value > 0 for values in series for value in values):
        axes.set_yscale("log", nonpositive="mask")


def _finish(figure: Figure, answer: Measured, spec: dict[str, Any], note: str) -> bytes:
    """The title, or the reason there is nothing to show, and the PNG."""
    figure.suptitle(f"{title(spec)}\n{answer.message or note}", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _first_step_sizes(landscape: LandscapeOut) -> list[float]:
    return next((s.step_sizes for s in landscape.variants.values() if s.step_sizes), [])


def _nan(values: Sequence[float | None]) -> list[float]:
    """Unknown values as NaN: matplotlib leaves a gap there."""
    return [math.nan if value is None else value for value in values]
