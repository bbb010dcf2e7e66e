"""An experiment as GET returns it, built from its rows: shared by the routes and the event
stream (bnlab/api/events/streams.py), which sends the same thing once a run has ended."""

from sqlalchemy.orm import Session

from bnlab.api.core.workers import notices
from bnlab.api.experiments.schemas import ExperimentOut
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.tables import Experiment


def experiment_out(experiment: Experiment, session: Session, settings: Settings) -> ExperimentOut:
    """The experiment, with what to do if it waits on a missing worker, its forks and the
    steps it can be forked from."""
    notice = notices(session, settings, [experiment])[experiment.id]
    out = ExperimentOut.from_row(experiment, notice)
    out.forks = [fork.id for fork in queries.forks_of(session, experiment.id)]
    out.kept_steps = [kept.step for kept in queries.kept_states(session, experiment.id)]
    return out
