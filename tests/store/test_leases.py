"""Leases with fencing tokens and the reaper's queries, on SQLite and PostgreSQL alike."""

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bnlab.store import leases, queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.leases import Lease, LeaseLost, Reaped
from bnlab.store.migrate import upgrade
from bnlab.store.retry import in_transaction
from bnlab.store.tables import Experiment, utc_now
from bnlab.worker.lease import LeaseKeeper

SPEC = {"activation": "relu"}
MAX_LOSSES = 3  # the default of BNLAB_MAX_WORKER_LOSSES


@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    upgrade(database_url)
    return make_sessionmaker(database_url)


@pytest.fixture
def experiment_id(sessions: sessionmaker[Session]) -> Iterator[int]:
    with sessions() as session:
        experiment = queries.create_experiment(session, SPEC, "cpu", 100)
        session.commit()
        yield experiment.id


def now_minus(seconds: float) -> datetime:
    return utc_now() - timedelta(seconds=seconds)


def claim(
    sessions: sessionmaker[Session], experiment_id: int, worker: str, stale: float = 10
) -> Lease | None:
    with sessions() as session:
        lease = leases.claim(session, experiment_id, worker, now_minus(stale), MAX_LOSSES)
        session.commit()
        return lease


def set_row(sessions: sessionmaker[Session], experiment_id: int, **values: object) -> None:
    with sessions() as session:
        session.execute(update(Experiment).where(Experiment.id == experiment_id).values(**values))
        session.commit()


def row(sessions: sessionmaker[Session], experiment_id: int) -> Experiment:
    with sessions() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        return experiment


def reap(session: Session) -> Reaped:
    return leases.requeue_stale(session, "cpu", now_minus(10), MAX_LOSSES)


def reap_committed(sessions: sessionmaker[Session]) -> Reaped:
    with sessions() as session:
        reaped = reap(session)
        session.commit()
        return reaped


def die(sessions: sessionmaker[Session], experiment_id: int) -> None:
    """The worker running the experiment stops heart-beating (SIGKILL, out of memory)."""
    set_row(sessions, experiment_id, heartbeat_at=now_minus(60))


def test_one_claim_wins_and_a_live_lease_is_not_taken(
    sessions: sessionmaker[Session], experiment_id: int
) -> None:
    first = claim(sessions, experiment_id, "worker-a")
    assert first is not None and first.token == 1
    assert claim(sessions, experiment_id, "worker-b") is None  # a duplicate delivery
    stored = row(sessions, experiment_id)
    assert (stored.status, stored.worker, stored.lease_token) == ("running", "worker-a", 1)
    assert stored.started_at is not None


def test_a_stale_lease_is_taken_and_its_holder_can_no_longer_write(
    sessions: sessionmaker[Session], experiment_id: int
) -> None:
    old = claim(sessions, experiment_id, "worker-a")
    assert old is not None
    set_row(sessions, experiment_id, heartbeat_at=now_minus(60))
    new = claim(sessions, experiment_id, "worker-b")
    assert new is not None and new.token == old.token + 1
    with sessions() as session, pytest.raises(LeaseLost):
        leases.hold(session, old)
    with sessions() as session:
        assert leases.hold(session, new) is False


def test_hold_reports_a_cancel_and_finished_experiments_are_never_claimed(
    sessions: sessionmaker[Session], experiment_id: int
) -> None:
    lease = claim(sessions, experiment_id, "worker-a")
    assert lease is not None
    set_row(sessions, experiment_id, cancel_requested=True)
    with sessions() as session:
        assert leases.hold(session, lease) is True
    set_row(sessions, experiment_id, status="cancelled", heartbeat_at=now_minus(60))
    assert claim(sessions, experiment_id, "worker-b") is None


def test_hand_back_queues_it_again_and_revokes_the_lease(
    sessions: sessionmaker[Session], experiment_id: int
) -> None:
    lease = claim(sessions, experiment_id, "worker-a")
    assert lease is not None
    with sessions() as session:
        leases.hand_back(session, lease)
        session.commit()
    assert (row(sessions, experiment_id).status, row(sessions, experiment_id).worker) == (
        "queued",
        None,
    )
    with sessions() as session, pytest.raises(LeaseLost):
        leases.hold(session, lease)
    assert claim(sessions, experiment_id, "worker-b") is not None


def test_reaper_queries_requeue_dead_jobs_and_forgotten_messages_once(
    sessions: sessionmaker[Session], experiment_id: int
) -> None:
    lease = claim(sessions, experiment_id, "worker-a")
    assert lease is not None
    with sessions() as session:
        assert reap(session) == Reaped([], [])  # alive
    set_row(sessions, experiment_id, heartbeat_at=now_minus(60))
    with sessions() as session:
        assert reap(session) == Reaped([experiment_id], [])
        assert reap(session) == Reaped([], [])  # only once
        session.commit()
    assert row(sessions, experiment_id).status == "queued"

    with sessions() as session:  # it was queued again just now: not forgotten yet
        assert leases.requeue_forgotten(session, "cpu", now_minus(10)) == []
    set_row(sessions, experiment_id, heartbeat_at=now_minus(60))
    with sessions() as session:
        assert leases.requeue_forgotten(session, "gpu", now_minus(10)) == []
        assert leases.requeue_forgotten(session, "cpu", now_minus(10)) == [experiment_id]
        assert leases.requeue_forgotten(session, "cpu", now_minus(10)) == []


