"""A new experiment: stored, then queued; never left queued without a message on the broker."""

from collections.abc import Iterable

from fastapi import HTTPException
from sqlalchemy.orm import Session

from bnlab.api.broker import Broker
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.tables import Experiment, Sweep, utc_now


def submit_experiment(
    session: Session, broker: Broker, spec: ExperimentSpec, idempotency_key: str | None = None
) -> Experiment:
    experiment = queries.create_experiment(
        session,
        spec.model_dump(),
        queue=spec.device,
        total_steps=spec.training_batches,
        idempotency_key=idempotency_key,
    )
    # Committed before the message is sent: a fast worker must find the row it is told about.
    session.commit()
    try:
        broker.enqueue(experiment.id, experiment.queue)
    except Exception as error:  # whatever the broker raised, the job is not queued
        cause = fail_unqueued(session, broker, error, experiment, [experiment])
        raise HTTPException(
            503,
            f"experiment {experiment.id} was stored but could not be queued: the broker is "
            f"unreachable ({cause}). It is marked failed; check GET /health, then submit it again",
        ) from None
    return experiment


def fail_unqueued(
    session: Session,
    broker: Broker,
    error: Exception,
    made: Experiment | Sweep,
    experiments: Iterable[Experiment],
) -> str:
    """After the broker refused their messages (`error`): `experiments` marked failed, saying
    why, and committed. Returns the broker's cause, for the 503 that says so.

    The key of the row the request `made` is freed: the client is told to submit again, and its
    retry must make a new one, not be handed back this failed one."""
    cause = broker.describe(error)
    for experiment in experiments:
        experiment.status = "failed"
        experiment.error = f"could not be queued, the broker did not take the job ({cause})"
        experiment.finished_at = utc_now()
    made.idempotency_key = None
    session.commit()
    return cause
