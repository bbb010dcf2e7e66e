"""A sample point's measurements of why BN helps (`NetSample.why`) as rows of the probe tables
(bnlab/store/tables.py, migration 0009). A value that is not finite (a net blowing up along a
large step) is stored as unknown: the columns hold numbers, and JSON cannot carry inf or NaN."""

import math

from bnlab.models.why import WhySample
from bnlab.store.queries import ProbeRows
from bnlab.store.tables import Landscape, LandscapePoint, LayerShift, Sharpness


def why_rows(why: WhySample) -> ProbeRows:
    """The rows of each measurement that ran; none for those that did not."""
    rows: ProbeRows = {}
    if why.landscape is not None:
        landscape = why.landscape
        rows[Landscape] = [{"beta_smoothness": _number(landscape.beta_smoothness)}]
        rows[LandscapePoint] = [
            {"step_size": step_size, "loss": _number(loss), "grad_change": _number(change)}
            for step_size, loss, change in zip(
                landscape.step_sizes, landscape.losses, landscape.grad_changes, strict=True
            )
        ]
    if why.ics is not None:
        rows[LayerShift] = [
            {"layer": layer, "norm": _number(shift.norm), "cosine": _number(shift.cosine)}
            for layer, shift in enumerate(why.ics)
        ]
    if why.sharpness is not None:
        sharpness = why.sharpness
        rows[Sharpness] = [
            {
                "eigenvalue": _number(sharpness.eigenvalue),
                "iterations": sharpness.iterations,
                "edge": sharpness.edge,
            }
        ]
    return rows


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None
