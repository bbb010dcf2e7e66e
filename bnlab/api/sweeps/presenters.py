"""A sweep as GET returns it, built from its rows: shared by the routes and the event stream
(bnlab/api/events/streams.py), which sends the same thing once a sweep has ended."""

from collections.abc import Sequence

from sqlalchemy.orm import Session

from bnlab.api.core.workers import notices
from bnlab.api.experiments.schemas import Annotations, Progress
from bnlab.api.sweeps import report
from bnlab.api.sweeps.schemas import SweepCell, SweepOut, SweepProgress
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.tables import Experiment, Sweep
from bnlab.sweeps import varying_fields
from bnlab.vocabulary import TERMINAL, Status


def sweep_out_by_id(session: Session, settings: Settings, sweep_id: int) -> SweepOut:
    """The sweep as it is now, after this session changed its cells."""
    session.expire_all()  # read the cells as they are now, not as this session last saw them
    sweep = queries.get_sweep(session, sweep_id)
    assert sweep is not None
    return sweep_out(sweep, session, settings)


def sweep_out(sweep: Sweep, session: Session, settings: Settings) -> SweepOut:
    cells = list(sweep.experiments)
    varying = varying_fields([cell.spec for cell in cells])
    notice_of = notices(session, settings, cells)
    return SweepOut(
        id=sweep.id,
        status=overall_status([cell.status for cell in cells]),
        spec=sweep.spec,
        created_at=sweep.created_at,
        cancel_requested=sweep.cancel_requested,
        varying=varying,
        counts=report.status_counts(cells),
        progress=sweep_progress(cells),
        cells=[
            SweepCell(
                id=cell.id,
                url=f"/experiments/{cell.id}",
                status=cell.status,
                values={name: cell.spec.get(name) for name in varying},
                progress=Progress.of(cell),
                error=cell.error,
            )
            for cell in cells
        ],
        notice=next((n for n in notice_of.values() if n), None),
        **Annotations.of(sweep),
    )


def sweep_progress(cells: Sequence[Experiment]) -> SweepProgress:
    """Steps done over steps to do, summed over the cells."""
    done = sum(cell.progress_step for cell in cells)
    total = sum(cell.progress_total for cell in cells)
    return SweepProgress(
        steps_done=done, steps_total=total, fraction=done / total if total else 1.0
    )


def overall_status(statuses: Sequence[str]) -> Status:
    """A sweep's status from its cells': unfinished while any is; then succeeded only if all did,
    failed if any failed, else cancelled."""
    if any(status not in TERMINAL for status in statuses):
        return "queued" if all(status == "queued" for status in statuses) else "running"
    if all(status == "succeeded" for status in statuses):
        return "succeeded"
    return "failed" if "failed" in statuses else "cancelled"
