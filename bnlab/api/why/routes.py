"""Why BN helps, measured on the user's own run (issue 12): the measurements the experiment's
probes took at sample points (bnlab/models/why.py), per net, as JSON and as the papers' pictures.

- GET /experiments/{id}/landscape(.png): the loss and the gradient change along the gradient,
  and the effective beta-smoothness (Santurkar et al. 2018, §3.1, Fig. 4);
- GET /experiments/{id}/ics(.png): internal covariate shift per weight layer (their Def. 2.1);
- GET /experiments/{id}/sharpness(.png): the Hessian's top eigenvalue against 2/lr (Cohen et al.
  2021).

An experiment whose probes left a measurement out answers 200 with empty series, `measured`
false and a message saying how to ask for it: the experiment exists, it has nothing of that kind.
Grows while the experiment runs.
"""

from collections.abc import Callable
from itertools import groupby
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from bnlab.api.deps import ExperimentDep, SessionDep
from bnlab.api.study.routes import NOT_FOUND, PNG
from bnlab.api.why import plots
from bnlab.api.why.schemas import (
    IcsOut,
    LandscapeOut,
    LandscapeSeries,
    Measured,
    SharpnessOut,
    SharpnessSeries,
    ShiftSeries,
)
from bnlab.spec import ProbesSpec
from bnlab.store import queries
from bnlab.store.tables import Experiment, Landscape, LandscapePoint, LayerShift, Sharpness

router = APIRouter(prefix="/experiments", tags=["why BN helps"])


def _png(png: bytes) -> Response:
    # A running experiment's measurements grow: a cached copy would hide the new ones.
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/{experiment_id}/landscape", responses=NOT_FOUND)
def get_landscape(experiment: ExperimentDep, session: SessionDep) -> LandscapeOut:
    """Along each net's gradient g on the next training batch, at every probed sample point:
    the training loss at theta - eta g for step sizes eta of 1/4 to 4 times the learning rate
    (its min..max is the band Santurkar et al. plot), the gradient change
    ||grad L(theta) - grad L(theta - eta g)|| there (gradient predictiveness), and the effective
    beta-smoothness, the largest gradient change per unit of step."""
    return _landscape(experiment, session)


@router.get(
    "/{experiment_id}/landscape.png", response_class=Response, responses={**PNG, **NOT_FOUND}
)
def get_landscape_png(experiment: ExperimentDep, session: SessionDep) -> Response:
    """The landscape, plotted: the loss band, the gradient-predictiveness band and the
    beta-smoothness over training, a line per variant."""
    return _png(plots.landscape_png(_landscape(experiment, session), experiment.spec))


@router.get("/{experiment_id}/ics", responses=NOT_FOUND)
def get_ics(experiment: ExperimentDep, session: SessionDep) -> IcsOut:
    """Internal covariate shift as Santurkar et al. define it (Def. 2.1), per weight layer at
    every probed sample point: the layer's weight gradient G on the batch before the update and
    G', its gradient on the same batch after every earlier layer took its SGD step;
    ||G - G'|| and cos(G, G')."""
    return _ics(experiment, session)


@router.get("/{experiment_id}/ics.png", response_class=Response, responses={**PNG, **NOT_FOUND})
def get_ics_png(experiment: ExperimentDep, session: SessionDep) -> Response:
    """The covariate shift, plotted: a row per weight layer, its norm and its cosine over
    training, a line per variant."""
    return _png(plots.ics_png(_ics(experiment, session), experiment.spec))


@router.get("/{experiment_id}/sharpness", responses=NOT_FOUND)
def get_sharpness(experiment: ExperimentDep, session: SessionDep) -> SharpnessOut:
    """The largest eigenvalue of the Hessian of the training loss on a fixed batch (step 0's),
    by Lanczos iteration on Hessian-vector products from a fixed random vector, at every probed
    sample point, beside 2 / learning rate: gradient descent with that step size cannot settle
    where the sharpness is above it (Cohen et al. 2021, the edge of stability)."""
    return _sharpness(experiment, session)


