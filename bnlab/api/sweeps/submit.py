"""A new sweep: the sweep and all its cells stored in one transaction, then queued, a message per
group of cells that train as one batched model (a lone cell gets an ordinary experiment job).

As for a single experiment, nothing is left queued without a message: cells whose message the
broker did not take are marked failed, saying why.
"""

from collections.abc import Sequence

from fastapi import HTTPException
from sqlalchemy.orm import Session

from bnlab.api.broker import Broker
from bnlab.api.submit import fail_unqueued
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.tables import Experiment, Sweep
from bnlab.sweeps import SweepRequest, groups


def submit_sweep(
    session: Session,
    broker: Broker,
    settings: Settings,
    request: SweepRequest,
    specs: Sequence[ExperimentSpec],
    idempotency_key: str | None = None,
) -> Sweep:
    sweep = queries.create_sweep(session, request.model_dump(mode="json"), idempotency_key)
    cells = [
        queries.create_experiment(
            session,
            spec.model_dump(),
            queue=spec.device,
            total_steps=spec.training_batches,
            sweep_id=sweep.id,
        )
        for spec in specs
    ]
    # Committed before any message is sent: a fast worker must find the rows it is told about.
    session.commit()
    jobs = [
        [cells[i] for i in group]
        for group in groups(specs, request.stack, settings.max_stacked_cells)
    ]
    for number, job in enumerate(jobs):
        try:
            _enqueue(broker, job)
        except Exception as error:  # whatever the broker raised, these jobs are not queued
            unqueued = [cell for later in jobs[number:] for cell in later]
            raise _not_queued(session, broker, sweep, unqueued, error) from None
    return sweep


def _enqueue(broker: Broker, cells: list[Experiment]) -> None:
    if len(cells) == 1:
        broker.enqueue(cells[0].id, cells[0].queue)
    else:
        broker.enqueue_group([cell.id for cell in cells], cells[0].queue)


def _not_queued(
    session: Session,
    broker: Broker,
    sweep: Sweep,
    cells: list[Experiment],
    error: Exception,
) -> HTTPException:
    cause = fail_unqueued(session, broker, error, sweep, cells)
    return HTTPException(
        503,
        f"sweep {sweep.id} was stored but {len(cells)} of its cells could not be queued: the "
        f"broker is unreachable ({cause}). They are marked failed; check GET /health, then "
        "submit the sweep again",
    )
