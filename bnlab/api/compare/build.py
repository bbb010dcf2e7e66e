"""A comparison from the ids asked for: the experiments, their curves, labels naming only the
fields that differ, and their results."""

from collections.abc import Sequence

from sqlalchemy.orm import Session

from bnlab.api.compare.schemas import ComparedExperiment, Comparison, Net, NetResults
from bnlab.api.core.domain_errors import Invalid, NotFound
from bnlab.api.core.plotting import LABELS
from bnlab.api.experiments.schemas import MAX_ID, RunResults, Series
from bnlab.api.sweeps.plots import label
from bnlab.store import queries
from bnlab.store.tables import Experiment, Run
from bnlab.sweeps import varying_fields

MIN_COMPARED, MAX_COMPARED = 2, 8  # eight lines of distinct colours on one plot
IDS_HELP = f"{MIN_COMPARED} to {MAX_COMPARED} experiment ids separated by commas, e.g. 1,4,9"


def parse_ids(text: str) -> list[int]:
    """The ids of `?experiments=1,4,9`, each once, in order; Invalid saying what to send."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdecimal() and part.isascii() for part in parts):
        raise Invalid(f"experiments={text[:80]!r} is not a list of ids: send {IDS_HELP}")
    ids = [int(part) for part in parts]
    if not all(1 <= number <= MAX_ID for number in ids):
        raise Invalid(f"an experiment id is between 1 and {MAX_ID}: send {IDS_HELP}")
    if len(set(ids)) < len(ids):
        raise Invalid(f"experiments={text[:80]!r} names an experiment twice: send each id once")
    if not MIN_COMPARED <= len(ids) <= MAX_COMPARED:
        raise Invalid(f"{len(ids)} experiment(s) asked for: send {IDS_HELP}")
    return ids


def load(session: Session, ids: Sequence[int]) -> list[Experiment]:
    """The experiments, in the order asked for; NotFound naming every id that has none."""
    found = {experiment.id: experiment for experiment in queries.get_experiments(session, ids)}
    missing = [str(number) for number in ids if number not in found]
    if missing:
        raise NotFound(f"no experiment with id {', '.join(missing)}")
    return [found[number] for number in ids]


def compare(session: Session, experiments: Sequence[Experiment]) -> Comparison:
    differing = varying_fields([experiment.spec for experiment in experiments])
    compared = [_compared(session, experiment, differing) for experiment in experiments]
    nets = [net for experiment in experiments for net in _nets(experiment, differing)]
    return Comparison(
        differing=differing,
        experiments=compared,
        legend=[net for net, _ in nets],
        table=[
            NetResults(**net.model_dump(), **RunResults.from_run(run).model_dump())
            for net, run in nets
        ],
    )


def _compared(session: Session, experiment: Experiment, differing: list[str]) -> ComparedExperiment:
    points = queries.curve(session, experiment.id)
    return ComparedExperiment(
        id=experiment.id,
        url=f"/experiments/{experiment.id}",
        name=experiment.name,
        status=experiment.status,
        values={name: experiment.spec.get(name) for name in differing},
        label=_label(experiment, differing),
        series={variant: Series.from_points(p) for variant, p in points.items()},
    )


def _nets(experiment: Experiment, differing: list[str]) -> list[tuple[Net, Run]]:
    """Each of its nets, in the order of its spec, with its run's results."""
    named = _label(experiment, differing)
    return [
        (
            Net(experiment_id=experiment.id, variant=run.variant, label=f"{named}, {_words(run)}"),
            run,
        )
        for run in sorted(experiment.runs, key=lambda run: run.id)
    ]


def _words(run: Run) -> str:
    return LABELS.get(run.variant, run.variant)


def _label(experiment: Experiment, differing: list[str]) -> str:
    values = label(experiment.spec, differing)
    return f"#{experiment.id} {values}" if values else f"#{experiment.id}"
