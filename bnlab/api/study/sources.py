"""The nets, data and CPU the study's demos run on, or a domain error that says why not.

The demos (collapse, batch-size effect, recalibration) are torch in a request thread: a pass
over the test set, or over the whole training split. They take at most `study_slots` of them at
once (BNLAB_STUDY_SLOTS); one more is refused with a 503 and Retry-After, not queued: a waiting
request would hold a threadpool thread, and its client, for as long as every demo ahead of it
took. Cheap, bounded and said plainly, instead of a job on the worker that the API would follow:
a demo's answer takes seconds on the study's small nets, about what a job's round trip would.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from bnlab.api.core.domain_errors import Busy, Conflict, Unavailable
from bnlab.api.predict.serving import LoadedNet, ServedNets
from bnlab.models.data import DataUnavailable, Splits, load_splits
from bnlab.settings import Settings
from bnlab.store.tables import Experiment
from bnlab.vocabulary import BATCH_DEPENDENT, Variant

# What a 503 for a full pool asks a client to wait: a demo on the study's net takes seconds.
BUSY_RETRY_SECONDS = 5


class ComputeSlots:
    """At most `size` study computations at once in this process; one more is refused."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = threading.BoundedSemaphore(size)

    @contextmanager
    def held(self) -> Iterator[None]:
        """A slot for the block, or `Busy` at once if every one is taken."""
        if not self._free.acquire(blocking=False):
            raise Busy(
                "the API is already running as many study computations (collapse, batch-size "
                f"effect, recalibration) as BNLAB_STUDY_SLOTS allows ({self.size}): retry in "
                f"{BUSY_RETRY_SECONDS} seconds",
                retry_after=BUSY_RETRY_SECONDS,
            )
        try:
            yield
        finally:
            self._free.release()


def require_trained(experiment: Experiment, variant: Variant, what: str, needs_bn: bool) -> None:
    """A `Conflict` unless `what` can run: a net the experiment trained (with BN where `what`
    `needs_bn`), of an experiment that has succeeded."""
    if needs_bn and variant not in BATCH_DEPENDENT:
        raise Conflict(
            f"{what} needs BN, and the {variant} net has none (its population and batch modes "
            "are the same net): use variant=bn (or bn_after)",
        )
    trained = experiment.variants
    if variant not in trained:
        raise Conflict(
            f"experiment {experiment.id} trained no {variant} net: use variant= one of "
            f"{', '.join(trained)}",
        )
    if experiment.status != "succeeded":
        raise Conflict(
            f"experiment {experiment.id} is {experiment.status}: {what} needs a succeeded "
            "experiment's trained net",
        )


@dataclass(frozen=True)
class StudyNet:
    """The trained net a study route asks about: an experiment's variant at a checkpoint version
    (None: the latest), with the app's served nets, settings and compute slots to reach it, its
    data and the CPU."""

    experiment: Experiment
    variant: Variant
    version: int | None
    nets: ServedNets
    settings: Settings
    slots: ComputeSlots

    def served_every(self, what: str) -> dict[Variant, LoadedNet]:
        """Every net the experiment trained, from /predict's cache: the one asked for at the
        version asked for, the others at their latest, less the ones that diverged (their
        weights are not finite: nothing to show); a 409 unless `what` can run."""
        require_trained(self.experiment, self.variant, what, needs_bn=False)
        diverged = {run.variant for run in self.experiment.runs if run.diverged_at_step is not None}
        return {
            variant: self.nets.loaded(
                self.experiment.id, variant, self.version if variant == self.variant else None
            )
            for variant in self.experiment.variants
            if variant == self.variant or variant not in diverged
        }

    @contextmanager
    def computing(self) -> Iterator[None]:
        """A compute slot held and torch on one thread, for a demo's data and torch work."""
        with self.slots.held(), one_torch_thread():
            yield

    def splits(self) -> Splits:
        """The experiment's dataset, split as its worker split it."""
        spec = self.experiment.spec
        try:
            return load_splits(
                spec.get("dataset", "mnist"),
                self.settings.data_dir,
                self.settings.download,
                spec.get("validation_size", 5000),
            )
        except (DataUnavailable, ValueError) as error:  # ValueError: data too small for the split
            message = f"the API cannot read experiment {self.experiment.id}'s data: {error}"
            raise Unavailable(message) from None


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one intra-op thread in the calling (threadpool) thread, then as it was.

    The demos run the study's small nets on batches of 1 to 1000 images, where a second thread
    gains nothing, and a worker training on the same machine holds the cores: with two threads
    each tiny op waits on a barrier that the busy cores serve late (the batch-size effect took
    14.7 s instead of 0.28 s on a loaded 2-core machine). OpenMP keeps the setting per thread,
    so other requests are not affected.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
