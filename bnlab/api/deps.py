"""What routes get injected: settings, a database session per request, the broker, the served
nets, the study's compute slots, and the experiment or sweep a path names. `create_app` puts the
long-lived ones on `app.state`.

The light ones are `async def`: FastAPI runs a plain `def` dependency in its threadpool. The
/predict route reads `app_settings` and `served_nets` as plain calls instead: resolving even an
async dependency costs it ~20 us a request, measured against a bare app.
"""

from collections.abc import Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bnlab.api.core.broker import Broker
from bnlab.api.experiments.schemas import MAX_ID
from bnlab.api.predict.serving import ServedNets
from bnlab.api.study.sources import ComputeSlots
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.retry import is_transient
from bnlab.store.tables import Experiment, Sweep


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def served_nets(request: Request) -> ServedNets:
    nets: ServedNets = request.app.state.served_nets
    return nets


def study_slots(request: Request) -> ComputeSlots:
    slots: ComputeSlots = request.app.state.study_slots
    return slots


async def get_settings(request: Request) -> Settings:
    return app_settings(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    # make_sessionmaker is cached per URL: one engine (and pool) per process.
    session = make_sessionmaker(settings.database_url)()
    try:
        yield session
    finally:
        _close(session)


def _close(session: Session) -> None:
    """Close runs after the answer was sent. Its rollback on a connection the database dropped
    meanwhile fails, but changes nothing (SQLAlchemy has discarded the connection): raising it
    would only cut off the client's answer mid-stream."""
    try:
        session.close()
    except DBAPIError as error:
        if not is_transient(error):
            raise


SessionDep = Annotated[Session, Depends(get_session)]


async def get_broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


BrokerDep = Annotated[Broker, Depends(get_broker)]

ExperimentId = Annotated[int, Path(ge=1, le=MAX_ID, description="The experiment's id.")]
SweepId = Annotated[int, Path(ge=1, le=MAX_ID, description="The sweep's id.")]

Row = TypeVar("Row")


def found(row: Row | None, what: str, row_id: int) -> Row:
    """The row a path names, or a 404 that says there is none."""
    if row is None:
        raise HTTPException(404, f"no {what} with id {row_id}")
    return row


def get_experiment(experiment_id: ExperimentId, session: SessionDep) -> Experiment:
    return found(queries.get_experiment(session, experiment_id), "experiment", experiment_id)


def get_sweep(sweep_id: SweepId, session: SessionDep) -> Sweep:
    return found(queries.get_sweep(session, sweep_id), "sweep", sweep_id)


ExperimentDep = Annotated[Experiment, Depends(get_experiment)]
SweepDep = Annotated[Sweep, Depends(get_sweep)]
