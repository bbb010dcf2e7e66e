"""The reaper: SQL, not the broker, says which experiments still need a worker.

Every worker runs one, in its main process, after each of its heartbeats. It queues again:

1. experiments running on a worker that stopped heart-beating (killed, frozen, its machine
   gone) for longer than the lease timeout: back to `queued`, which revokes the dead worker's
   lease, and a new message on their queue. Redis would redeliver the old message only after
   its visibility timeout (an hour by default); the embedded file broker never does. One whose
   worker has died `max_worker_losses` times fails instead: it likely kills every worker.
2. experiments queued on this worker's own queue that have waited longer than
   `requeue_after_seconds` while this worker had a free slot the whole time: with one job
   prefetched per slot, a message in the queue would have reached it, so the message was lost
   (a worker killed between taking it and claiming the experiment, Redis restarted without
   its data). They get a new message.

A copy too many is harmless: the lease (bnlab/store/leases.py) lets one delivery run the
experiment and the others find it taken. The reaper judges stale heartbeats only after it has
itself reached the database for a whole lease timeout: after an outage every heartbeat is old,
and live jobs need that long to beat again.
"""

import logging
import time
from datetime import timedelta

from celery.worker import state
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bnlab.jobs import Enqueue
from bnlab.settings import Settings
from bnlab.store import leases
from bnlab.store.tables import utc_now
from bnlab.vocabulary import QUEUES, Queue

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, queue: Queue, slots: int, settings: Settings, enqueue: Enqueue) -> None:
        self.queue = queue
        self.slots = slots
        self.settings = settings
        self.enqueue = enqueue
        now = time.monotonic()
        self.full_at = now  # last time every slot was taken (or the worker started)
        self.database_since: float | None = None  # reached without a failure since

    def tick(self, sessions: sessionmaker[Session]) -> None:
        now = time.monotonic()
        if len(state.active_requests) + len(state.reserved_requests) >= self.slots:
            self.full_at = now
        try:
            with sessions() as session:
                # Asked every time, not only when there is something to requeue: the
                # reaper must know how long the database has answered without a break.
                session.execute(select(1))
                requeued = self._requeue(session, now)
                session.commit()
        except SQLAlchemyError as error:
            self.database_since = None
            log.warning("reaper: database unreachable (%s)", type(error).__name__)
            return
        if self.database_since is None:
            self.database_since = now
        for experiment_id, queue in requeued:
            try:
                self.enqueue([experiment_id], queue)  # a job of its own: resumes alone
            except Exception as error:  # the broker is down: the rule 2 retries later
                log.warning("reaper: could not queue experiment %s (%s)", experiment_id, error)

    def _requeue(self, session: Session, now: float) -> list[tuple[int, Queue]]:
        requeued: list[tuple[int, Queue]] = []
        lease_timeout = self.settings.lease_timeout
        if self.database_since is not None and now - self.database_since >= lease_timeout:
            stale_before = utc_now() - timedelta(seconds=lease_timeout)
            most = self.settings.max_worker_losses
            for queue in QUEUES:  # any queue: so that a user sees it waiting for a worker
                reaped = leases.requeue_stale(session, queue, stale_before, most)
                for experiment_id in reaped.failed:
                    log.error(
                        "reaper: experiment %s failed: its worker died %d times while running it",
                        experiment_id,
                        most,
                    )
                for experiment_id in reaped.queued:
                    log.warning(
                        "reaper: experiment %s's worker stopped heart-beating; queued again",
                        experiment_id,
                    )
                    requeued.append((experiment_id, queue))
        wait = self.settings.requeue_after_seconds
        if now - self.full_at >= wait:
            waiting_before = utc_now() - timedelta(seconds=wait)
            for experiment_id in leases.requeue_forgotten(session, self.queue, waiting_before):
                log.warning(
                    "reaper: experiment %s waited %.0f s with a worker free; queued again",
                    experiment_id,
                    wait,
                )
                requeued.append((experiment_id, self.queue))
        return requeued
