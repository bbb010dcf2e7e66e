"""What a user asks for in one request: a sweep, a grid of experiments (its cells).

A sweep is a grid over any of `ExperimentSpec`'s fields (every combination of the listed values,
over `base` for the fields it does not vary), or a preset, the classic study's own set of cells,
optionally crossed with a grid over the fields the preset leaves free (e.g. seeds). Validated by
the API, expanded into ordinary `ExperimentSpec`s, and grouped: cells that can train as one
batched model (see `stack_key`) go to a worker as one job.
"""

import itertools
import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bnlab.spec import ExperimentSpec
from bnlab.vocabulary import Preset

FIELDS: tuple[str, ...] = tuple(ExperimentSpec.model_fields)
# What may differ between the nets of one batched model: each net has its own learning rate and
# its own initial weights. Everything else (architecture, activation, batch order, schedule,
# data, device) is shared by a stack.
PER_NET_FIELDS = ("learning_rate", "use_bad_weights", "weight_std")


def _classic() -> list[dict[str, Any]]:
    """The classic study: relu and sigmoid, learning rates 0.01, 1 and 2, good and bad initial
    weights, 50,000 batches sampled every 500; and the 2,000-batch runs sampled every 50 for
    (relu, 0.01, good), (sigmoid, 1, good) and (sigmoid, 2, good)."""
    long = [
        {
            "activation": activation,
            "learning_rate": learning_rate,
            "use_bad_weights": bad,
            "training_batches": 50_000,
            "batches_per_sample": 500,
        }
        for activation in ("relu", "sigmoid")
        for learning_rate in (0.01, 1.0, 2.0)
        for bad in (False, True)
    ]
    short = [
        {
            "activation": activation,
            "learning_rate": learning_rate,
            "use_bad_weights": False,
            "training_batches": 2_000,
            "batches_per_sample": 50,
        }
        for activation, learning_rate in (("relu", 0.01), ("sigmoid", 1.0), ("sigmoid", 2.0))
    ]
    return long + short


# The why preset's measurements: all of them, at every other sample point.
WHY_PROBES = {"landscape": True, "ics": True, "sharpness": True, "every": 2}


def _why() -> list[dict[str, Any]]:
    """Why BN helps, measured where the study's table is most telling, plain, BN and noisy BN
    (Santurkar et al.'s BN with changing noise after it: more covariate shift, still BN's
    training) side by side with every probe on, 2,000 batches sampled every 50 (minutes on a
    CPU): relu and sigmoid at learning rate 0.01 (BN converges sooner) and 1 (plain relu dies,
    plain sigmoid survives), and relu from bad initial weights (plain stays at chance)."""
    cells = [
        ("relu", 0.01, False),
        ("relu", 1.0, False),
        ("sigmoid", 0.01, False),
        ("sigmoid", 1.0, False),
        ("relu", 0.01, True),
    ]
    return [
        {
            "activation": activation,
            "learning_rate": learning_rate,
            "use_bad_weights": bad,
            "training_batches": 2_000,
            "batches_per_sample": 50,
            "variants": ["plain", "bn", "bn_noisy"],
            "probes": WHY_PROBES,
        }
        for activation, learning_rate, bad in cells
    ]


PRESETS: dict[str, list[dict[str, Any]]] = {"classic": _classic(), "why": _why()}


class SweepRejected(ValueError):
    """A sweep that cannot run, with a message a person can act on."""


