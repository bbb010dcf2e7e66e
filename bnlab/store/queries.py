"""The reads and writes the API and the worker share. Callers own the session and commit."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session, selectinload

from bnlab.store.tables import (
    PROBE_TABLES,
    Annotatable,
    Base,
    Checkpoint,
    CurvePoint,
    Experiment,
    KeptState,
    LayerStat,
    ProbeRow,
    Run,
    Sweep,
    Worker,
    utc_now,
)
from bnlab.vocabulary import QUEUES, STATUSES, STUDY_VARIANTS, Queue, Status, Variant


@dataclass(frozen=True)
class Lineage:
    """What a fork continues: its parent, the parent's sample point it starts from, and the spec
    fields it changes there, {field: {"parent": value, "fork": value}}."""

    parent: Experiment
    step: int
    changes: dict[str, Any]


def create_experiment(
    session: Session,
    spec: dict[str, Any],
    queue: Queue,
    total_steps: int,
    *,
    idempotency_key: str | None = None,
    sweep_id: int | None = None,
    fork: Lineage | None = None,
) -> Experiment:
    """A queued experiment with one run per variant of its spec, and for a `fork`, its lineage
    and first sample point. A key used before fails the flush with IntegrityError (the column
    is unique)."""
    experiment = Experiment(
        status="queued",
        queue=queue,
        spec=spec,
        progress_total=total_steps,
        idempotency_key=idempotency_key,
        sweep_id=sweep_id,
        runs=[Run(variant=variant) for variant in spec.get("variants", STUDY_VARIANTS)],
    )
    session.add(experiment)
    session.flush()
    if fork is not None:
        experiment.parent_id, experiment.fork_step = fork.parent.id, fork.step
        experiment.fork_changes = fork.changes
        experiment.progress_step = fork.step
        copy_sample_point(session, fork, experiment)
    return experiment


def get_experiment(session: Session, experiment_id: int) -> Experiment | None:
    query = select(Experiment).where(Experiment.id == experiment_id)
    return session.scalars(query.options(selectinload(Experiment.runs))).one_or_none()


def list_experiments(
    session: Session, status: Status | None, limit: int, offset: int, tags: Sequence[str] = ()
) -> tuple[Sequence[Experiment], int]:
    """A page of experiments, newest first, and how many match in all: those with `status`, if
    given, and every one of `tags`."""
    query = with_tags(select(Experiment), Experiment, tags)
    if status:
        query = query.where(Experiment.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = query.options(selectinload(Experiment.runs))
    page = page.order_by(Experiment.id.desc()).limit(limit).offset(offset)
    return session.scalars(page).all(), total


def get_experiments(session: Session, ids: Sequence[int]) -> Sequence[Experiment]:
    """The experiments among `ids` that exist, with their runs, in no particular order."""
    query = select(Experiment).where(Experiment.id.in_(ids))
    return session.scalars(query.options(selectinload(Experiment.runs))).all()


def run_of(experiment: Experiment, variant: Variant) -> Run:
    return next(run for run in experiment.runs if run.variant == variant)


def variants_of(session: Session, experiment_id: int) -> list[Variant]:
    """The variants an experiment trains, in the order of its spec."""
    query = select(Run.variant).where(Run.experiment_id == experiment_id).order_by(Run.id)
    return list(session.scalars(query))


def curve(session: Session, experiment_id: int) -> dict[Variant, list[CurvePoint]]:
    """Curve points per variant, in step order."""
    query = (
        select(Run.variant, CurvePoint)
        .join(CurvePoint.run)
        .where(Run.experiment_id == experiment_id)
        .order_by(CurvePoint.step)
    )
    points: dict[Variant, list[CurvePoint]] = {v: [] for v in variants_of(session, experiment_id)}
    for variant, point in session.execute(query):
        points[variant].append(point)
    return points


def curve_since_start(session: Session, experiment: Experiment) -> dict[Variant, list[CurvePoint]]:
    """Its curve per variant, and for a fork, before its first point its parent's up to the
    fork's step (its parent's parent's before that...): the run its nets went through, in
    step order. A variant its parent does not train, or a deleted parent, ends it there."""
    points = curve(session, experiment.id)
    lineage = set(points)
    child = experiment
    while child.parent_id is not None and child.fork_step is not None and lineage:
        parent = get_experiment(session, child.parent_id)
        if parent is None:
            break
        earlier = curve(session, parent.id)
        lineage &= set(earlier)
        for variant in lineage:
            before = [point for point in earlier[variant] if point.step < child.fork_step]
            points[variant] = before + points[variant]
        child = parent
    return points


def add_curve_points(
    session: Session,
    experiment: Experiment,
    step: int,
    points: dict[Variant, tuple[float, float | None]],
) -> None:
    """One point per variant in `points`: (validation accuracy, mean training loss)."""
    for variant, (val_accuracy, train_loss) in points.items():
        run = run_of(experiment, variant)
        session.add(
            CurvePoint(run_id=run.id, step=step, val_accuracy=val_accuracy, train_loss=train_loss)
        )


def drop_curve_after(session: Session, experiment: Experiment, step: int) -> None:
    """Forget points (and layer statistics) past `step`: a resumed job writes them again."""
    run_ids = [run.id for run in experiment.runs]
    session.execute(
        delete(CurvePoint).where(CurvePoint.run_id.in_(run_ids), CurvePoint.step > step)
    )
    tables: tuple[type[LayerStat | ProbeRow], ...] = (LayerStat, *PROBE_TABLES)
    for table in tables:
        session.execute(delete(table).where(table.run_id.in_(run_ids), table.step > step))


def add_layer_stats(
    session: Session, experiment: Experiment, step: int, stats: dict[Variant, list[dict[str, Any]]]
) -> None:
    """Per variant, rows of hidden layers: layer, p15, p50, p85, dead_fraction, grad_norm."""
    for variant, rows in stats.items():
        run = run_of(experiment, variant)
        session.add_all(LayerStat(run_id=run.id, step=step, **row) for row in rows)


def layer_stats(session: Session, experiment_id: int) -> dict[Variant, list[LayerStat]]:
    """Layer statistics per variant, ordered by layer, then step."""
    return rows_per_variant(session, experiment_id, LayerStat, LayerStat.layer, LayerStat.step)


# A probe table's rows (see bnlab/worker/why_rows.py): column values by table.
ProbeRows = dict[type[ProbeRow], list[dict[str, Any]]]


def add_probe_rows(
    session: Session, experiment: Experiment, step: int, rows: dict[Variant, ProbeRows]
) -> None:
    """Per variant, the probes' rows at `step`, table by table."""
    for variant, tables in rows.items():
        run = run_of(experiment, variant)
        for table, values in tables.items():
            session.add_all(table(run_id=run.id, step=step, **row) for row in values)


