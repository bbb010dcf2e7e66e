"""A comparison as one PNG: every net's validation accuracy on one plot, a colour per
experiment and a line style per variant. Matplotlib's object API only, as in
bnlab/api/core/plotting.py (thread-safe)."""

import io

from matplotlib.figure import Figure

from bnlab.api.compare.schemas import Comparison
from bnlab.vocabulary import VARIANTS

# bn solid, plain dashed: the study's pair reads at a glance; the other variants after them.
STYLES = {"bn": "-", "plain": "--"} | dict(
    zip(
        [v for v in VARIANTS if v not in ("bn", "plain")],
        ["-.", ":", (0, (5, 1, 1, 1))],
        strict=False,
    )
)


def compare_png(comparison: Comparison) -> bytes:
    figure = Figure(figsize=(9, 5.5), dpi=100)
    axes = figure.add_subplot()
    colors = {e.id: f"C{index}" for index, e in enumerate(comparison.experiments)}
    labels = {(net.experiment_id, net.variant): net.label for net in comparison.legend}
    for experiment in comparison.experiments:
        for variant, series in experiment.series.items():
            axes.plot(
                series.step,
                series.val_accuracy,
                color=colors[experiment.id],
                linestyle=STYLES.get(variant, "-"),
                label=labels[(experiment.id, variant)],
            )
    axes.set_xlabel("training step (mini-batches)")
    axes.set_ylabel("validation accuracy")
    axes.set_ylim(0, 1)
    axes.set_xlim(left=0)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    differing = ", ".join(comparison.differing) or "nothing: the same spec"
    axes.set_title(f"What differs: {differing}", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