def test_a_dead_job_that_was_asked_to_cancel_is_cancelled_not_queued_again(
    sessions: sessionmaker[Session], experiment_id: int
) -> None:
    assert claim(sessions, experiment_id, "worker-a") is not None
    set_row(sessions, experiment_id, cancel_requested=True, heartbeat_at=now_minus(60))
    with sessions() as session:
        assert reap(session) == Reaped([], [])
        session.commit()
    assert row(sessions, experiment_id).status == "cancelled"


def test_retry_reruns_a_transaction_on_a_lost_connection_but_not_on_an_integrity_error(
    sessions: sessionmaker[Session],
) -> None:
    calls: list[int] = []

    def flaky(session: Session) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return "done"

    assert in_transaction(sessions, flaky, budget_seconds=10) == "done"
    assert len(calls) == 3

    def duplicate(session: Session) -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    calls.clear()
    with pytest.raises(IntegrityError):
        in_transaction(sessions, duplicate, budget_seconds=10)
    assert len(calls) == 1


def test_a_job_whose_worker_dies_every_time_fails_at_the_cap_with_the_reason(
    sessions: sessionmaker[Session], experiment_id: int
) -> None:
    for losses in range(1, MAX_LOSSES):
        assert claim(sessions, experiment_id, f"worker-{losses}") is not None
        die(sessions, experiment_id)
        assert reap_committed(sessions) == Reaped([experiment_id], [])
        stored = row(sessions, experiment_id)
        assert (stored.status, stored.worker_losses) == ("queued", losses)
    assert claim(sessions, experiment_id, "worker-last") is not None
    die(sessions, experiment_id)
    assert reap_committed(sessions) == Reaped([], [experiment_id])
    failed = row(sessions, experiment_id)
    assert (failed.status, failed.worker, failed.worker_losses) == ("failed", None, MAX_LOSSES)
    assert failed.finished_at is not None
    assert failed.error == (
        f"its worker died {MAX_LOSSES} times while running it (killed, out of memory?); "
        "not retried again"
    )
    assert claim(sessions, experiment_id, "worker-after") is None  # a late message: nothing


def test_taking_a_dead_worker_s_job_by_a_claim_counts_and_the_cap_is_left_to_the_reaper(
    sessions: sessionmaker[Session], experiment_id: int
) -> None:
    # A redelivered message (Redis's visibility timeout, a re-enqueue) reaches a live worker
    # before the reaper does: that too takes the job from a dead worker.
    assert claim(sessions, experiment_id, "worker-a") is not None
    for losses in range(1, MAX_LOSSES):
        die(sessions, experiment_id)
        assert claim(sessions, experiment_id, f"worker-{losses}") is not None
        assert row(sessions, experiment_id).worker_losses == losses
    die(sessions, experiment_id)
    assert claim(sessions, experiment_id, "worker-last") is None  # the last loss: not taken
    assert reap_committed(sessions) == Reaped([], [experiment_id])
    assert row(sessions, experiment_id).status == "failed"


def test_handing_a_job_back_is_no_loss(sessions: sessionmaker[Session], experiment_id: int) -> None:
    for worker in range(MAX_LOSSES + 1):  # SIGTERM on its worker, again and again
        lease = claim(sessions, experiment_id, f"worker-{worker}")
        assert lease is not None
        with sessions() as session:
            leases.hand_back(session, lease)
            session.commit()
    stored = row(sessions, experiment_id)
    assert (stored.status, stored.worker_losses) == ("queued", 0)


def test_the_lease_keeper_tells_a_job_finished_under_its_lease_from_a_lease_taken(
    sessions: sessionmaker[Session], experiment_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    # The keeper's last beat can land after the job's own write marked it succeeded.
    lease = claim(sessions, experiment_id, "worker-a")
    assert lease is not None
    set_row(sessions, experiment_id, status="succeeded")
    with caplog.at_level(logging.WARNING, logger="bnlab.worker.lease"):
        with LeaseKeeper(sessions, lease, interval=0.01) as keeper:
            time.sleep(0.3)
        assert not keeper.lost.is_set()
        assert not caplog.messages

        # Taken by another worker (a stale heartbeat): that is a loss, and said so.
        set_row(sessions, experiment_id, status="running", heartbeat_at=now_minus(60))
        assert claim(sessions, experiment_id, "worker-b") is not None
        with LeaseKeeper(sessions, lease, interval=0.01) as keeper:
            assert keeper.lost.wait(5)
    assert caplog.messages == [
        f"experiment {experiment_id}: lease 1 of worker-a was taken; "
        "this worker writes nothing more for it"
    ]
