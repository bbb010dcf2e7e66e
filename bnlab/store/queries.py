"""The reads and writes the API and the worker share. Callers own the session and commit."""

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, selectinload

from bnlab.store.tables import VARIANTS, Checkpoint, CurvePoint, Experiment, Run, Worker, utc_now

TERMINAL = ("succeeded", "failed", "cancelled")


def create_experiment(
    session: Session, spec: dict[str, Any], queue: str, total_steps: int
) -> Experiment:
    """A queued experiment with one run per variant."""
    experiment = Experiment(
        status="queued",
        queue=queue,
        spec=spec,
        progress_total=total_steps,
        runs=[Run(variant=variant) for variant in VARIANTS],
    )
    session.add(experiment)
    session.flush()
    return experiment


def get_experiment(session: Session, experiment_id: int) -> Experiment | None:
    query = select(Experiment).where(Experiment.id == experiment_id)
    return session.scalars(query.options(selectinload(Experiment.runs))).one_or_none()


def list_experiments(
    session: Session, status: str | None, limit: int, offset: int
) -> tuple[Sequence[Experiment], int]:
    """A page of experiments, newest first, and how many match in all."""
    query = select(Experiment)
    if status:
        query = query.where(Experiment.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = query.options(selectinload(Experiment.runs))
    page = page.order_by(Experiment.id.desc()).limit(limit).offset(offset)
    return session.scalars(page).all(), total


def run_of(experiment: Experiment, variant: str) -> Run:
    return next(run for run in experiment.runs if run.variant == variant)


def curve(session: Session, experiment_id: int) -> dict[str, list[CurvePoint]]:
    """Curve points per variant, in step order."""
    query = (
        select(Run.variant, CurvePoint)
        .join(CurvePoint.run)
        .where(Run.experiment_id == experiment_id)
        .order_by(CurvePoint.step)
    )
    points: dict[str, list[CurvePoint]] = {variant: [] for variant in VARIANTS}
    for variant, point in session.execute(query):
        points[variant].append(point)
    return points


def add_curve_points(
    session: Session,
    experiment: Experiment,
    step: int,
    points: dict[str, tuple[float, float | None]],
) -> None:
    """One point per variant in `points`: (validation accuracy, mean training loss)."""
    for variant, (val_accuracy, train_loss) in points.items():
        run = run_of(experiment, variant)
        session.add(
            CurvePoint(run_id=run.id, step=step, val_accuracy=val_accuracy, train_loss=train_loss)
        )


def drop_curve_after(session: Session, experiment: Experiment, step: int) -> None:
    """Forget points past `step`: a resumed job writes them again."""
    run_ids = [run.id for run in experiment.runs]
    session.execute(
        delete(CurvePoint).where(CurvePoint.run_id.in_(run_ids), CurvePoint.step > step)
    )


def cancel_experiment(session: Session, experiment_id: int) -> bool:
    """Cancel a queued experiment now, or ask a running one's worker to stop at its next sample
    point; False if it had already finished. Each is an UPDATE conditional on the status, so a
    worker taking or finishing the job at the same moment is never overwritten."""
    queued = session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status == "queued")
        .values(status="cancelled", finished_at=utc_now())
    )
    if queued.rowcount:
        return True
    running = session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status == "running")
        .values(cancel_requested=True)
    )
    return bool(running.rowcount)


def latest_checkpoint(session: Session, experiment_id: int, variant: str) -> Checkpoint | None:
    query = (
        select(Checkpoint)
        .join(Checkpoint.run)
        .where(Run.experiment_id == experiment_id, Run.variant == variant)
        .order_by(Checkpoint.version.desc())
        .limit(1)
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


def heartbeat(session: Session, hostname: str, queue: str) -> None:
    """Say this worker is alive (insert or refresh its row)."""
    worker = session.get(Worker, hostname)
    now = utc_now()
    if worker is None:
        session.add(Worker(hostname=hostname, queue=queue, started_at=now, last_seen=now))
    else:
        worker.queue, worker.last_seen = queue, now


def remove_worker(session: Session, hostname: str) -> None:
    session.execute(delete(Worker).where(Worker.hostname == hostname))


def live_workers(session: Session, max_age: timedelta) -> dict[str, int]:
    """Workers that heart-beat within `max_age`, counted per queue."""
    since = utc_now() - max_age
    query = (
        select(Worker.queue, func.count()).where(Worker.last_seen >= since).group_by(Worker.queue)
    )
    counts = {"cpu": 0, "gpu": 0}
    counts.update({queue: count for queue, count in session.execute(query)})
    return counts
