"""An experiment's live progress as server-sent events, read by polling SQL.

The worker writes only at sample points, so a short poll (a fresh session each time, three
small queries) sees everything there is to see without any channel between worker and API.

Events, in this order within a poll:
- `point` {variant, step, val_accuracy, train_loss}: each new curve point, plain before bn at
  each step; the last point of a step carries `id` = that step (the points of a step are
  written in one transaction, so they arrive in one poll);
- `progress` {step, total, steps_per_second, eta_seconds, status}, `id` = the latest complete
  step sent: whenever one of them changed;
- `status`: the experiment as GET /experiments/{id} returns it, once, when it has finished;
  then the stream ends.

A client that reconnects with `Last-Event-ID: N` (the last id it saw, as EventSource sends it)
is sent every point past step N: it misses nothing.

A sweep's stream has `cell` events (a cell's id, status and progress, whenever they changed)
and, once every cell has ended, `status` (the sweep as GET /sweeps/{id} returns it). They carry
no id: a new connection starts with every cell's current state, so it misses nothing.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi.sse import ServerSentEvent
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from bnlab.api.experiments.presenters import experiment_out
from bnlab.api.experiments.schemas import ExperimentOut, Progress
from bnlab.api.sweeps.presenters import sweep_out
from bnlab.api.sweeps.schemas import SweepOut
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.vocabulary import TERMINAL

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Poll:
    points: list[dict[str, Any]]
    progress: dict[str, Any]
    finished: ExperimentOut | None  # set once the experiment has ended


def poll(
    sessions: sessionmaker[Session], settings: Settings, experiment_id: int, after_step: int
) -> Poll | None:
    """What is new past `after_step`; None if the experiment is gone (deleted)."""
    with sessions() as session:
        # The experiment first, its points second: a worker commits every point before it
        # marks the experiment finished, so a finished status here means no point is missed.
        experiment = queries.get_experiment(session, experiment_id)
        if experiment is None:
            return None
        points = [
            {
                "variant": variant,
                "step": point.step,
                "val_accuracy": point.val_accuracy,
                "train_loss": point.train_loss,
            }
            for variant, point in queries.curve_points_after(session, experiment_id, after_step)
        ]
        progress = Progress.of(experiment).model_dump() | {"status": experiment.status}
        finished = None
        if experiment.status in TERMINAL:
            finished = experiment_out(experiment, session, settings)
        return Poll(points, progress, finished)


async def experiment_events(
    sessions: sessionmaker[Session], settings: Settings, experiment_id: int, last_step: int
) -> AsyncIterator[ServerSentEvent]:
    """Events until the experiment ends; `last_step` is the last point the client has
    (-1: none)."""
    sent_progress: dict[str, Any] | None = None
    while True:
        # Blocking SQL in the threadpool, so one stream never stalls the event loop.
        news = await run_in_threadpool(poll, sessions, settings, experiment_id, last_step)
        if news is None:
            return
        for index, point in enumerate(news.points):
            # The id says "every point up to this step is yours": it goes on the last point of
            # a step (plain, then bn), so a client cut off between the two is sent both again.
            following = news.points[index + 1] if index + 1 < len(news.points) else None
            step_complete = following is None or following["step"] != point["step"]
            if step_complete:
                last_step = point["step"]
            event_id = str(last_step) if step_complete else None
            yield ServerSentEvent(event="point", id=event_id, data=point)
        event_id = str(last_step) if last_step >= 0 else None
        if news.progress != sent_progress:
            sent_progress = news.progress
            yield ServerSentEvent(event="progress", id=event_id, data=news.progress)
        if news.finished is not None:
            yield ServerSentEvent(event="status", id=event_id, data=news.finished)
            return
        await anyio.sleep(POLL_SECONDS)


@dataclass(frozen=True)
class SweepPoll:
    cells: list[dict[str, Any]]
    finished: SweepOut | None  # as GET /sweeps/{id} returns it, once every cell has ended


def poll_sweep(
    sessions: sessionmaker[Session], settings: Settings, sweep_id: int
) -> SweepPoll | None:
    """Every cell's status and progress; None if the sweep is gone."""
    with sessions() as session:
        sweep = queries.get_sweep(session, sweep_id)
        if sweep is None:
            return None
        cells = [
            {
                "id": cell.id,
                "status": cell.status,
                "progress": Progress.of(cell).model_dump(),
            }
            for cell in sweep.experiments
        ]
        done = all(cell["status"] in TERMINAL for cell in cells)
        return SweepPoll(cells, sweep_out(sweep, session, settings) if done else None)


async def sweep_events(
    sessions: sessionmaker[Session], settings: Settings, sweep_id: int
) -> AsyncIterator[ServerSentEvent]:
    """`cell` {id, status, progress} for each cell whenever it changed (every cell on the first
    poll, so a reconnect misses nothing), then `status` (the sweep) once all have ended."""
    sent: dict[int, dict[str, Any]] = {}
    while True:
        news = await run_in_threadpool(poll_sweep, sessions, settings, sweep_id)
        if news is None:
            return
        for cell in news.cells:
            if sent.get(cell["id"]) != cell:
                sent[cell["id"]] = cell
                yield ServerSentEvent(event="cell", data=cell)
        if news.finished is not None:
            yield ServerSentEvent(event="status", data=news.finished)
            return
        await anyio.sleep(POLL_SECONDS)