class SweepRequest(BaseModel):
    """A grid of experiments, or a preset (optionally crossed with a grid)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"preset": "classic"},
                {"preset": "classic", "grid": {"seed": [0, 1, 2]}},
                {"preset": "why", "base": {"dataset": "fashion-mnist"}},
                {
                    "grid": {
                        "activation": ["relu", "sigmoid"],
                        "learning_rate": [0.01, 1.0],
                        "use_bad_weights": [False, True],
                    },
                    "base": {"training_batches": 2000, "batches_per_sample": 50},
                },
                {
                    "grid": {
                        "variants": [["plain", "bn", "bn_after"], ["plain", "layer_norm"]],
                        "learning_rate": [0.01, 1.0],
                    },
                    "base": {"training_batches": 2000, "batches_per_sample": 50},
                },
            ]
        },
    )

    preset: Preset | None = Field(
        None,
        description="`classic`: the study's 15 cells (relu/sigmoid x lr 0.01/1/2 x good/bad "
        "weights at 50,000 batches, and three 2,000-batch runs). `why`: why BN helps, measured "
        "(every probe on, at every other sample point) on plain, bn and bn_noisy nets in 5 "
        "cells of 2,000 batches: relu and sigmoid at lr 0.01 and 1 from good weights, and relu "
        "at lr 0.01 from bad ones.",
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Experiment fields and the values to try: every combination is a cell "
        '(`"variants"` too: each value a list of variants).',
    )
    base: dict[str, Any] = Field(
        default_factory=dict, description="Experiment fields shared by every cell."
    )
    stack: bool = Field(
        True,
        description="Train cells that share an architecture, activation and batch order as one "
        "batched model (much faster; the same curves up to float rounding). false: every cell "
        "is its own job, exactly as if posted to /experiments.",
    )

    def count(self) -> int:
        """How many cells the sweep has (without expanding it)."""
        cells = len(PRESETS[self.preset]) if self.preset else 1
        for values in self.grid.values():
            cells *= len(values)
        return cells


def expand(request: SweepRequest, max_cells: int) -> list[ExperimentSpec]:
    """The sweep's cells as experiment specs, in grid order; `SweepRejected` says what is wrong."""
    _check_fields(request)
    count = request.count()
    if count > max_cells:
        raise SweepRejected(
            f"the sweep has {count:,} cells; at most {max_cells:,} are allowed "
            "(BNLAB_MAX_SWEEP_CELLS): list fewer values, or split it into several sweeps"
        )
    preset_cells = PRESETS[request.preset] if request.preset else [{}]
    axes = list(request.grid)
    specs: list[ExperimentSpec] = []
    seen: dict[str, int] = {}
    for preset_cell in preset_cells:
        for values in itertools.product(*request.grid.values()):
            fields = {**request.base, **preset_cell, **dict(zip(axes, values, strict=True))}
            spec = _cell_spec(fields, {**preset_cell, **dict(zip(axes, values, strict=True))})
            key = spec.model_dump_json()
            if key in seen:
                raise SweepRejected(
                    f"cells {seen[key] + 1} and {len(specs) + 1} are the same experiment "
                    f"({_show(fields)}): a value is listed twice"
                )
            seen[key] = len(specs)
            specs.append(spec)
    return specs


def _check_fields(request: SweepRequest) -> None:
    allowed = ", ".join(FIELDS)
    for where, fields in (("grid", request.grid), ("base", request.base)):
        unknown = [name for name in fields if name not in FIELDS]
        if unknown:
            raise SweepRejected(
                f"{where}: unknown field{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; an experiment's fields are: {allowed}"
            )
    empty = [name for name, values in request.grid.items() if not values]
    if empty:
        raise SweepRejected(
            f"grid: {', '.join(map(repr, empty))} lists no values; give at least one value, "
            "or move the field to `base`"
        )
    if not request.preset and not request.grid:
        raise SweepRejected(
            'give a grid (e.g. {"grid": {"learning_rate": [0.01, 1.0]}}) or a preset '
            '({"preset": "classic"})'
        )
    both = [name for name in request.grid if name in request.base]
    if both:
        raise SweepRejected(
            f"{', '.join(map(repr, both))} is in both grid and base: put it in one of them"
        )
    if request.preset:
        fixed = sorted(set().union(*PRESETS[request.preset]))
        clash = [name for name in (*request.grid, *request.base) if name in fixed]
        if clash:
            raise SweepRejected(
                f"the {request.preset} preset sets {', '.join(fixed)} itself; "
                f"{', '.join(map(repr, clash))} cannot be set too (drop the preset to choose them)"
            )


def _cell_spec(fields: dict[str, Any], varied: dict[str, Any]) -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(fields)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}"
            for e in error.errors(include_url=False)[:3]
        )
        where = f"the cell {_show(varied)}" if varied else "the base"
        raise SweepRejected(f"{where} is not a valid experiment: {problems}") from None


def _show(fields: dict[str, Any]) -> str:
    return ", ".join(f"{name}={json.dumps(value)}" for name, value in fields.items())


def stack_key(spec: ExperimentSpec) -> str:
    """Cells with the same key can train as one batched model: everything but the per-net
    fields is equal, the seed included (it decides the batch order as well as the weights)."""
    return json.dumps(spec.model_dump(exclude=set(PER_NET_FIELDS)), sort_keys=True)


def groups(specs: Sequence[ExperimentSpec], stack: bool, max_cells: int) -> list[list[int]]:
    """Indices of `specs` grouped into batched models of at most `max_cells` cells each, in
    order of first appearance; every cell alone when `stack` is false."""
    if not stack:
        return [[index] for index in range(len(specs))]
    by_key: dict[str, list[int]] = {}
    for index, spec in enumerate(specs):
        by_key.setdefault(stack_key(spec), []).append(index)
    return [
        indices[start : start + max_cells]
        for indices in by_key.values()
        for start in range(0, len(indices), max_cells)
    ]


def varying_fields(specs: Sequence[dict[str, Any]]) -> list[str]:
    """The fields whose value differs between cells, in `ExperimentSpec`'s order."""
    return [
        name
        for name in FIELDS
        if len({json.dumps(spec.get(name), sort_keys=True) for spec in specs}) > 1
    ]
