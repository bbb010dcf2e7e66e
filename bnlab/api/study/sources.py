"""The nets, data and CPU the study's demos run on, or a 4xx/503 that says why not."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from fastapi import HTTPException, Request

from bnlab.api.deps import served_nets
from bnlab.api.serving import LoadedNet
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


def demo_net(
    request: Request, experiment: Experiment, variant: str, version: int | None, what: str
) -> LoadedNet:
    """The served net of that checkpoint version (latest for None), from /predict's cache."""
    require_bn_of_succeeded(experiment, variant, what)
    return served_nets(request).loaded(experiment.id, variant, version)


def splits_of(experiment: Experiment, settings: Settings) -> Splits:
    """The experiment's dataset, split as its worker split it."""
    spec = experiment.spec
    try:
        return load_splits(
            spec.get("dataset", "mnist"),
            settings.data_dir,
            settings.download,
            spec.get("validation_size", 5000),
        )
    except (DataUnavailable, ValueError) as error:  # ValueError: data too small for the split
        message = f"the API cannot read experiment {experiment.id}'s data: {error}"
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
