"""/sweeps: submit a grid of experiments (or the classic study), follow it, cancel it, and read
its report as JSON, CSV or Markdown, and its curves as one PNG."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from bnlab.api.core import idempotency
from bnlab.api.core.content import JSON_ONLY, NOT_JSON, Responses
from bnlab.api.core.idempotency import IdempotencyKey
from bnlab.api.core.writes import WRITE_SLOT
from bnlab.api.deps import BrokerDep, SessionDep, SettingsDep, SweepDep
from bnlab.api.experiments.annotations import AnnotationsPatch, TagFilter, annotate, responses
from bnlab.api.experiments.schemas import MAX_ID, Annotations, Message
from bnlab.api.experiments.submit import submit_sweep
from bnlab.api.sweeps import plots, report
from bnlab.api.sweeps.presenters import overall_status, sweep_out, sweep_out_by_id, sweep_progress
from bnlab.api.sweeps.schemas import SweepOut, SweepPage, SweepReport, SweepSummary
from bnlab.store import queries
from bnlab.store.tables import Sweep
from bnlab.sweeps import SweepRejected, SweepRequest, expand, varying_fields
from bnlab.vocabulary import TERMINAL, ReportFormat

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

NOT_FOUND: Responses = {404: {"model": Message, "description": "No sweep with that id."}}
DEFAULT_TOLERANCE = 0.01
ANNOTATE = responses("sweep")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "md": "text/markdown; charset=utf-8"}


@router.post(
    "",
    status_code=202,
    dependencies=[JSON_ONLY, WRITE_SLOT],
    responses={
        202: idempotency.created("sweep"),
        **NOT_JSON,
        422: {"description": "Unknown fields, empty value lists, too many cells, a bad value."},
        503: {"model": Message, "description": "Stored, but the broker did not take its jobs."},
    },
)
def create_sweep(
    body: SweepRequest,
    session: SessionDep,
    broker: BrokerDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SweepOut:
    """Queue every cell of a grid (or of the classic study) as an ordinary experiment. Cells that
    share an architecture, activation and batch order train as one batched model on one worker;
    the others are spread over the queue's workers."""
    try:
        specs = expand(body, settings.max_sweep_cells)
    except SweepRejected as error:
        raise HTTPException(422, str(error)) from None
    sweep = idempotency.create_once(
        session,
        Sweep,
        idempotency_key,
        response,
        create=lambda: submit_sweep(session, broker, settings, body, specs, idempotency_key),
        body=body,
        what="sweep",
    )
    return sweep_out_by_id(session, settings, sweep.id)


@router.get("")
def list_sweeps(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    tag: TagFilter = None,
) -> SweepPage:
    """Sweeps, newest first, with their status and progress; optionally only those tagged."""
    sweeps, total = queries.list_sweeps(session, limit, offset, tag or ())
    items = [
        SweepSummary(
            id=sweep.id,
            url=f"/sweeps/{sweep.id}",
            status=overall_status([cell.status for cell in sweep.experiments]),
            created_at=sweep.created_at,
            cells=len(sweep.experiments),
            counts=report.status_counts(sweep.experiments),
            progress=sweep_progress(sweep.experiments),
            **Annotations.of(sweep),
        )
        for sweep in sweeps
    ]
    return SweepPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{sweep_id}", responses=NOT_FOUND)
def read_sweep(sweep: SweepDep, session: SessionDep, settings: SettingsDep) -> SweepOut:
    """Every cell's status and progress, and the sweep's overall progress."""
    return sweep_out(sweep, session, settings)


@router.patch("/{sweep_id}", dependencies=[JSON_ONLY, WRITE_SLOT], responses=ANNOTATE)
def annotate_sweep(
    sweep: SweepDep, patch: AnnotationsPatch, session: SessionDep, settings: SettingsDep
) -> SweepOut:
    """Set the sweep's name, notes (markdown) or tags; what the body leaves out stays."""
    annotate(session, sweep, patch)
    return sweep_out_by_id(session, settings, sweep.id)


@router.post(
    "/{sweep_id}/cancel",
    responses={**NOT_FOUND, 409: {"model": Message, "description": "Every cell has finished."}},
)
def cancel_sweep(sweep: SweepDep, session: SessionDep, settings: SettingsDep) -> SweepOut:
    """Cancel every cell not finished yet: queued ones now, running ones at their next sample
    point (a batched group stops when all its cells are cancelled)."""
    unfinished = [cell.id for cell in sweep.experiments if cell.status not in TERMINAL]
    if not unfinished:
        raise HTTPException(
            409, f"sweep {sweep.id} has finished: every cell succeeded, failed or was cancelled"
        )
    sweep.cancel_requested = True
    for experiment_id in unfinished:
        queries.cancel_experiment(session, experiment_id)
    session.commit()
    return sweep_out_by_id(session, settings, sweep.id)


@router.get(
    "/{sweep_id}/report",
    response_model=SweepReport,
    responses={
        200: {
            "content": {"text/csv": {}, "text/markdown": {}},
            "description": "JSON, or CSV (`Accept: text/csv` or `?format=csv`), or Markdown "
            "(`?format=md` or `Accept: text/markdown`).",
        },
        **NOT_FOUND,
    },
)
def get_report(
    sweep: SweepDep,
    session: SessionDep,
    request: Request,
    format: Annotated[
        ReportFormat | None, Query(description="Overrides the Accept header.")
    ] = None,
    tolerance: Annotated[
        float,
        Query(ge=0, le=1, description="Test-accuracy difference still called `same`."),
    ] = DEFAULT_TOLERANCE,
) -> SweepReport | Response:
    """One row per cell (or per cell over its seeds): each variant's final validation and test
    accuracy, steps to 0.90 and 0.95, divergence; BN's verdict and speed-up. While cells run it
    holds what is done, with `complete: false`."""
    built = report.build(sweep, tolerance, report.probed(session, sweep))
    chosen = format or _format_from(request.headers.get("accept", ""))
    headers = {} if built.complete else {"Cache-Control": "no-store"}
    if chosen == "csv":
        body = report.to_csv(built)
        return Response(body, media_type=MEDIA_TYPES["csv"], headers=headers)
    if chosen == "md":
        return Response(report.to_markdown(built), media_type=MEDIA_TYPES["md"], headers=headers)
    return Response(built.model_dump_json(), media_type="application/json", headers=headers)


def _format_from(accept: str) -> ReportFormat:
    kinds = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    if "text/csv" in kinds:
        return "csv"
    if "text/markdown" in kinds:
        return "md"
    return "json"


@router.get(
    "/{sweep_id}/report.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "A small curve plot per cell."},
        **NOT_FOUND,
    },
)
def get_report_png(sweep: SweepDep, session: SessionDep) -> Response:
    """Validation accuracy against step, both variants, one panel per cell labelled with its
    values; partial curves while cells run."""
    cells = list(sweep.experiments)
    varying = varying_fields([cell.spec for cell in cells])
    png = plots.sweep_png(cells, queries.sweep_curves(session, sweep.id), varying)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