def probe_values(
    session: Session, experiment_ids: Sequence[int], column: Any
) -> dict[tuple[int, Variant], list[float]]:
    """A probe table's `column` (e.g. `Landscape.beta_smoothness`): its known values per
    experiment and variant, in step order."""
    table = column.class_
    query = (
        select(Run.experiment_id, Run.variant, column)
        .join(Run, table.run_id == Run.id)
        .where(Run.experiment_id.in_(experiment_ids), column.is_not(None))
        .order_by(table.step)
    )
    values: dict[tuple[int, Variant], list[float]] = {}
    for experiment_id, variant, value in session.execute(query):
        values.setdefault((experiment_id, variant), []).append(value)
    return values


Row = TypeVar("Row", bound=LayerStat | ProbeRow)


def rows_per_variant(
    session: Session, experiment_id: int, table: type[Row], *order: Any
) -> dict[Variant, list[Row]]:
    """A per-net table's rows of an experiment per variant (every variant it trains, rows or
    not), in `order`."""
    query = (
        select(Run.variant, table)
        .join(Run, table.run_id == Run.id)
        .where(Run.experiment_id == experiment_id)
        .order_by(*order)
    )
    rows: dict[Variant, list[Row]] = {v: [] for v in variants_of(session, experiment_id)}
    for variant, row in session.execute(query):
        rows[variant].append(row)
    return rows


