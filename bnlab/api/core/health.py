"""/health: can the API reach its database and broker, which queues have workers, and has
`bnlab up` given up restarting its worker."""

from fastapi import APIRouter, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from bnlab.api.core.errors import RETRY_AFTER_SECONDS
from bnlab.api.core.redact import reason
from bnlab.api.core.workers import live_worker_counts
from bnlab.api.deps import BrokerDep, SessionDep, SettingsDep
from bnlab.api.experiments.schemas import Health
from bnlab.supervisor import given_up

router = APIRouter(tags=["health"])


@router.get("/health", responses={503: {"model": Health, "description": "Something is down."}})
def health(
    session: SessionDep, broker: BrokerDep, settings: SettingsDep, response: Response
) -> Health:
    """200 when the database and the broker answer, 503 otherwise or when `bnlab up` gave up
    restarting its worker; never shows a password."""
    database, workers = "ok", None
    try:
        session.execute(text("SELECT 1"))
        # Also proves the schema is there: `bnlab migrate` has run.
        workers = live_worker_counts(session, settings)
    except SQLAlchemyError as error:
        database = f"unreachable or not migrated: {reason(error, settings.database_url)}"
    broker_state = broker.check()
    worker = given_up(settings.state_dir)
    if database != "ok" or broker_state != "ok" or worker is not None:
        response.status_code = 503
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return Health(database=database, broker=broker_state, workers=workers, worker=worker)
