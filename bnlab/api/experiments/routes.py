"""/experiments: submit, list, read, follow (curve), cancel, download checkpoints, and bundles
(export one, import one)."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bnlab.api.core import idempotency, plotting
from bnlab.api.core.content import JSON_ONLY, NOT_JSON, Responses
from bnlab.api.core.idempotency import IdempotencyKey
from bnlab.api.core.workers import notices
from bnlab.api.core.writes import WRITE_SLOT
from bnlab.api.deps import BrokerDep, ExperimentDep, SessionDep, SettingsDep
from bnlab.api.experiments import forks, submit
from bnlab.api.experiments.annotations import AnnotationsPatch, TagFilter, annotate, responses
from bnlab.api.experiments.bundles import BUNDLE_FIELD, bundle_of, take_in, uploaded
from bnlab.api.experiments.forks import ForkRequest
from bnlab.api.experiments.presenters import experiment_out
from bnlab.api.experiments.schemas import (
    MAX_ID,
    Curve,
    ExperimentOut,
    ExperimentPage,
    Message,
    Series,
)
from bnlab.api.predict.serving import verified_bytes
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.tables import Experiment
from bnlab.vocabulary import TERMINAL, Status, Variant

router = APIRouter(prefix="/experiments", tags=["experiments"])

NOT_FOUND: Responses = {404: {"model": Message, "description": "No experiment with that id."}}
ANNOTATE = responses("experiment")


@router.post(
    "",
    status_code=202,
    dependencies=[JSON_ONLY, WRITE_SLOT],
    responses={
        202: idempotency.created("experiment"),
        **NOT_JSON,
        503: {"model": Message, "description": "Stored, but the broker did not take the job."},
    },
)
def create_experiment(
    spec: ExperimentSpec,
    session: SessionDep,
    broker: BrokerDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ExperimentOut:
    """Queue a paired experiment (plain and BN nets from the same initial weights)."""
    experiment = idempotency.create_once(
        session,
        Experiment,
        idempotency_key,
        response,
        create=lambda: submit.submit_experiment(session, broker, spec, idempotency_key),
        body=spec,
        what="experiment",
    )
    return experiment_out(experiment, session, settings)


@router.get("")
def list_experiments(
    session: SessionDep,
    settings: SettingsDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    tag: TagFilter = None,
) -> ExperimentPage:
    """Experiments, newest first, optionally only those with one status, or tagged."""
    experiments, total = queries.list_experiments(session, status, limit, offset, tag or ())
    notice_of = notices(session, settings, experiments)
    items = [ExperimentOut.from_row(e, notice_of[e.id]) for e in experiments]
    return ExperimentPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{experiment_id}", responses=NOT_FOUND)
def get_experiment(
    experiment: ExperimentDep, session: SessionDep, settings: SettingsDep
) -> ExperimentOut:
    """Status, progress, results, and what to do if it waits on a missing worker."""
    return experiment_out(experiment, session, settings)


@router.patch("/{experiment_id}", dependencies=[JSON_ONLY, WRITE_SLOT], responses=ANNOTATE)
def annotate_experiment(
    experiment: ExperimentDep, patch: AnnotationsPatch, session: SessionDep, settings: SettingsDep
) -> ExperimentOut:
    """Set the experiment's name, notes (markdown) or tags; what the body leaves out stays."""
    annotate(session, experiment, patch)
    return experiment_out(experiment, session, settings)


@router.post(
    "/{experiment_id}/fork",
    status_code=201,
    dependencies=[JSON_ONLY, WRITE_SLOT],
    responses={
        **NOT_FOUND,
        **NOT_JSON,
        409: {
            "model": Message,
            "description": "It kept no training state at that step (the nearest kept steps "
            "are named), or it is not there yet.",
        },
        422: {"description": "A field a fork cannot change, or changes that make no valid spec."},
        503: {"model": Message, "description": "Stored, but the broker did not take the job."},
    },
)
def fork_experiment(
    experiment: ExperimentDep,
    request: ForkRequest,
    session: SessionDep,
    broker: BrokerDep,
    settings: SettingsDep,
) -> ExperimentOut:
    """A new experiment continuing this one from a sample point whose training state it kept,
    with changes (learning rate, schedule, device, variants); its curve starts there."""
    return experiment_out(forks.fork(session, broker, experiment, request), session, settings)


@router.get("/{experiment_id}/curve", responses=NOT_FOUND)
def get_curve(experiment: ExperimentDep, session: SessionDep) -> Curve:
    """Validation accuracy (and mean training loss) per sample point, in step order."""
    return Curve(series=_series(session, experiment.id))


