"""The accuracy curve as a PNG.

Matplotlib's object API only (a `Figure` of our own, never pyplot's global current figure), so
requests rendering at the same time in the threadpool cannot draw on each other's axes.
"""

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a server; set before anything imports pyplot

from matplotlib.figure import Figure

from bnlab.api.experiments.schemas import Series
from bnlab.vocabulary import VARIANTS, Variant

# A colour per variant, by its place in the vocabulary (plain and bn keep the study's): left to
# matplotlib's cycle, the variants after the pair would take the pair's colours again.
TAB_COLORS = ("orange", "blue", "green", "red", "purple", "brown", "pink", "olive", "cyan")
COLORS: dict[str, str] = {
    v: f"tab:{TAB_COLORS[i % len(TAB_COLORS)]}" for i, v in enumerate(VARIANTS)
}
LABELS: dict[str, str] = {
    **{variant: variant for variant in VARIANTS},
    "plain": "without BN",
    "bn": "with BN",
}


def curve_png(series: dict[Variant, Series], spec: dict[str, Any]) -> bytes:
    """Validation accuracy against training step for every variant; valid with no points yet."""
    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.add_subplot()
    for variant, points in series.items():
        axes.plot(
            points.step,
            points.val_accuracy,
            marker="." if len(points.step) < 50 else None,
            color=COLORS.get(variant),
            label=LABELS.get(variant, variant),
        )
    axes.set_xlabel("training step (mini-batches)")
    axes.set_ylabel("validation accuracy")
    axes.set_ylim(0, 1)
    total = spec.get("training_batches")
    axes.set_xlim(0, total if isinstance(total, int) and total > 0 else None)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title(title(spec))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def title(spec: dict[str, Any]) -> str:
    if spec.get("weight_std") is not None:
        init = f"init std {spec['weight_std']:g}"
    else:
        init = "bad init" if spec.get("use_bad_weights") else "good init"
    batches = spec.get("training_batches")
    length = f"{batches:,} batches" if isinstance(batches, int) else f"{batches} batches"
    # an rnn's LSTM has its own nonlinearities: the MLP's activation does not apply to it
    net = (
        f"LSTM {spec.get('rnn_hidden', 100)} by {spec.get('sequence', 'rows')}"
        if spec.get("net") == "rnn"
        else spec.get("activation", "?")
    )
    return (
        f"{spec.get('dataset', 'mnist')}, {net}, "
        f"lr {spec.get('learning_rate', '?')}, {init}, {length}"
    )
