"""Which queues have a live worker, and what to tell a person whose experiment waits on none."""

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.orm import Session

from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.tables import Experiment
from bnlab.vocabulary import Queue

# A worker missing three heartbeats in a row is gone; the slack absorbs a busy database.
MISSED_HEARTBEATS = 3
SLACK_SECONDS = 5.0


def live_worker_counts(session: Session, settings: Settings) -> dict[Queue, int]:
    max_age = MISSED_HEARTBEATS * settings.worker_heartbeat_seconds + SLACK_SECONDS
    return queries.live_workers(session, timedelta(seconds=max_age))


def notices(
    session: Session, settings: Settings, experiments: Sequence[Experiment]
) -> dict[int, str | None]:
    """A notice per experiment id: set for a queued one that no live worker will ever take.
    The worker table is read only when something is queued."""
    if not any(experiment.status == "queued" for experiment in experiments):
        return {experiment.id: None for experiment in experiments}
    counts = live_worker_counts(session, settings)
    return {experiment.id: notice(experiment, counts) for experiment in experiments}


def notice(experiment: Experiment, counts: dict[Queue, int]) -> str | None:
    if experiment.status != "queued" or counts.get(experiment.queue, 0) > 0:
        return None
    return (
        f"no worker serves the '{experiment.queue}' queue; start one with "
        f"`bnlab worker --queue {experiment.queue}`"
    )