@router.get(
    "/{experiment_id}/curve.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The curve, plotted."},
        **NOT_FOUND,
    },
)
def get_curve_png(experiment: ExperimentDep, session: SessionDep) -> Response:
    """Both variants' validation accuracy against step; a partial curve while it runs."""
    png = plotting.curve_png(_series(session, experiment.id), experiment.spec)
    # A running experiment's curve grows: a cached copy would hide the new points.
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post(
    "/{experiment_id}/cancel",
    responses={
        **NOT_FOUND,
        409: {"model": Message, "description": "It has already finished."},
    },
)
def cancel_experiment(
    experiment: ExperimentDep, session: SessionDep, settings: SettingsDep
) -> ExperimentOut:
    """Cancel a queued experiment now; ask a running one to stop at its next sample point."""
    if experiment.status in TERMINAL:
        raise _not_cancellable(experiment)
    cancelled = queries.cancel_experiment(session, experiment.id)
    session.commit()
    session.refresh(experiment)
    if not cancelled:  # it finished between our read and the update
        raise _not_cancellable(experiment)
    return experiment_out(experiment, session, settings)


def _not_cancellable(experiment: Experiment) -> HTTPException:
    return HTTPException(
        409,
        f"experiment {experiment.id} is {experiment.status}: only a queued or running "
        "experiment can be cancelled",
    )


@router.get(
    "/{experiment_id}/checkpoints/{variant}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "A safetensors file."},
        404: {"model": Message, "description": "No such experiment, or no checkpoint yet."},
        409: {
            "model": Message,
            "description": "The file is missing, unreadable or changed since it was written.",
        },
    },
)
def download_checkpoint(
    experiment: ExperimentDep, variant: Variant, session: SessionDep
) -> Response:
    """The variant's latest checkpoint (safetensors: weights, BN statistics, metadata)."""
    checkpoint = queries.latest_checkpoint(session, experiment.id, variant)
    if checkpoint is None:
        raise HTTPException(404, f"experiment {experiment.id} has no {variant} checkpoint yet")
    name = f"experiment-{experiment.id}-{variant}.safetensors"
    return Response(
        verified_bytes(checkpoint, experiment.id, variant),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/{experiment_id}/bundle",
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {}}, "description": "The bundle (a zip file)."},
        **NOT_FOUND,
        409: {
            "model": Message,
            "description": "It has not ended yet, or a checkpoint's file is missing or changed.",
        },
    },
)
def download_bundle(experiment: ExperimentDep, session: SessionDep) -> Response:
    """Everything to reproduce an ended experiment or take it into another bnlab, in one zip:
    a manifest (format, provenance, the sha256 of every file), the spec, the curve (CSV and
    JSON), the results, every checkpoint and the layer statistics (bnlab/bundle.py)."""
    name = f"bnlab-experiment-{experiment.id}.zip"
    return Response(
        bundle_of(session, experiment),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post(
    "/import",
    status_code=201,
    dependencies=[WRITE_SLOT],
    responses={
        413: {"model": Message, "description": "Larger than BNLAB_MAX_BUNDLE_BYTES."},
        415: {"model": Message, "description": "Not a multipart upload."},
        422: {
            "model": Message,
            "description": "Not a zip, not a bnlab bundle, a file whose sha256 does not match, "
            "a newer format, or contents this bnlab does not take.",
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [BUNDLE_FIELD],
                        "properties": {BUNDLE_FIELD: {"type": "string", "format": "binary"}},
                    },
                    "encoding": {BUNDLE_FIELD: {"contentType": "application/zip"}},
                    "examples": {
                        "a bundle": {
                            "summary": "A bundle downloaded from GET /experiments/{id}/bundle "
                            f"(curl -F {BUNDLE_FIELD}=@bnlab-experiment-1.zip)",
                            "value": {BUNDLE_FIELD: "bnlab-experiment-1.zip"},
                        }
                    },
                }
            },
        }
    },
)
async def import_bundle(
    request: Request, session: SessionDep, settings: SettingsDep, response: Response
) -> ExperimentOut:
    """Take in a bundle (GET /experiments/{id}/bundle of this or another bnlab) as a new
    experiment, served like any other: its status, curve, results, layer statistics and
    checkpoints, its provenance, and where it came from (`imported_from`)."""
    data, file_name = await uploaded(request, settings)
    experiment = await run_in_threadpool(take_in, session, settings, data, file_name)
    response.headers["Location"] = f"/experiments/{experiment.id}"
    return await run_in_threadpool(experiment_out, experiment, session, settings)


def _series(session: Session, experiment_id: int) -> dict[Variant, Series]:
    points = queries.curve(session, experiment_id)
    return {variant: Series.from_points(p) for variant, p in points.items()}