@router.get(
    "/{experiment_id}/sharpness.png", response_class=Response, responses={**PNG, **NOT_FOUND}
)
def get_sharpness_png(experiment: ExperimentDep, session: SessionDep) -> Response:
    """The sharpness over training, a line per variant, and the 2/lr line."""
    return _png(plots.sharpness_png(_sharpness(experiment, session), experiment.spec))


def _measured(experiment: Experiment, probe: str) -> dict[str, Any]:
    """The fields every answer starts with; the spec's probes as stored (none before 0009)."""
    probes = ProbesSpec.model_validate(experiment.spec.get("probes") or {})
    measured = bool(getattr(probes, probe))
    message = (
        None
        if measured
        else f"probes were off for {probe} in experiment {experiment.id}: submit an experiment "
        f'with "probes": {{"{probe}": true}} (or the why sweep preset) to measure it'
    )
    fields = Measured(
        experiment_id=experiment.id,
        measured=measured,
        message=message,
        every=probes.every,
        learning_rate=experiment.spec["learning_rate"],
    )
    return fields.model_dump()


def _landscape(experiment: Experiment, session: Session) -> LandscapeOut:
    smoothness = queries.rows_per_variant(session, experiment.id, Landscape, Landscape.step)
    points = queries.rows_per_variant(
        session, experiment.id, LandscapePoint, LandscapePoint.step, LandscapePoint.step_size
    )
    return LandscapeOut(
        **_measured(experiment, "landscape"),
        variants={
            variant: _landscape_series(rows, points[variant])
            for variant, rows in smoothness.items()
        },
    )


def _landscape_series(rows: list[Landscape], points: list[LandscapePoint]) -> LandscapeSeries:
    by_step = {step: list(at) for step, at in groupby(points, lambda point: point.step)}
    step_sizes = sorted({point.step_size for point in points})
    losses = [_along(by_step.get(row.step, []), step_sizes, "loss") for row in rows]
    changes = [_along(by_step.get(row.step, []), step_sizes, "grad_change") for row in rows]
    return LandscapeSeries(
        step=[row.step for row in rows],
        step_sizes=step_sizes,
        losses=losses,
        grad_changes=changes,
        loss_min=[_pick(values, min) for values in losses],
        loss_max=[_pick(values, max) for values in losses],
        grad_change_min=[_pick(values, min) for values in changes],
        grad_change_max=[_pick(values, max) for values in changes],
        beta_smoothness=[row.beta_smoothness for row in rows],
    )


def _along(points: list[LandscapePoint], step_sizes: list[float], field: str) -> list[float | None]:
    """One step's values in the order of `step_sizes`."""
    values = {point.step_size: getattr(point, field) for point in points}
    return [values.get(step_size) for step_size in step_sizes]


def _pick(values: list[float | None], pick: Callable[[list[float]], float]) -> float | None:
    known = [value for value in values if value is not None]
    return pick(known) if known else None


def _ics(experiment: Experiment, session: Session) -> IcsOut:
    shifts = queries.rows_per_variant(
        session, experiment.id, LayerShift, LayerShift.layer, LayerShift.step
    )
    return IcsOut(
        **_measured(experiment, "ics"),
        variants={variant: _shift_series(rows) for variant, rows in shifts.items()},
    )


def _shift_series(rows: list[LayerShift]) -> list[ShiftSeries]:
    """Rows ordered by layer, then step, as one series per layer."""
    series = []
    for layer, grouped in groupby(rows, lambda row: row.layer):
        at = list(grouped)
        series.append(
            ShiftSeries(
                layer=layer,
                step=[row.step for row in at],
                norm=[row.norm for row in at],
                cosine=[row.cosine for row in at],
            )
        )
    return series


def _sharpness(experiment: Experiment, session: Session) -> SharpnessOut:
    rows = queries.rows_per_variant(session, experiment.id, Sharpness, Sharpness.step)
    return SharpnessOut(
        **_measured(experiment, "sharpness"),
        edge=2 / experiment.spec["learning_rate"],
        variants={
            variant: SharpnessSeries(
                step=[row.step for row in at],
                eigenvalue=[row.eigenvalue for row in at],
                iterations=[row.iterations for row in at],
            )
            for variant, at in rows.items()
        },
    )
