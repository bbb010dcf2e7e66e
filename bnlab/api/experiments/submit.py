"""New experiments, alone or as the cells of a sweep: stored, then queued, a job per group of
cells that train as one batched model (a lone experiment is a group of one); never left queued
without a message on the broker.
"""

from collections.abc import Sequence

from sqlalchemy.orm import Session

from bnlab.api.core.broker import Broker
from bnlab.api.core.domain_errors import Unavailable
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.queries import Lineage
from bnlab.store.tables import Experiment, Sweep, utc_now
from bnlab.sweeps import SweepRequest, groups


def submit_experiment(
    session: Session,
    broker: Broker,
    spec: ExperimentSpec,
    idempotency_key: str | None = None,
    fork: Lineage | None = None,
) -> Experiment:
    """One experiment, a group of one; a `fork` continues its parent (bnlab/api/experiments/
    forks.py)."""
    (experiment,) = submit(
        session, broker, [spec], [[0]], idempotency_key=idempotency_key, fork=fork
    )
    return experiment


def submit_sweep(
    session: Session,
    broker: Broker,
    settings: Settings,
    request: SweepRequest,
    specs: Sequence[ExperimentSpec],
    idempotency_key: str | None = None,
) -> Sweep:
    """The sweep and all its cells in one transaction, then a job per group."""
    sweep = queries.create_sweep(session, request.model_dump(mode="json"), idempotency_key)
    submit(session, broker, specs, groups(specs, request.stack, settings.max_stacked_cells), sweep)
    return sweep


def submit(
    session: Session,
    broker: Broker,
    specs: Sequence[ExperimentSpec],
    jobs: Sequence[Sequence[int]],
    sweep: Sweep | None = None,
    idempotency_key: str | None = None,
    fork: Lineage | None = None,
) -> list[Experiment]:
    """`specs` stored as queued experiments (the cells of `sweep`, or one experiment holding
    `idempotency_key`, or one that is a `fork`) and committed, then a job queued per group of
    `jobs` (indices into `specs`). When the broker refuses one, that group and those after it
    are marked failed, saying why, and `Unavailable` says so."""
    experiments = [
        queries.create_experiment(
            session,
            spec.model_dump(),
            queue=spec.device,
            total_steps=spec.training_batches,
            idempotency_key=None if sweep else idempotency_key,
            sweep_id=sweep.id if sweep else None,
            fork=fork,
        )
        for spec in specs
    ]
    # Committed before any message is sent: a fast worker must find the rows it is told about.
    session.commit()
    groups_of = [[experiments[index] for index in job] for job in jobs]
    for number, group in enumerate(groups_of):
        try:
            broker.enqueue([experiment.id for experiment in group], group[0].queue)
        except Exception as error:  # whatever the broker raised, these jobs are not queued
            unqueued = [experiment for later in groups_of[number:] for experiment in later]
            cause = _fail_unqueued(session, broker, error, sweep or experiments[0], unqueued)
            raise Unavailable(_not_queued(sweep, unqueued, cause)) from None
    return experiments


def _fail_unqueued(
    session: Session,
    broker: Broker,
    error: Exception,
    made: Experiment | Sweep,
    experiments: Sequence[Experiment],
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


def _not_queued(sweep: Sweep | None, unqueued: Sequence[Experiment], cause: str) -> str:
    if sweep is None:
        return (
            f"experiment {unqueued[0].id} was stored but could not be queued: the broker is "
            f"unreachable ({cause}). It is marked failed; check GET /health, then submit it again"
        )
    return (
        f"sweep {sweep.id} was stored but {len(unqueued)} of its cells could not be queued: the "
        f"broker is unreachable ({cause}). They are marked failed; check GET /health, then "
        "submit the sweep again"
    )
