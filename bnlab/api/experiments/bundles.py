"""An ended experiment as a bundle (bnlab/bundle.py), and a bundle taken in as an experiment.

Export reads every checkpoint through `verified_bytes` (a file changed since it was written is a
409 here too, never bundled). Import checks the bundle whole before it writes anything: every
file's sha256, the spec against this bnlab's, the rows' shapes, every checkpoint loading as the
net its entry names. Then the rows go in one transaction and the checkpoints to the store, under
`experiment-<new id>/imported/`; if anything fails, the objects written are removed again and
nothing of the bundle remains.
"""

import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError, model_validator
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from bnlab import artifacts
from bnlab import bundle as bundles
from bnlab.api.core.domain_errors import (
    Conflict,
    Invalid,
    TooLarge,
    Unavailable,
    UnsupportedMedia,
)
from bnlab.api.core.errors import describe
from bnlab.api.experiments.annotations import AnnotationsPatch
from bnlab.api.experiments.schemas import RunResults, Series
from bnlab.api.predict.serving import READ_RETRY_SECONDS, verified_bytes
from bnlab.api.predict.uploads import read_body
from bnlab.models.checkpoint import CheckpointError, decode_net
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.tables import (
    Experiment,
    Landscape,
    LandscapePoint,
    LayerShift,
    LayerStat,
    ProbeRow,
    Sharpness,
    utc_now,
)
from bnlab.vocabulary import TERMINAL, Status, Variant

log = logging.getLogger(__name__)
BUNDLE_FIELD = "bundle"


class LayerRow(BaseModel):
    """A `layer_stats` row as a bundle carries it."""

    model_config = ConfigDict(extra="forbid")

    step: int
    layer: int
    p15: float
    p50: float
    p85: float
    dead_fraction: float
    grad_norm: float | None

    @classmethod
    def of(cls, row: LayerStat) -> "LayerRow":
        return cls.model_validate(row, from_attributes=True)


