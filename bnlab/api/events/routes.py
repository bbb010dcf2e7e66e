"""/experiments/{id}/events and /sweeps/{id}/events: live progress as server-sent events (see
bnlab/api/events/streams.py).

A stream already under way when the database goes away cannot become a 503: it ends with an
`unavailable` event saying so (and a `retry` hint) instead of a connection cut without a word.
A client reconnects later (with `Last-Event-ID`, missing nothing); the dashboard falls back to
polling, which shows the 503's message until the database is back.
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.exc import DBAPIError

from bnlab.api.core.errors import RETRY_AFTER_SECONDS, database_unavailable
from bnlab.api.deps import ExperimentId, SettingsDep, SweepId, found
from bnlab.api.events import streams
from bnlab.api.experiments.schemas import Message
from bnlab.settings import Settings
from bnlab.store.db import make_sessionmaker
from bnlab.store.tables import Experiment, Sweep

router = APIRouter(prefix="/experiments", tags=["experiments"])


def _existing(settings: Settings, table: type[Experiment | Sweep], what: str, row_id: int) -> int:
    """404 before the stream starts. A session of its own, closed at once: the request-scoped
    one (SessionDep) would hold a database connection for as long as the stream lasts."""
    with make_sessionmaker(settings.database_url)() as session:
        found(session.get(table, row_id), what, row_id)
    return row_id


def existing_experiment(experiment_id: ExperimentId, settings: SettingsDep) -> int:
    return _existing(settings, Experiment, "experiment", experiment_id)


def existing_sweep(sweep_id: SweepId, settings: SettingsDep) -> int:
    return _existing(settings, Sweep, "sweep", sweep_id)


def _stream(sends: str, what: str) -> dict[int | str, dict[str, Any]]:
    """The documented answers of a `what`'s event stream; `sends` says what it sends."""
    return {
        200: {"content": {"text/event-stream": {}}, "description": sends},
        404: {"model": Message, "description": f"No {what} with that id."},
    }


@router.get(
    "/{experiment_id}/events",
    response_class=EventSourceResponse,
    responses=_stream(
        "`point` (each new curve point; the last one of a step has id = that step), `progress` "
        "(step, total, steps_per_second, eta_seconds, status) and, once finished, `status` (the "
        "experiment as GET /experiments/{id} returns it); then the stream ends. `unavailable` "
        "({detail}) ends it early if the database went away: reconnect with `Last-Event-ID`.",
        "experiment",
    ),
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
    stream = streams.experiment_events(sessions, settings, experiment_id, start)
    async for event in ending_on_outage(stream, settings):
        yield event


sweep_router = APIRouter(prefix="/sweeps", tags=["sweeps"])


@sweep_router.get(
    "/{sweep_id}/events",
    response_class=EventSourceResponse,
    responses=_stream(
        "`cell` ({id, status, progress}, whenever a cell changed; every cell at first) and, once "
        "all cells have ended, `status` (the sweep as GET /sweeps/{id} returns it); then the "
        "stream ends. `unavailable` ({detail}) ends it early if the database went away.",
        "sweep",
    ),
)
async def sweep_events(
    sweep_id: Annotated[int, Depends(existing_sweep)], settings: SettingsDep
) -> AsyncIterator[ServerSentEvent]:
    """Follow a sweep live: each cell's status and progress as they change, then the sweep."""
    sessions = make_sessionmaker(settings.database_url)
    async for event in ending_on_outage(
        streams.sweep_events(sessions, settings, sweep_id), settings
    ):
        yield event


async def ending_on_outage(
    stream: AsyncIterator[ServerSentEvent], settings: Settings
) -> AsyncIterator[ServerSentEvent]:
    """`stream`'s events; if the database goes away meanwhile, an `unavailable` event and the
    end."""
    try:
        async for event in stream:
            yield event
    except DBAPIError as error:
        detail = database_unavailable(error, settings)
        if detail is None:
            raise
        yield ServerSentEvent(
            event="unavailable", data={"detail": detail}, retry=RETRY_AFTER_SECONDS * 1000
        )
