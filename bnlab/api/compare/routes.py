"""/compare: several experiments side by side, as JSON and as one PNG (the `.png` twin, as
/experiments/{id}/curve.png and /sweeps/{id}/report.png)."""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from bnlab.api.compare import build, plots
from bnlab.api.compare.schemas import Comparison
from bnlab.api.core.content import Responses
from bnlab.api.deps import SessionDep
from bnlab.api.experiments.schemas import Message

router = APIRouter(tags=["compare"])

ExperimentIds = Annotated[str, Query(max_length=200, description=build.IDS_HELP)]
REFUSED: Responses = {
    404: {"model": Message, "description": "An id that names no experiment."},
    422: {"model": Message, "description": "Not a list of ids, too few or too many, or one twice."},
}


@router.get("/compare", responses=REFUSED)
def get_comparison(experiments: ExperimentIds, session: SessionDep) -> Comparison:
    """The experiments' curves, labels naming only the spec fields that differ between them, and
    a table of every net's results."""
    return _comparison(session, experiments)


@router.get(
    "/compare.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "Every net's curve on one plot."},
        **REFUSED,
    },
)
def get_comparison_png(experiments: ExperimentIds, session: SessionDep) -> Response:
    """Every net's validation accuracy on one plot: a colour per experiment, a line style per
    variant, the legend naming what differs."""
    png = plots.compare_png(_comparison(session, experiments))
    # Experiments still running grow their curves: a cached copy would hide the new points.
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


def _comparison(session: Session, experiments: str) -> Comparison:
    return build.compare(session, build.load(session, build.parse_ids(experiments)))