class LandscapeRow(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    step: int
    beta_smoothness: float | None


class LandscapePointRow(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    step: int
    step_size: float
    loss: float | None
    grad_change: float | None


class LayerShiftRow(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    step: int
    layer: int
    norm: float | None
    cosine: float | None


class SharpnessRow(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    step: int
    eigenvalue: float | None
    iterations: int
    edge: float


class ProbeTables(BaseModel):
    """One net's probe rows (migration 0009), under each table's name."""

    model_config = ConfigDict(extra="forbid")

    landscapes: list[LandscapeRow] = []
    landscape_points: list[LandscapePointRow] = []
    layer_shifts: list[LayerShiftRow] = []
    sharpness: list[SharpnessRow] = []


# Each probe table, and the columns that make its row unique (with its run).
PROBES: dict[type[ProbeRow], tuple[str, ...]] = {
    Landscape: ("step",),
    LandscapePoint: ("step", "step_size"),
    LayerShift: ("step", "layer"),
    Sharpness: ("step",),
}


def probe_rows(session: Session, experiment_id: int) -> dict[Variant, ProbeTables]:
    """Per variant, its probe tables' rows."""
    found: dict[Variant, dict[str, list[ProbeRow]]] = {}
    for table, key in PROBES.items():
        order = [getattr(table, name) for name in key]
        for variant, rows in queries.rows_per_variant(
            session, experiment_id, table, *order
        ).items():
            found.setdefault(variant, {})[table.__tablename__] = rows
    return {v: ProbeTables.model_validate(t, from_attributes=True) for v, t in found.items()}


def _probe_rows_by_step(tables: ProbeTables) -> dict[int, queries.ProbeRows]:
    """A net's probe rows as `queries.add_probe_rows` takes them, per step."""
    by_step: dict[int, queries.ProbeRows] = {}
    for table in PROBES:
        for row in getattr(tables, table.__tablename__):
            values = row.model_dump()
            by_step.setdefault(values.pop("step"), {}).setdefault(table, []).append(values)
    return by_step


# What a bundle's rows must be to go in: finite numbers (JSON parses NaN, but no client can
# be answered it), and no field a row of this bnlab does not have.
IMPORTED = ConfigDict(extra="forbid", allow_inf_nan=False)


class ImportedLayerRow(LayerRow):
    model_config = IMPORTED


class ImportedSeries(Series):
    model_config = IMPORTED


class ImportedResults(RunResults):
    model_config = IMPORTED


class ImportedRows(BaseModel):
    """A bundle's rows, per variant name."""

    curve: dict[str, ImportedSeries]
    results: dict[str, ImportedResults]
    layer_stats: dict[str, list[ImportedLayerRow]]
    probes: dict[str, ProbeTables]

    @model_validator(mode="after")
    def _one_row_per_point(self) -> "ImportedRows":
        # The tables' unique constraints would refuse these only at commit, as a 500.
        for variant, s in self.curve.items():
            lengths = (len(s.step), len(s.val_accuracy), len(s.train_loss))
            if len(set(lengths)) > 1:
                raise ValueError(
                    f"the {variant} curve's step, val_accuracy and train_loss have "
                    f"{lengths[0]}, {lengths[1]} and {lengths[2]} values: one each per point"
                )
            _unique(f"the {variant} curve's steps", s.step)
        for variant, rows in self.layer_stats.items():
            keys = [(row.step, row.layer) for row in rows]
            _unique(f"the {variant} layer statistics' (step, layer)", keys)
        for variant, tables in self.probes.items():
            for table, key in PROBES.items():
                rows = getattr(tables, table.__tablename__)
                keys = [tuple(getattr(row, name) for name in key) for row in rows]
                _unique(f"the {variant} {table.__tablename__}' {key}", keys)
        return self


def _unique(what: str, keys: list[Any]) -> None:
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"{what} {repeated} appear more than once")


class Ended(BaseModel):
    """The bundle's experiment fields that import keeps."""

    id: int
    status: Status
    progress_step: int
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    error: str | None = None


def bundle_of(session: Session, experiment: Experiment) -> bytes:
    """The experiment's bundle; a `Conflict` while it has not ended."""
    if experiment.status not in TERMINAL:
        raise Conflict(
            f"experiment {experiment.id} is {experiment.status}: a bundle is made once it has "
            "ended (succeeded, failed or cancelled); wait for it, or cancel it"
        )
    entries, contents = [], {}
    for run in experiment.runs:
        for checkpoint in run.checkpoints:
            data = verified_bytes(checkpoint, experiment.id, run.variant)
            entry = bundles.CheckpointEntry(
                run.variant, checkpoint.version, checkpoint.step, checkpoint.sha256, len(data)
            )
            entries.append(entry)
            contents[entry.file] = data
    curve = queries.curve(session, experiment.id)
    layers = queries.layer_stats(session, experiment.id)
    return bundles.write(
        bundles.Bundle(
            experiment=_described(experiment),
            spec=experiment.spec,
            provenance=experiment.provenance,
            curve={v: Series.from_points(points).model_dump() for v, points in curve.items()},
            results={run.variant: RunResults.from_run(run).model_dump() for run in experiment.runs},
            layer_stats={
                v: [LayerRow.of(r).model_dump() for r in rows] for v, rows in layers.items()
            },
            checkpoints=entries,
            checkpoint_bytes=contents,
            probes={v: t.model_dump() for v, t in probe_rows(session, experiment.id).items()},
        )
    )


def _described(experiment: Experiment) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return None if moment is None else moment.isoformat()

    return {
        "id": experiment.id,
        "status": experiment.status,
        "name": experiment.name,
        "notes": experiment.notes,
        "tags": experiment.tags,
        "error": experiment.error,
        "progress_step": experiment.progress_step,
        "created_at": iso(experiment.created_at),
        "started_at": iso(experiment.started_at),
        "finished_at": iso(experiment.finished_at),
        "imported_from": experiment.imported_from,
        "fork": _lineage(experiment),
    }


def _lineage(experiment: Experiment) -> dict[str, Any] | None:
    """A fork's parent, step and changes: its run starts from the parent's state there, which
    the bundle does not carry."""
    if experiment.fork_step is None:
        return None
    changes = experiment.fork_changes
    return {"parent_id": experiment.parent_id, "step": experiment.fork_step, "changes": changes}


async def uploaded(request: Request, settings: Settings) -> tuple[bytes, str | None]:
    """The bundle file of a multipart upload (field `bundle`) and its file name; `TooLarge`
    past BNLAB_MAX_BUNDLE_BYTES."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "multipart/form-data":
        raise UnsupportedMedia(
            f"Content-Type {kind or '(none)'}: send the bundle as multipart/form-data, the zip "
            f"file in the field '{BUNDLE_FIELD}' (curl -F {BUNDLE_FIELD}=@bundle.zip)"
        )
    limit = settings.max_bundle_bytes
    try:
        body = await read_body(request, limit)
    except TooLarge:
        raise TooLarge(
            f"the upload is larger than {limit:,} bytes (BNLAB_MAX_BUNDLE_BYTES), the largest "
            "bundle this server takes"
        ) from None
    parser = MultiPartParser(request.headers, _once(body), max_files=1, max_fields=4)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise Invalid(f"the multipart body is malformed: {error.message}") from None
    try:
        upload = form.get(BUNDLE_FIELD)
        if not isinstance(upload, UploadFile):
            raise Invalid(f"no bundle: send the zip file in the form field '{BUNDLE_FIELD}'")
        return await upload.read(), upload.filename
    finally:
        await form.close()


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


@dataclass(frozen=True)
class Checked:
    """A bundle's contents, validated as this bnlab's rows."""

    spec: ExperimentSpec
    ended: Ended
    annotations: AnnotationsPatch
    curve: dict[Variant, list[tuple[int, float, float | None]]]
    results: dict[Variant, dict[str, Any]]
    layer_stats: dict[Variant, list[dict[str, Any]]]
    probes: dict[Variant, dict[int, queries.ProbeRows]]


def take_in(session: Session, settings: Settings, data: bytes, file_name: str | None) -> Experiment:
    """A new experiment from the bundle in `data`, committed; `Invalid` saying what is wrong
    with the bundle, or `TooLarge`."""
    try:
        bundle = bundles.read(data, settings.max_bundle_bytes)
    except bundles.BundleTooLarge as error:
        raise TooLarge(str(error)) from None
    except bundles.BundleError as error:
        raise Invalid(str(error)) from None
    checked = _checked(bundle, settings)
    origin = {
        "experiment_id": checked.ended.id,
        "file": file_name,
        "sha256": bundles.sha256(data),
        "made_by": bundle.made_by,
        "imported_at": utc_now().isoformat(),
        "imported_from": bundle.experiment.get("imported_from"),  # where it was before that
        "fork": bundle.experiment.get("fork"),  # a fork there: its parent and step, there
    }
    ended = checked.ended
    columns = {
        "status": ended.status,
        "progress_step": ended.progress_step,
        "error": ended.error,
        "started_at": ended.started_at,
        "finished_at": ended.finished_at,
        "provenance": bundle.provenance,
        "imported_from": origin,
    }
    spec = checked.spec
    written: list[str] = []
    try:
        experiment = queries.import_experiment(
            session,
            spec.model_dump(),
            spec.device,
            spec.training_batches,
            columns,
            checked.curve,
            checked.results,
            checked.layer_stats,
        )
        for variant, by_step in checked.probes.items():
            for step, tables in by_step.items():
                queries.add_probe_rows(session, experiment, step, {variant: tables})
        notes = checked.annotations
        queries.annotate(experiment, name=notes.name, notes=notes.notes, tags=notes.tags)
        folder = artifacts.locate(settings.checkpoint_dir, f"experiment-{experiment.id}")
        for entry in sorted(bundle.checkpoints, key=lambda e: (e.variant, e.version)):
            location = artifacts.locate(folder, "imported", entry.file.rsplit("/", 1)[-1])
            content = bundle.checkpoint_bytes[entry.file]
            artifacts.write(location, content, READ_RETRY_SECONDS)
            written.append(location)
            run = queries.run_of(experiment, _variant(entry.variant, spec))
            queries.add_checkpoint(session, run, entry.step, location, entry.sha256, len(content))
        session.commit()
    except BaseException as error:
        session.rollback()
        for location in written:
            with contextlib.suppress(artifacts.StoreError):  # else an orphan no row names
                artifacts.delete(location, READ_RETRY_SECONDS)
        if isinstance(error, artifacts.StoreError):
            log.warning("an import failed: %s", error)  # where and why, for the operator
            raise Unavailable(
                "the checkpoint store cannot be written now, so nothing was imported; retry later"
            ) from None
        raise
    return experiment


def _checked(bundle: bundles.Bundle, settings: Settings) -> Checked:
    """`Invalid` naming what does not fit this bnlab: a spec it does not take, an experiment
    that had not ended, rows of variants the spec does not train, checkpoints that do not load
    as the nets their entries name, versions with gaps."""
    try:
        spec = ExperimentSpec.model_validate(bundle.spec)
    except ValidationError as error:
        raise Invalid(f"the bundle's spec is not valid for this bnlab: {describe(error)}") from None
    try:
        ended = Ended.model_validate(bundle.experiment)
        told = bundle.experiment
        annotations = AnnotationsPatch.model_validate(
            {
                "name": told.get("name"),
                "notes": told.get("notes") or "",
                "tags": told.get("tags") or [],
            }
        )
        rows = ImportedRows.model_validate(
            {
                "curve": bundle.curve,
                "results": bundle.results,
                "layer_stats": bundle.layer_stats,
                "probes": bundle.probes,
            }
        )
    except ValidationError as error:
        raise Invalid(
            f"the bundle's experiment is not what bnlab writes: {describe(error)}"
        ) from None
    if ended.status not in TERMINAL:
        raise Invalid(f"the bundle's experiment is {ended.status}: only an ended one is bundled")
    for variant in {entry.variant for entry in bundle.checkpoints}:
        versions = sorted(e.version for e in bundle.checkpoints if e.variant == variant)
        if versions != list(range(1, len(versions) + 1)):
            raise Invalid(f"the {variant} checkpoints' versions {versions} are not 1, 2, ...")
    for entry in bundle.checkpoints:
        _check_loads(entry, bundle.checkpoint_bytes[entry.file], spec, settings)
    curve = {
        _variant(v, spec): list(zip(s.step, s.val_accuracy, s.train_loss, strict=True))
        for v, s in rows.curve.items()
    }
    results = {_variant(v, spec): r.model_dump() for v, r in rows.results.items()}
    layers = {
        _variant(v, spec): [row.model_dump() for row in variant_rows]
        for v, variant_rows in rows.layer_stats.items()
    }
    probes = {_variant(v, spec): _probe_rows_by_step(t) for v, t in rows.probes.items()}
    return Checked(spec, ended, annotations, curve, results, layers, probes)


def _variant(name: str, spec: ExperimentSpec) -> Variant:
    for variant in spec.variants:
        if variant == name:
            return variant
    raise Invalid(
        f"the bundle has rows of the variant {name!r}, which its spec does not train "
        f"({', '.join(spec.variants)})"
    )


def _check_loads(
    entry: bundles.CheckpointEntry, data: bytes, spec: ExperimentSpec, settings: Settings
) -> None:
    _variant(entry.variant, spec)
    try:
        stack, _meta = decode_net(data, entry.file, settings.bn_impl)
    except CheckpointError as error:
        raise Invalid(f"{entry.file} does not load: {error}") from None
    if stack.variant != entry.variant:
        raise Invalid(f"{entry.file} holds a {stack.variant} net, not the {entry.variant} it names")
