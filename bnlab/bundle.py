"""The bundle: one experiment in one zip file, to reproduce it or take it into another bnlab.

Made by GET /experiments/{id}/bundle, read by POST /experiments/import and `bnlab reproduce`
(so this module needs neither torch nor the service). Its files:

    manifest.json        format and version, who made it, the experiment (status, name, notes,
                         tags, times, error), its provenance, its checkpoints, and the sha256 of
                         every other file
    spec.json            the spec, as stored
    curve.json           the curve, as GET /experiments/{id}/curve answers
    curve.csv            the same, a row per variant and sample point (floats written exactly)
    results.json         per variant, as GET /experiments/{id} answers under "results"
    layer_stats.json     per variant, a row per hidden layer and sample point
    probes.json          per variant, the rows of each probe table (why BN helps: landscapes,
                         landscape_points, layer_shifts, sharpness), by the table's name
    checkpoints/<variant>-v<version>.safetensors   every checkpoint, every version

Floats are written as Python's repr, which reads back to the same double: a curve survives the
trip bit for bit. The zip's timestamps are fixed, so the same experiment makes the same bytes.
"""

import csv
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

FORMAT = "bnlab-bundle"
# Bumped when a reader of the old format could not read the new one. probes.json came later
# within version 1: an older reader checks its sha256 and leaves it out; a bundle made before
# it has no probe rows.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPEC, CURVE, CURVE_CSV, RESULTS, LAYER_STATS, PROBES = (
    "spec.json",
    "curve.json",
    "curve.csv",
    "results.json",
    "layer_stats.json",
    "probes.json",
)
CSV_COLUMNS = ("variant", "step", "val_accuracy", "train_loss")
# A fixed time for every member (zip's epoch): the bytes depend on the contents only.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class BundleError(Exception):
    """The file cannot be taken as a bundle: the message says why, for a person."""


class BundleTooLarge(BundleError):
    """The bundle unpacks to more than the reader accepts."""


def bnlab_version() -> str:
    try:
        return metadata.version("bnlab")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@dataclass(frozen=True)
class CheckpointEntry:
    variant: str
    version: int
    step: int
    sha256: str
    size_bytes: int

    @property
    def file(self) -> str:
        return f"checkpoints/{self.variant}-v{self.version}.safetensors"


