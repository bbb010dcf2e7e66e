"""A sample point's per-layer statistics (`NetSample.layers`) as `layer_stats` rows."""

import math
from collections.abc import Sequence
from typing import Any

from bnlab.models.trainer import LayerSample


def layer_rows(layers: Sequence[LayerSample]) -> list[dict[str, Any]]:
    """One row per hidden layer. A layer whose percentiles are not finite (a net blowing up in
    population mode while its training loss still is) has no row at that step: the columns hold
    numbers, and JSON cannot carry inf or NaN to a client. A gradient norm that is not finite
    is stored as unknown."""
    rows = []
    for index, layer in enumerate(layers):
        stats = layer.stats
        if not all(math.isfinite(v) for v in (stats.p15, stats.p50, stats.p85)):
            continue
        grad_norm = layer.grad_norm
        rows.append(
            {
                "layer": index,
                "p15": stats.p15,
                "p50": stats.p50,
                "p85": stats.p85,
                "dead_fraction": stats.dead_fraction,
                "grad_norm": grad_norm if grad_norm is None or math.isfinite(grad_norm) else None,
            }
        )
    return rows
