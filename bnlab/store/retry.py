"""Transactions that outlive a short database outage (a PostgreSQL restart, a failover).

A worker must not lose hours of training because the database was gone for ten seconds: its
writes run as `in_transaction(...)`, which reruns the whole transaction in a fresh session, with
exponential backoff, while the error says the connection failed. Anything else (an integrity
error, a bug) is raised at once: running it again would fail the same way.
"""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 8.0


def is_transient(error: BaseException) -> bool:
    """True for a lost or refused connection (or SQLite's locked database): worth a retry."""
    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def in_transaction(
    sessions: sessionmaker[Session], work: Callable[[Session], T], budget_seconds: float = 60.0
) -> T:
    """Run `work(session)` and commit; on a transient error, roll back and run it all again
    after 0.25 s, 0.5 s, 1 s, ... (at most 8 s apart) until `budget_seconds` are spent.

    `work` must be safe to run twice: a commit whose answer was lost may have happened.
    """
    deadline = time.monotonic() + budget_seconds
    delay = FIRST_DELAY_SECONDS
    while True:
        try:
            with sessions() as session:
                result = work(session)
                session.commit()
                return result
        except DBAPIError as error:
            if not is_transient(error) or time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable (%s); retrying in %.2g s", _first_line(error), delay)
        time.sleep(delay)
        delay = min(2 * delay, MAX_DELAY_SECONDS)


def _first_line(error: DBAPIError) -> str:
    return str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