def cancel_experiment(session: Session, experiment_id: int) -> bool:
    """Cancel a queued experiment now, or ask a running one's worker to stop at its next sample
    point; False if it had already finished. Each is an UPDATE conditional on the status, so a
    worker taking or finishing the job at the same moment is never overwritten."""
    queued = session.scalar(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status == "queued")
        .values(status="cancelled", finished_at=utc_now())
        .returning(Experiment.id)
    )
    if queued is not None:
        return True
    running = session.scalar(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status == "running")
        .values(cancel_requested=True)
        .returning(Experiment.id)
    )
    return running is not None


def latest_checkpoint(session: Session, experiment_id: int, variant: Variant) -> Checkpoint | None:
    query = (
        select(Checkpoint)
        .join(Checkpoint.run)
        .where(Run.experiment_id == experiment_id, Run.variant == variant)
        .order_by(Checkpoint.version.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def checkpoint_of(
    session: Session, experiment_id: int, variant: Variant, version: int | None
) -> Checkpoint | None:
    """The variant's checkpoint of that version; the latest for None."""
    if version is None:
        return latest_checkpoint(session, experiment_id, variant)
    query = (
        select(Checkpoint)
        .join(Checkpoint.run)
        .where(
            Run.experiment_id == experiment_id,
            Run.variant == variant,
            Checkpoint.version == version,
        )
    )
    return session.scalars(query).first()


def add_checkpoint(
    session: Session, run: Run, step: int, path: str, sha256: str, size_bytes: int
) -> Checkpoint:
    version = 1 + (
        session.scalar(select(func.max(Checkpoint.version)).where(Checkpoint.run_id == run.id)) or 0
    )
    checkpoint = Checkpoint(
        run_id=run.id, version=version, step=step, path=path, sha256=sha256, size_bytes=size_bytes
    )
    session.add(checkpoint)
    return checkpoint


def import_experiment(
    session: Session,
    spec: dict[str, Any],
    queue: Queue,
    total_steps: int,
    columns: dict[str, Any],
    curve: dict[Variant, list[tuple[int, float, float | None]]],
    results: dict[Variant, dict[str, Any]],
    layer_stats: dict[Variant, list[dict[str, Any]]],
) -> Experiment:
    """An ended experiment taken in from elsewhere (a bundle): its row with `columns` set
    (status, progress_step, times, provenance, imported_from, ...), a run per variant of its
    spec with its `results` (the Run columns by name), its curve points (step, validation
    accuracy, training loss) and layer statistics (rows as `add_layer_stats` takes, with their
    step)."""
    experiment = create_experiment(session, spec, queue, total_steps)
    for name, value in columns.items():
        setattr(experiment, name, value)
    for variant, numbers in results.items():
        run = run_of(experiment, variant)
        for name, value in numbers.items():
            setattr(run, name, value)
    for variant, points in curve.items():
        run_id = run_of(experiment, variant).id
        session.add_all(
            CurvePoint(run_id=run_id, step=step, val_accuracy=accuracy, train_loss=loss)
            for step, accuracy, loss in points
        )
    for variant, rows in layer_stats.items():
        run_id = run_of(experiment, variant).id
        session.add_all(LayerStat(run_id=run_id, **row) for row in rows)
    return experiment


def heartbeat(session: Session, hostname: str, queue: Queue) -> None:
    """Say this worker is alive (insert or refresh its row)."""
    worker = session.get(Worker, hostname)
    now = utc_now()
    if worker is None:
        session.add(Worker(hostname=hostname, queue=queue, started_at=now, last_seen=now))
    else:
        worker.queue, worker.last_seen = queue, now


def remove_worker(session: Session, hostname: str) -> None:
    session.execute(delete(Worker).where(Worker.hostname == hostname))


def live_workers(session: Session, max_age: timedelta) -> dict[Queue, int]:
    """Workers that heart-beat within `max_age`, counted per queue."""
    since = utc_now() - max_age
    query = (
        select(Worker.queue, func.count()).where(Worker.last_seen >= since).group_by(Worker.queue)
    )
    counts = dict.fromkeys(QUEUES, 0)
    counts.update({queue: count for queue, count in session.execute(query)})
    return counts


def curve_points_after(
    session: Session, experiment_id: int, step: int
) -> list[tuple[Variant, CurvePoint]]:
    """(variant, point) for every point past `step`, in step order, `plain` before `bn`."""
    query = (
        select(Run.variant, CurvePoint)
        .join(CurvePoint.run)
        .where(Run.experiment_id == experiment_id, CurvePoint.step > step)
        .order_by(CurvePoint.step, Run.variant.desc())
    )
    return [(variant, point) for variant, point in session.execute(query)]


def experiments_by_status(session: Session) -> dict[Status, int]:
    """How many experiments have each status, zeros included."""
    query = select(Experiment.status, func.count()).group_by(Experiment.status)
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({status: count for status, count in session.execute(query)})
    return counts


def queued_per_queue(session: Session) -> dict[Queue, int]:
    """Experiments waiting for a worker, per queue, zeros included."""
    query = (
        select(Experiment.queue, func.count())
        .where(Experiment.status == "queued")
        .group_by(Experiment.queue)
    )
    counts = dict.fromkeys(QUEUES, 0)
    counts.update({queue: count for queue, count in session.execute(query)})
    return counts


def running_rates(session: Session) -> list[tuple[int, float]]:
    """(experiment id, training steps per second) of each running experiment that has a rate."""
    query = select(Experiment.id, Experiment.steps_per_second).where(Experiment.status == "running")
    rows = session.execute(query)
    return [(experiment_id, rate) for experiment_id, rate in rows if rate is not None]


def create_sweep(
    session: Session, spec: dict[str, Any], idempotency_key: str | None = None
) -> Sweep:
    sweep = Sweep(spec=spec, idempotency_key=idempotency_key)
    session.add(sweep)
    session.flush()
    return sweep


def get_sweep(session: Session, sweep_id: int) -> Sweep | None:
    """The sweep with its cells (experiments, in id order) and their runs."""
    query = select(Sweep).where(Sweep.id == sweep_id)
    options = selectinload(Sweep.experiments).selectinload(Experiment.runs)
    return session.scalars(query.options(options)).one_or_none()


def list_sweeps(
    session: Session, limit: int, offset: int, tags: Sequence[str] = ()
) -> tuple[Sequence[Sweep], int]:
    """A page of sweeps with every one of `tags`, with their cells (no runs), newest first, and
    how many match in all."""
    query = with_tags(select(Sweep), Sweep, tags)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    query = query.options(selectinload(Sweep.experiments))
    page = query.order_by(Sweep.id.desc()).limit(limit).offset(offset)
    return session.scalars(page).all(), total


def sweep_curves(session: Session, sweep_id: int) -> dict[int, dict[Variant, list[CurvePoint]]]:
    """Curve points per cell (experiment id) and variant, in step order: one query for the
    points, one per cell for its variants."""
    query = (
        select(Run.experiment_id, Run.variant, CurvePoint)
        .join(CurvePoint.run)
        .join(Run.experiment)
        .where(Experiment.sweep_id == sweep_id)
        .order_by(CurvePoint.step)
    )
    curves: dict[int, dict[Variant, list[CurvePoint]]] = {}
    for experiment_id, variant, point in session.execute(query):
        if experiment_id not in curves:
            curves[experiment_id] = {v: [] for v in variants_of(session, experiment_id)}
        curves[experiment_id][variant].append(point)
    return curves


Owner = TypeVar("Owner", Experiment, Sweep)


def annotate(
    row: Annotatable,
    *,
    name: str | None = None,
    notes: str | None = None,
    tags: Sequence[str] | None = None,
    clear_name: bool = False,
) -> None:
    """Set what is given of an experiment's or a sweep's name, notes and tags (`clear_name`:
    set the name to none). Tags are the whole set: those not listed are removed."""
    if name is not None or clear_name:
        row.name = name
    if notes is not None:
        row.notes = notes
    if tags is not None:
        kept = {tag_row.tag: tag_row for tag_row in row.tag_rows}
        row.tag_rows = [kept.get(tag) or row.tag_class(tag=tag) for tag in sorted(set(tags))]


def with_tags(query: Select[Owner], owner: type[Owner], tags: Sequence[str]) -> Select[Owner]:
    """`query` narrowed to the rows that carry every one of `tags`."""
    tag_class = owner.tag_class
    for tag in tags:
        query = query.where(owner.id.in_(select(tag_class.owner_id).where(tag_class.tag == tag)))
    return query


def keep_state(
    session: Session, experiment: Experiment, step: int, location: str, sha256: str, size: int
) -> None:
    """Name a training state kept at sample point `step`, to fork the experiment from, in place
    of the one named there before (a job that trains that step again keeps it again)."""
    session.merge(
        KeptState(
            experiment_id=experiment.id,
            step=step,
            location=location,
            sha256=sha256,
            size_bytes=size,
        )
    )


def drop_kept_after(session: Session, experiment: Experiment, step: int) -> None:
    """Forget the states kept past `step`, where its curve ends for good (a run that ended).
    Their objects, named nowhere now, are removed at the end of its job."""
    after = (KeptState.experiment_id == experiment.id, KeptState.step > step)
    session.execute(delete(KeptState).where(*after))


def kept_states(session: Session, experiment_id: int) -> Sequence[KeptState]:
    """The states an experiment kept, in step order."""
    query = select(KeptState).where(KeptState.experiment_id == experiment_id)
    return session.scalars(query.order_by(KeptState.step)).all()


def kept_state(session: Session, experiment_id: int, step: int) -> KeptState | None:
    return session.get(KeptState, (experiment_id, step))


def forks_of(session: Session, experiment_id: int) -> Sequence[Experiment]:
    """The experiments forked from this one, oldest first."""
    query = select(Experiment).where(Experiment.parent_id == experiment_id)
    return session.scalars(query.order_by(Experiment.id)).all()


# What a sample point wrote per net, and what a fork takes over from its parent's: the probes'
# rows too, unless it changes the learning rate (the landscape's step sizes are multiples of it,
# as is the edge of stability: one series would mix the parent's and the fork's).
SAMPLE_POINT_TABLES: tuple[type[CurvePoint | LayerStat], ...] = (CurvePoint, LayerStat)


def copy_sample_point(session: Session, fork: Lineage, experiment: Experiment) -> None:
    """The parent's sample point at the fork's step (curve points, layer statistics, the
    probes' rows) as the fork's first, for the variants both train: the fork continues from the
    very nets measured there."""
    tables: tuple[type[CurvePoint | LayerStat | ProbeRow], ...] = SAMPLE_POINT_TABLES
    if "learning_rate" not in fork.changes:
        tables = (*tables, *PROBE_TABLES)
    fork_runs = {run.variant: run.id for run in experiment.runs}
    for run in fork.parent.runs:
        if run.variant not in fork_runs:
            continue
        for table in tables:
            at_step = (table.run_id == run.id, table.step == fork.step)
            rows = session.scalars(select(table).where(*at_step))
            session.add_all(_copied(row, fork_runs[run.variant]) for row in rows)


def _copied(row: Base, run_id: int) -> Base:
    """A copy of a per-net row, for the net of run `run_id`."""
    columns = row.__table__.columns.keys()
    values = {name: getattr(row, name) for name in columns if name not in ("id", "run_id")}
    return type(row)(run_id=run_id, **values)
