"""The nets, data and CPU the study's demos run on, or a 4xx/503 that says why not."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from fastapi import HTTPException

from bnlab.api.schemas import Variant
from bnlab.api.serving import LoadedNet, ServedNets
from bnlab.models.data import DataUnavailable, Splits, load_splits
from bnlab.settings import Settings
from bnlab.store.tables import Experiment


def require_bn_of_succeeded(experiment: Experiment, variant: str, what: str) -> None:
    """409 unless `what` can run: a bn net, of an experiment that has succeeded."""
    if variant != "bn":
        raise HTTPException(
            409,
            f"{what} needs BN, and the {variant} net has none (its population and batch modes "
            "are the same net): use variant=bn",
        )
    if experiment.status != "succeeded":
        raise HTTPException(
            409,
            f"experiment {experiment.id} is {experiment.status}: {what} needs a succeeded "
            "experiment's trained net",
        )


@dataclass(frozen=True)
class StudyNet:
    """The trained net a study route asks about: an experiment's variant at a checkpoint version
    (None: the latest), with the app's served nets and settings to reach it and its data."""

    experiment: Experiment
    variant: Variant
    version: int | None
    nets: ServedNets
    settings: Settings

    def served(self, what: str) -> LoadedNet:
        """The net, from /predict's cache; a 409 unless `what` can run on it."""
        require_bn_of_succeeded(self.experiment, self.variant, what)
        return self.nets.loaded(self.experiment.id, self.variant, self.version)

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
            raise HTTPException(503, message) from None


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