@dataclass(frozen=True)
class Bundle:
    """A bundle's contents. `experiment`: id, status, name, notes, tags, error, progress_step,
    created_at, started_at, finished_at (ISO 8601), imported_from (null unless the experiment
    was itself imported), fork (parent_id, step, changes; null unless it is a fork); `curve`:
    per variant, lists step, val_accuracy, train_loss; `checkpoint_bytes`: each checkpoint's
    bytes, by its entry's file name."""

    experiment: dict[str, Any]
    spec: dict[str, Any]
    provenance: dict[str, Any] | None
    curve: dict[str, dict[str, list[Any]]]
    results: dict[str, dict[str, Any]]
    layer_stats: dict[str, list[dict[str, Any]]]
    checkpoints: list[CheckpointEntry]
    checkpoint_bytes: dict[str, bytes] = field(repr=False)
    made_by: str = field(default_factory=bnlab_version)
    probes: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(bundle: Bundle) -> bytes:
    """The bundle as a zip file's bytes."""
    files = {
        SPEC: _json(bundle.spec),
        CURVE: _json({"series": bundle.curve}),
        CURVE_CSV: _csv(bundle.curve),
        RESULTS: _json(bundle.results),
        LAYER_STATS: _json(bundle.layer_stats),
        PROBES: _json(bundle.probes),
        **{entry.file: bundle.checkpoint_bytes[entry.file] for entry in bundle.checkpoints},
    }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "made_by": {"bnlab": bundle.made_by},
        "experiment": bundle.experiment,
        "provenance": bundle.provenance,
        "checkpoints": [entry.__dict__ for entry in bundle.checkpoints],
        "files": {name: sha256(data) for name, data in files.items()},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in {MANIFEST: _json(manifest), **files}.items():
            archive.writestr(zipfile.ZipInfo(name, ZIP_TIME), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def read(data: bytes, max_bytes: int | None = None) -> Bundle:
    """The bundle in `data`, every file checked against the manifest's sha256; BundleError
    saying what is wrong otherwise (BundleTooLarge past `max_bytes` unpacked)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise BundleError(
            "this is not a zip file: a bnlab bundle is the zip that GET /experiments/{id}/bundle "
            "(or `bnlab experiment bundle ID`) makes"
        ) from None
    with archive:
        unpacked = sum(info.file_size for info in archive.infolist())
        if max_bytes is not None and unpacked > max_bytes:
            raise BundleTooLarge(
                f"the bundle unpacks to {unpacked:,} bytes, more than the {max_bytes:,} this "
                "server takes (BNLAB_MAX_BUNDLE_BYTES)"
            )
        manifest = _manifest(archive)
        files = _verified_files(archive, manifest)
    try:
        return _contents(manifest, files)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise BundleError(
            f"the bundle's files are not what bnlab writes ({type(error).__name__}: {error}); "
            "it was not made by GET /experiments/{id}/bundle, or was edited since"
        ) from None


def _manifest(archive: zipfile.ZipFile) -> dict[str, Any]:
    foreign = (
        f"this zip is not a bnlab bundle (no {MANIFEST} naming format {FORMAT!r}): a bundle is "
        "the zip that GET /experiments/{id}/bundle makes"
    )
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except (KeyError, ValueError, zipfile.BadZipFile):
        raise BundleError(foreign) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(foreign)
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{MANIFEST} gives no format_version; the bundle is damaged")
    if version > FORMAT_VERSION:
        made_by = (manifest.get("made_by") or {}).get("bnlab", "a newer bnlab")
        raise BundleError(
            f"this bundle is in format {version}, made by bnlab {made_by}; this bnlab "
            f"({bnlab_version()}) reads formats up to {FORMAT_VERSION}: upgrade it to bnlab "
            f"{made_by} or later to import it"
        )
    return manifest


def _verified_files(archive: zipfile.ZipFile, manifest: dict[str, Any]) -> dict[str, bytes]:
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise BundleError(f"{MANIFEST} lists no files; the bundle is damaged")
    unlisted = sorted(set(archive.namelist()) - set(listed) - {MANIFEST})
    if unlisted:
        raise BundleError(f"{', '.join(unlisted)}: in the zip but not in its manifest")
    files = {}
    for name, expected in listed.items():
        try:
            data = archive.read(name)
        except KeyError:
            raise BundleError(f"{name}: listed in the manifest but missing from the zip") from None
        except zipfile.BadZipFile as error:  # a CRC that does not match: bytes changed
            raise BundleError(f"{name}: damaged in the zip ({error})") from None
        if sha256(data) != expected:
            raise BundleError(
                f"{name}: its sha256 does not match the manifest's; the file was changed or "
                "damaged since the bundle was made"
            )
        files[name] = data
    return files


def _contents(manifest: dict[str, Any], files: dict[str, bytes]) -> Bundle:
    checkpoints = [
        CheckpointEntry(
            variant=str(entry["variant"]),
            version=int(entry["version"]),
            step=int(entry["step"]),
            sha256=str(entry["sha256"]),
            size_bytes=int(entry["size_bytes"]),
        )
        for entry in manifest["checkpoints"]
    ]
    for entry in checkpoints:
        if entry.file not in files or sha256(files[entry.file]) != entry.sha256:
            raise BundleError(
                f"{entry.file}: missing, or not the checkpoint its manifest entry names "
                "(sha256 mismatch)"
            )
    provenance = manifest.get("provenance")
    if provenance is not None and not isinstance(provenance, dict):
        raise ValueError(f"{MANIFEST}'s provenance is not a JSON object")
    return Bundle(
        experiment=dict(manifest["experiment"]),
        spec=_object(files, SPEC),
        provenance=provenance,
        curve=_object(files, CURVE)["series"],
        results=_object(files, RESULTS),
        layer_stats=_object(files, LAYER_STATS),
        checkpoints=checkpoints,
        checkpoint_bytes={entry.file: files[entry.file] for entry in checkpoints},
        made_by=str(manifest["made_by"]["bnlab"]),
        probes=_object(files, PROBES) if PROBES in files else {},
    )


def _object(files: dict[str, bytes], name: str) -> dict[str, Any]:
    value = json.loads(files[name])
    if not isinstance(value, dict):
        raise ValueError(f"{name} does not hold a JSON object")
    return value


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True).encode()


def _csv(curve: dict[str, dict[str, list[Any]]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for variant, series in curve.items():
        for step, accuracy, loss in zip(
            series["step"], series["val_accuracy"], series["train_loss"], strict=True
        ):
            writer.writerow([variant, step, repr(accuracy), "" if loss is None else repr(loss)])
    return text.getvalue().encode()
