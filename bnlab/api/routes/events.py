"""/experiments/{id}/events and /sweeps/{id}/events: live progress as server-sent events (see
bnlab/api/events.py)."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path
from fastapi.sse import EventSourceResponse, ServerSentEvent

from bnlab.api import events
from bnlab.api.deps import ExperimentId, SettingsDep
from bnlab.api.schemas import MAX_ID, Message
from bnlab.store import queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.tables import Sweep

router = APIRouter(prefix="/experiments", tags=["experiments"])


def existing_experiment(experiment_id: ExperimentId, settings: SettingsDep) -> int:
    """404 before the stream starts. A session of its own, closed at once: the request-scoped
    one (SessionDep) would hold a database connection for as long as the stream lasts."""
    with make_sessionmaker(settings.database_url)() as session:
        if queries.get_experiment(session, experiment_id) is None:
            raise HTTPException(404, f"no experiment with id {experiment_id}")
    return experiment_id


@router.get(
    "/{experiment_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`point` (each new curve point; the last one of a step has id = "
            "that step), `progress` (step, total, steps_per_second, eta_seconds, status) and, "
            "once finished, `status` (the experiment as GET /experiments/{id} returns it); "
            "then the stream ends.",
        },
        404: {"model": Message, "description": "No experiment with that id."},
    },
)
async def experiment_events(
    experiment_id: Annotated[int, Depends(existing_experiment)],
    settings: SettingsDep,
    last_event_id: Annotated[
        int | None,
        Header(ge=-1, description="The last step received: only points past it are sent."),
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Follow an experiment live: its curve points as they are written, its progress, and its
    final status. Reconnecting with `Last-Event-ID` misses nothing."""
    sessions = make_sessionmaker(settings.database_url)
    start = -1 if last_event_id is None else last_event_id
    async for event in events.experiment_events(sessions, settings, experiment_id, start):
        yield event


sweep_router = APIRouter(prefix="/sweeps", tags=["sweeps"])

SweepId = Annotated[int, Path(ge=1, le=MAX_ID, description="The sweep's id.")]


def existing_sweep(sweep_id: SweepId, settings: SettingsDep) -> int:
    """404 before the stream starts, with a session of its own (see existing_experiment)."""
    with make_sessionmaker(settings.database_url)() as session:
        if session.get(Sweep, sweep_id) is None:
            raise HTTPException(404, f"no sweep with id {sweep_id}")
    return sweep_id


@sweep_router.get(
    "/{sweep_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`cell` ({id, status, progress}, whenever a cell changed; every cell "
            "at first) and, once all cells have ended, `status` (the sweep as GET /sweeps/{id} "
            "returns it); then the stream ends.",
        },
        404: {"model": Message, "description": "No sweep with that id."},
    },
)
async def sweep_events(
    sweep_id: Annotated[int, Depends(existing_sweep)], settings: SettingsDep
) -> AsyncIterator[ServerSentEvent]:
    """Follow a sweep live: each cell's status and progress as they change, then the sweep."""
    sessions = make_sessionmaker(settings.database_url)
    async for event in events.sweep_events(sessions, settings, sweep_id):
        yield event
