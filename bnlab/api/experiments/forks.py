"""Forks: a new experiment that continues another from one of its sample points, with changes.

The parent kept its training state there (`keep_states_every`, bnlab/worker/job.py); the fork's
job restores that state and trains on with the fork's spec: the parent's, with the changes. Its
curve starts at the fork's step with the parent's point there (the very nets it continues), so
a fork with no changes has the parent's curve from that step on, bit for bit.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator
from sqlalchemy.orm import Session

from bnlab.api.core.broker import Broker
from bnlab.api.core.domain_errors import Conflict, Invalid
from bnlab.api.core.errors import describe
from bnlab.api.experiments.schemas import MAX_ID
from bnlab.api.experiments.submit import submit_experiment
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.queries import Lineage
from bnlab.store.tables import Experiment
from bnlab.vocabulary import TERMINAL

# What a fork can change: the schedule from its step on, the step size, where it trains, and
# which nets (new ones start from the plain net's weights). Not what made the parent's nets
# what they are at that step: the data, the architecture, the initial weights, the batch order.
FORKABLE = (
    "learning_rate",
    "training_batches",
    "batches_per_sample",
    "keep_states_every",
    "device",
    "variants",
)
# How many kept steps a 409 names, nearest first.
NEAREST = 3


class ForkRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                # steps the default cadence keeps: every 10th sample point of 500 batches
                {"step": 5000, "changes": {"learning_rate": 0.5}},
                {"step": 10_000, "changes": {"training_batches": 100_000}},
                {"step": 5000, "changes": {}},
            ]
        },
    )

    step: int = Field(
        ge=0, le=MAX_ID, description="A sample point of the parent whose training state it kept."
    )
    changes: dict[str, JsonValue] = Field(
        default_factory=dict,
        description=f"Spec fields and their new values, any of: {', '.join(FORKABLE)}. "
        "Nothing: the parent's run, continued.",
    )

    @field_validator("changes")
    @classmethod
    def _forkable(cls, changes: dict[str, JsonValue]) -> dict[str, JsonValue]:
        others = sorted(set(changes) - set(FORKABLE))
        if others:
            raise ValueError(
                f"a fork cannot change {', '.join(others)}: it changes only {', '.join(FORKABLE)}"
            )
        return changes


def fork(session: Session, broker: Broker, parent: Experiment, request: ForkRequest) -> Experiment:
    """The fork, stored and queued (a group of one); refused, saying why, when the parent did
    not keep its state at that step or the changes make no experiment."""
    _check_step(session, parent, request.step)
    before = _valid(parent.spec, f"experiment {parent.id}'s stored spec")
    spec = _valid({**parent.spec, **request.changes}, "the fork's spec")
    if spec.training_batches <= request.step:
        raise Invalid(
            f"training_batches ({spec.training_batches}) must exceed the step it is forked at "
            f"({request.step}): a fork trains on from there"
        )
    new = [variant for variant in spec.variants if variant not in before.variants]
    if new:
        _check_plain(parent, request.step, new)
    was, now = before.model_dump(include=set(FORKABLE)), spec.model_dump(include=set(FORKABLE))
    changes = {
        field: {"parent": was[field], "fork": now[field]}
        for field in FORKABLE
        if was[field] != now[field]
    }
    return submit_experiment(session, broker, spec, fork=Lineage(parent, request.step, changes))


def _valid(spec: dict[str, Any], what: str) -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(spec)
    except ValidationError as error:
        raise Invalid(f"{what} is not valid: {describe(error)}") from None


def _check_plain(parent: Experiment, step: int, new: list[Any]) -> None:
    """New variants start from the parent's plain net: it must have one, still training."""
    plain = next((run for run in parent.runs if run.variant == "plain"), None)
    what = f"new variants ({', '.join(new)}) start from the parent's plain net's weights"
    if plain is None:
        raise Invalid(f"{what}, and experiment {parent.id} trains no plain net")
    if plain.diverged_at_step is not None and plain.diverged_at_step <= step:
        raise Invalid(
            f"{what}, and experiment {parent.id}'s diverged at step {plain.diverged_at_step}: "
            "fork it from an earlier step"
        )


def _check_step(session: Session, parent: Experiment, step: int) -> None:
    """The parent kept its training state at `step`; else a 409 saying what can be forked."""
    if queries.kept_state(session, parent.id, step) is not None:
        return
    kept = [row.step for row in queries.kept_states(session, parent.id)]
    nearest = sorted(sorted(kept, key=lambda kept_step: abs(kept_step - step))[:NEAREST])
    steps = f"its nearest kept steps are {', '.join(map(str, nearest))}" if kept else ""
    if parent.progress_step < step and parent.status not in TERMINAL:
        raise Conflict(
            f"experiment {parent.id} is at step {parent.progress_step}, not yet at {step}: "
            f"fork it once it is there{f', or now: {steps}' if steps else ''}"
        )
    if parent.progress_step < step:
        raise Conflict(
            f"experiment {parent.id} ended at step {parent.progress_step} ({parent.status}); "
            f"it never reached step {step}{f': {steps}' if steps else ''}"
        )
    if step == parent.fork_step and parent.parent_id is not None:
        # Its first point is its parent's, copied; so is the state it started from.
        raise Conflict(
            f"experiment {parent.id} is a fork of experiment {parent.parent_id} at step {step}, "
            f"and keeps no state of its own there: fork experiment {parent.parent_id} at step "
            f"{step} instead, with this fork's changes and yours"
        )
    every = parent.spec.get("keep_states_every")
    cadence = f" (keep_states_every: {every}, and the last)" if every else ""
    raise Conflict(
        f"experiment {parent.id} kept no training state at step {step}{cadence}: "
        f"{steps or 'it kept none, so it cannot be forked'}"
    )
