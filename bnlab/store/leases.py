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

Each time a running experiment is taken from a worker that stopped heart-beating (by the reaper
or by a claim), `worker_losses` goes up by one. At `max_losses` it is not handed out again but
fails, saying why: a job that kills its worker every time (out of memory, a crash in native code)
would otherwise run forever. A worker that hands its job back (`hand_back`) loses nothing.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, String, case, cast, func, or_, select, update
from sqlalchemy.orm import Session

from bnlab.store.tables import Experiment, utc_now
from bnlab.vocabulary import TERMINAL


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
    session: Session, experiment_id: int, worker: str, stale_before: datetime, max_losses: int
) -> Lease | None:
    """Take the experiment if it is queued, or running on a worker that stopped heart-beating
    before `stale_before` (a loss; not the one that reaches `max_losses`: the reaper fails the
    experiment then); None if it is finished, cancelled, or alive on another worker."""
    now = utc_now()
    was_running = Experiment.status == "running"
    claimed = session.execute(
        update(Experiment)
        .where(
            Experiment.id == experiment_id,
            or_(
                Experiment.status == "queued",
                was_running & _stale(stale_before) & (_losses_now() < max_losses),
            ),
        )
        .values(
            status="running",
            worker=worker,
            lease_token=Experiment.lease_token + 1,
            # SET reads the row as it was: a loss only if it was running on a dead worker.
            worker_losses=case((was_running, _losses_now()), else_=Experiment.worker_losses),
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


def ended_by_holder(session: Session, lease: Lease) -> bool:
    """Whether the row still carries this lease's token at a terminal status: the job was
    finished under this lease (not taken by another worker) when `hold` raised `LeaseLost`."""
    status = session.scalar(
        select(Experiment.status).where(
            Experiment.id == lease.experiment_id, Experiment.lease_token == lease.token
        )
    )
    return status in TERMINAL


def hand_back(session: Session, lease: Lease) -> None:
    """Queue the experiment again (a worker shutting down); its curve and state file stay."""
    hold(session, lease)
    session.execute(
        update(Experiment)
        .where(Experiment.id == lease.experiment_id)
        .values(status="queued", worker=None, heartbeat_at=utc_now())
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class Reaped:
    queued: list[int]  # queued again: they need a new message
    failed: list[int]  # their worker died `max_losses` times: failed, not retried


def requeue_stale(session: Session, queue: str, stale_before: datetime, max_losses: int) -> Reaped:
    """Experiments on `queue` running on a worker that stopped heart-beating (each a loss):
    cancelled if a cancel was asked for meanwhile; failed if that was their `max_losses`th
    loss; else back to queued. Any of these revokes the dead worker's lease (`hold` wants
    `running`)."""
    dead = (Experiment.queue == queue) & (Experiment.status == "running") & _stale(stale_before)
    session.execute(
        update(Experiment)
        .where(dead, Experiment.cancel_requested.is_(True))
        .values(status="cancelled", worker=None, finished_at=utc_now())
        .execution_options(synchronize_session=False)
    )
    reason = (
        "its worker died "
        + cast(_losses_now(), String)
        + " times while running it (killed, out of memory?); not retried again"
    )
    failed = session.scalars(
        update(Experiment)
        .where(dead, _losses_now() >= max_losses)
        .values(
            status="failed",
            worker=None,
            finished_at=utc_now(),
            worker_losses=_losses_now(),
            error=reason,
        )
        .returning(Experiment.id)
        .execution_options(synchronize_session=False)
    )
    failed_ids = list(failed)
    queued = session.scalars(
        update(Experiment)
        .where(dead)
        .values(status="queued", worker=None, heartbeat_at=utc_now(), worker_losses=_losses_now())
        .returning(Experiment.id)
        .execution_options(synchronize_session=False)
    )
    return Reaped(queued=list(queued), failed=failed_ids)


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


def _losses_now() -> ColumnElement[int]:
    """The row's worker losses counting the one being handled."""
    return Experiment.worker_losses + 1
