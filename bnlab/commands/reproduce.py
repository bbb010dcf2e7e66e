"""`bnlab reproduce BUNDLE`: train a bundle's spec again on the service the CLI talks to and say
whether the curve came out the same.

On the same CPU kind (model, kernel level, the variables that force MKL's and ATen's choice:
bnlab/worker/provenance.py), with the same torch and BN implementation, the same spec runs the
same kernels in the same order: the curve must be the same bit for bit. Elsewhere the kernels
round differently, so the claim is an envelope derived from float32: at step t a training loss
may differ by t roundings (2^-24 each, relative), the most a run that does not amplify rounding
errors can drift; a validation accuracy by one validation image. A chaotic run (the plain relu
net at learning rate 1, say) can leave that envelope on another CPU and still be a correct rerun:
the largest difference per variant is printed, so a person can judge.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from bnlab import bundle as bundles
from bnlab.client import DEFAULT_URL, ApiError
from bnlab.commands.bundles import BundleFile
from bnlab.commands.common import (
    Json,
    Token,
    Url,
    connect,
    console,
    errors,
    print_json,
    reports_errors,
)
from bnlab.commands.watch import watch

# float32's unit roundoff: one rounding's relative error.
ROUNDING = 2.0**-24
# What must agree for "the same kernels in the same order".
SAME_KIND = ("cpu", "device", "torch", "bn_impl")


@dataclass(frozen=True)
class Difference:
    """One variant's curve against the bundle's: how many points, how many differ at all, the
    largest absolute differences, and whether each point is inside the envelope."""

    points: int
    differing: int
    val_accuracy: float
    train_loss: float
    in_envelope: bool
    same_steps: bool

    @property
    def identical(self) -> bool:
        return self.same_steps and self.differing == 0


def same_kind(original: dict[str, Any] | None, rerun: dict[str, Any] | None) -> bool:
    """Whether every machine that trained `original` (the first, and each a resumed job ran
    on: `resumed_on`) is of `rerun`'s kind."""
    if not original or not rerun:
        return False
    machines = [original, *original.get("resumed_on", [])]
    return all(m.get(key) == rerun.get(key) for m in machines for key in SAME_KIND)


def difference(
    original: dict[str, list[Any]], rerun: dict[str, list[Any]], validation_size: int
) -> Difference:
    """`rerun`'s series against `original`'s (lists step, val_accuracy, train_loss)."""
    same_steps = original["step"] == rerun["step"]
    differing, in_envelope = 0, same_steps
    largest_accuracy = largest_loss = 0.0
    for step, accuracy, again, loss, loss_again in zip(
        original["step"],
        original["val_accuracy"],
        rerun["val_accuracy"],
        original["train_loss"],
        rerun["train_loss"],
        strict=False,
    ):
        if (accuracy, loss) != (again, loss_again):
            differing += 1
        accuracy_gap = abs(accuracy - again)
        largest_accuracy = max(largest_accuracy, accuracy_gap)
        # Accuracies are image counts over the split (in float32): compare the counts.
        in_envelope &= round(accuracy_gap * validation_size) <= 1
        if (loss is None) != (loss_again is None):
            in_envelope = False
        elif loss is not None:
            loss_gap = abs(loss - loss_again)
            largest_loss = max(largest_loss, loss_gap)
            in_envelope &= loss_gap <= max(step, 1) * ROUNDING * abs(loss)
    return Difference(
        len(original["step"]), differing, largest_accuracy, largest_loss, in_envelope, same_steps
    )


@reports_errors
def reproduce(
    file: BundleFile, url: Url = DEFAULT_URL, token: Token = None, json: Json = False
) -> None:
    """Rerun a bundle's spec on the service and compare the curves: exit code 0 when it came out
    the same (bit for bit on the same CPU kind; else within float32's envelope), 1 if not."""
    original = _read(file)
    fork = original.experiment.get("fork")
    if fork:
        raise ApiError(
            f"{file.name} is the bundle of a fork: its run starts from experiment "
            f"{fork['parent_id']}'s training state at step {fork['step']}, which no bundle "
            "carries; reproduce the parent's bundle instead"
        )
    status = original.experiment.get("status")
    if status != "succeeded":
        # A rerun trains to the end: it could never stop where this one did.
        raise ApiError(
            f"{file.name} is the bundle of a {status} experiment: it stopped early "
            f"({original.experiment.get('error') or 'no reason recorded'}), and a rerun trains "
            "to the end, so their curves cannot agree; only a succeeded experiment is reproduced"
        )
    with connect(url, token) as client:
        rerun = client.run(**original.spec)
        say = errors if json else console  # with --json, stdout is the verdict alone
        say.print(f"experiment {rerun.id} queued: {file.name}'s spec, trained again", markup=False)
        finished = watch(rerun, say)
        series = {str(variant): values for variant, values in rerun.series().items()}
    validation_size = int(original.spec["validation_size"])
    differences = {
        variant: difference(values, series.get(variant, _EMPTY), validation_size)
        for variant, values in original.curve.items()
    }
    kind = same_kind(original.provenance, finished.get("provenance"))
    verdict = _verdict(original, finished, differences, kind)
    if json:
        print_json(
            {
                "experiment_id": rerun.id,
                "same_cpu_kind": kind,
                "reproduced": verdict is None,
                "bit_for_bit": all(d.identical for d in differences.values()),
                "variants": {v: d.__dict__ for v, d in differences.items()},
            }
        )
    else:
        _show(differences, kind, finished)
    if verdict is not None:
        errors.print(f"bnlab: not reproduced: {verdict}", markup=False)
        raise typer.Exit(1)
    if not json:
        console.print("reproduced" + (" bit for bit" if kind else " within float32's envelope"))


_EMPTY: dict[str, list[Any]] = {"step": [], "val_accuracy": [], "train_loss": []}


def _read(file: Path) -> bundles.Bundle:
    try:
        return bundles.read(file.read_bytes())
    except bundles.BundleError as error:
        raise ApiError(f"{file}: {error}") from None


def _verdict(
    original: bundles.Bundle,
    finished: dict[str, Any],
    differences: dict[str, Difference],
    kind: bool,
) -> str | None:
    """Why the rerun does not count as the same; None when it does."""
    if finished["status"] != original.experiment["status"]:
        return f"it {finished['status']} where the bundle's {original.experiment['status']}"
    for variant, found in differences.items():
        if not found.same_steps:
            return f"{variant}'s curve has other sample points"
        if kind and not found.identical:
            return f"{variant}: {found.differing} points differ on the same CPU kind"
        if not found.in_envelope:
            return f"{variant}: outside float32's envelope (another CPU kind)"
    return None


def _show(differences: dict[str, Difference], kind: bool, finished: dict[str, Any]) -> None:
    cpu = (finished.get("provenance") or {}).get("cpu") or {}
    where = f"{cpu.get('model')}, {cpu.get('capability')}"
    console.print(f"rerun on {where}: {'the same' if kind else 'another'} CPU kind as the bundle's")
    table = Table("variant", "points", "differing", "largest val acc diff", "largest loss diff")
    for variant, found in differences.items():
        table.add_row(
            variant,
            str(found.points),
            str(found.differing),
            f"{found.val_accuracy:.3g}",
            f"{found.train_loss:.3g}",
        )
    console.print(table)
