"""Who runs an experiment: a lease in its SQL row, with a fencing token.

The broker may deliver a job twice (Redis's visibility timeout, a manual re-enqueue, a message
restored after a crash) or not at all (the embedded file broker forgets a message whose worker
was killed). So the row decides, not the message:

- `claim` is one conditional UPDATE: it takes a queued experiment, or a running one whose
  heartbeat is stale (its worker died), and bumps `lease_token`. Two workers claiming at once:
  one UPDATE matches, the other finds the row already taken and drops its copy of the job.
- every write of the job starts with `hold`, an UPDATE conditional on that token (and on the
  status still being `running`), in the same transaction as the write. In PostgreSQL it also
  locks the row until the commit, so a claim cannot slip in between the check and the write.
  A worker whose lease was taken (it froze past the timeout, or the reaper gave its job away)
  gets `LeaseLost` and stops: it never writes over its successor.
- `requeue_stale` and `requeue_forgotten` are the reaper's side (bnlab/worker/reaper.py).
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, or_, update
from sqlalchemy.orm import Session

from bnlab.store.tables import Experiment, utc_now


class LeaseLost(Exception):
    """Another worker owns the experiment now (or it was handed back): stop, write nothing."""


@dataclass(frozen=True)
class Lease:
    experiment_id: int
    token: int
    worker: str

    def lost(self) -> LeaseLost:
        return LeaseLost(
            f"experiment {self.experiment_id}: lease {self.token} of {self.worker} was taken"
        )


def claim(
    session: Session, experiment_id: int, worker: str, stale_before: datetime
) -> Lease | None:
    """Take the experiment if it is queued, or running on a worker that stopped heart-beating
    before `stale_before`; None if it is finished, cancelled, or alive on another worker."""
    now = utc_now()
    claimed = session.execute(
        update(Experiment)
        .where(
            Experiment.id == experiment_id,
            or_(
                Experiment.status == "queued",
                (Experiment.status == "running") & _stale(stale_before),
            ),
        )
        .values(
            status="running",
            worker=worker,
            lease_token=Experiment.lease_token + 1,
            heartbeat_at=now,
            started_at=func.coalesce(Experiment.started_at, now),
        )
        .returning(Experiment.lease_token)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    return None if claimed is None else Lease(experiment_id, claimed, worker)


def hold(session: Session, lease: Lease) -> bool:
    """Renew the lease inside the caller's transaction; returns whether a cancel was asked.
    Raises `LeaseLost` when the row no longer carries this lease's token."""
    cancel_requested = session.execute(
        update(Experiment)
        .where(
            Experiment.id == lease.experiment_id,
            Experiment.lease_token == lease.token,
            Experiment.status == "running",
        )
        .values(heartbeat_at=utc_now())
        .returning(Experiment.cancel_requested)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if cancel_requested is None:
        raise lease.lost()
    return cancel_requested


def hand_back(session: Session, lease: Lease) -> None:
    """Queue the experiment again (a worker shutting down); its curve and state file stay."""
    hold(session, lease)
    session.execute(
        update(Experiment)
        .where(Experiment.id == lease.experiment_id)
        .values(status="queued", worker=None, heartbeat_at=utc_now())
        .execution_options(synchronize_session=False)
    )


def requeue_stale(session: Session, queue: str, stale_before: datetime) -> list[int]:
    """Experiments on `queue` running on a worker that stopped heart-beating: back to queued
    (which also revokes their lease: `hold` wants `running`), or cancelled if a cancel was
    asked for meanwhile. Returns the ids of those queued again."""
    session.execute(
        update(Experiment)
        .where(
            Experiment.queue == queue,
            Experiment.status == "running",
            Experiment.cancel_requested.is_(True),
            _stale(stale_before),
        )
        .values(status="cancelled", worker=None, finished_at=utc_now())
        .execution_options(synchronize_session=False)
    )
    return list(
        session.scalars(
            update(Experiment)
            .where(
                Experiment.queue == queue,
                Experiment.status == "running",
                _stale(stale_before),
            )
            .values(status="queued", worker=None, heartbeat_at=utc_now())
            .returning(Experiment.id)
            .execution_options(synchronize_session=False)
        )
    )


def requeue_forgotten(session: Session, queue: str, waiting_before: datetime) -> list[int]:
    """Queued experiments on `queue` that have waited since before `waiting_before` (since they
    were created or last queued again): their clock restarts now. Returns their ids."""
    waiting_since = func.coalesce(Experiment.heartbeat_at, Experiment.created_at)
    # Conditional: of several idle workers looking at once, the first requeues them.
    return list(
        session.scalars(
            update(Experiment)
            .where(
                Experiment.queue == queue,
                Experiment.status == "queued",
                waiting_since < waiting_before,
            )
            .values(heartbeat_at=utc_now())
            .returning(Experiment.id)
            .execution_options(synchronize_session=False)
        )
    )


def _stale(before: datetime) -> ColumnElement[bool]:
    return or_(Experiment.heartbeat_at.is_(None), Experiment.heartbeat_at < before)
