"""The study's inside view as PNGs: accuracy against inference batch size, and each hidden layer's
pre-activation percentiles over training. Matplotlib's object API only, as in
bnlab/api/core/plotting.py (requests render side by side in the threadpool)."""

import io
from typing import Any

from matplotlib.figure import Figure

from bnlab.api.core.plotting import COLORS, LABELS, title
from bnlab.api.study.schemas import ActivationsOut, BatchSizeEffectOut, LayerSeries

PANEL_INCHES = (5.0, 2.6)
DEAD_COLOR = "tab:red"


def batch_size_effect_png(effect: BatchSizeEffectOut, spec: dict[str, Any]) -> bytes:
    """Batch-statistics accuracy against inference batch size (log scale), population as a line."""
    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.add_subplot()
    axes.plot(
        effect.sizes,
        effect.batch_accuracy,
        marker="o",
        color=COLORS["bn"],
        label="batch statistics",
    )
    axes.axhline(
        effect.population_accuracy, color="gray", linestyle="--", label="population statistics"
    )
    axes.set_xscale("log", base=2)
    axes.set_xticks(effect.sizes, [str(size) for size in effect.sizes])
    axes.set_xlabel("inference batch size (images normalized together)")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title(f"{title(spec)}\ncheckpoint version {effect.checkpoint_version}", fontsize=10)
    return _png(figure)


def activations_png(activations: ActivationsOut, spec: dict[str, Any]) -> bytes:
    """A grid, a row per hidden layer and a column per variant: the 15th-85th percentile band and
    the median of the layer's pre-activations over training steps, and its dead fraction."""
    variants = list(activations.variants)
    n_layers = max((len(layers) for layers in activations.variants.values()), default=0)
    rows = max(n_layers, 1)
    width, height = PANEL_INCHES
    figure = Figure(figsize=(width * len(variants), height * rows + 0.8), dpi=80)
    grid = figure.subplots(rows, len(variants), squeeze=False, sharex=True)
    for column, variant in enumerate(variants):
        layers = activations.variants[variant]
        for row in range(rows):
            axes = grid[row][column]
            if row < len(layers):
                _layer_panel(axes, layers[row], variant)
            else:
                axes.text(
                    0.5, 0.5, "no layer statistics yet", ha="center", transform=axes.transAxes
                )
            axes.set_title(f"{LABELS.get(variant, variant)}: layer {row + 1}", fontsize=9)
            if row == rows - 1:
                axes.set_xlabel("training step")
    figure.suptitle(
        f"{title(spec)}\ninput to the {activations.activation} (15th, 50th, 85th percentiles); "
        f"dead fraction in red",
        fontsize=10,
    )
    figure.tight_layout()
    return _png(figure)


def _layer_panel(axes: Any, layer: LayerSeries, variant: str) -> None:
    color = COLORS.get(variant)
    axes.fill_between(layer.step, layer.p15, layer.p85, color=color, alpha=0.3, linewidth=0)
    axes.plot(layer.step, layer.p50, color=color)
    axes.grid(True, alpha=0.3)
    dead = axes.twinx()
    dead.plot(layer.step, layer.dead_fraction, color=DEAD_COLOR, linestyle=":")
    dead.set_ylim(0, 1)
    dead.tick_params(axis="y", colors=DEAD_COLOR, labelsize=7)
    axes.tick_params(labelsize=7)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
