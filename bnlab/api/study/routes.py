"""The study's last experiment and what the study only describes, per experiment:

- POST /experiments/{id}/collapse: the first n test images one at a time, BN on population and on
  batch statistics (the collapse), and the whole test set in large batches (no collapse);
- GET /experiments/{id}/batch-size-effect(.png): accuracy against inference batch size;
- GET /experiments/{id}/activations(.png): each hidden layer's pre-activations, dead units and
  gradient norm at every sample point;
- POST /experiments/{id}/recalibrate: BN's population statistics measured over the training
  split, kept as a new checkpoint version.

The work is torch on CPU: plain `def` routes, so it runs in the threadpool, not on the loop,
and at most BNLAB_STUDY_SLOTS demos at once (bnlab/api/study/sources.py); one more is a 503.
"""

import logging
from typing import Annotated
from uuid import uuid4

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bnlab import artifacts
from bnlab.api.core.content import Responses
from bnlab.api.core.domain_errors import Conflict, Unavailable
from bnlab.api.deps import ExperimentDep, SessionDep, SettingsDep, served_nets, study_slots
from bnlab.api.experiments.schemas import MAX_ID, Message
from bnlab.api.predict.serving import LoadedNet, open_checkpoint
from bnlab.api.study import plots
from bnlab.api.study.schemas import (
    ActivationsOut,
    BatchSizeEffectOut,
    CollapseOut,
    LayerSeries,
    NetAnswers,
    NetBatchSizes,
    NetCollapse,
    OneAtATime,
    RecalibrationOut,
    WholeTestSet,
)
from bnlab.api.study.sources import StudyNet, require_trained
from bnlab.models.checkpoint import save_net
from bnlab.models.collapse import batch_size_effect, batch_sizes, one_at_a_time
from bnlab.models.data import Split
from bnlab.models.inference import accuracy
from bnlab.models.probes import DEAD, PROBE_SIZE
from bnlab.models.recalibration import recalibrate
from bnlab.store import queries
from bnlab.store.tables import Experiment, LayerStat
from bnlab.vocabulary import Mode, Variant

router = APIRouter(prefix="/experiments", tags=["study"])

MAX_COLLAPSE_IMAGES = 10_000
LARGE_BATCH = 1000  # the whole test set in batch mode: batches this large barely collapse
COLLAPSE_MODES: tuple[Mode, ...] = ("population", "batch")
log = logging.getLogger(__name__)
RECALIBRATION_BATCH = 1000  # memory only: recalibration's result does not depend on it
# Fields of a checkpoint's metadata that `save_net` writes itself.
WRITTEN_BY_SAVE = {"format", "format_version", "variant", "architecture", "preprocessing"}

VariantQuery = Annotated[
    Variant,
    Query(
        description="Which net answers at the top level (every net trained is under `variants`)."
    ),
]
VersionQuery = Annotated[
    int | None,
    Query(ge=1, le=MAX_ID, description="Checkpoint version (see /recalibrate); default latest."),
]
NOT_FOUND: Responses = {
    404: {"model": Message, "description": "No such experiment or checkpoint version."}
}
DEMO_ERRORS: Responses = {
    **NOT_FOUND,
    409: {"model": Message, "description": "Not succeeded, or a variant it did not train."},
    503: {
        "model": Message,
        "description": "The API cannot read the experiment's dataset, or every study slot is "
        "taken (then with `Retry-After`).",
    },
}
PNG: Responses = {200: {"content": {"image/png": {}}, "description": "The plot."}}


async def study_net(
    request: Request,
    experiment: ExperimentDep,
    settings: SettingsDep,
    variant: VariantQuery = "bn",
    version: VersionQuery = None,
) -> StudyNet:
    nets, slots = served_nets(request), study_slots(request)
    return StudyNet(experiment, variant, version, nets, settings, slots)


StudyNetDep = Annotated[StudyNet, Depends(study_net)]


@router.post("/{experiment_id}/collapse", responses=DEMO_ERRORS)
def collapse(
    net: StudyNetDep,
    n: Annotated[
        int,
        Query(ge=1, le=MAX_COLLAPSE_IMAGES, description="How many test images, from the first."),
    ] = 200,
) -> CollapseOut:
    """The study's last experiment: predict the first n test images one at a time with
    population and with batch statistics. One image's own statistics turn every BN output into
    beta, so every image gets the same class; the whole test set in large batches shows batch
    statistics doing almost as well as population ones: the collapse is about batch size.
    Every net the experiment trained answers under `variants` (but one that diverged):
    LayerNorm, GroupNorm and plain nets need no batch, and do not collapse."""
    served = net.served_every("the collapse demo")
    with net.computing():
        test = net.splits().test
        if n > len(test):
            raise HTTPException(422, f"n is {n}, but the test set has only {len(test)} images")
        shown = {variant: _collapse_of(loaded, test, n) for variant, loaded in served.items()}
    return CollapseOut(
        **dict(shown[net.variant]),
        experiment_id=net.experiment.id,
        variant=net.variant,
        n=n,
        labels=test.labels[:n].tolist(),
        variants=shown,
    )


def _collapse_of(loaded: LoadedNet, test: Split, n: int) -> NetCollapse:
    stack, labels = loaded.net.stack, test.labels[:n]
    answers = {}
    for mode in COLLAPSE_MODES:
        predictions = one_at_a_time(stack, test.images[:n], mode)[0]
        correct = (predictions == labels).double().mean().item()
        answers[mode] = NetAnswers(predictions=predictions.tolist(), accuracy=correct)
    [population] = accuracy(stack, test, "population")
    [batch] = accuracy(stack, test, "batch", batch_size=LARGE_BATCH)
    return NetCollapse(
        checkpoint_version=loaded.checkpoint_version,
        mode_applies=loaded.net.mode_applies,
        one_at_a_time=OneAtATime(**answers),
        whole_test_set=WholeTestSet(
            images=len(test),
            batch_size=LARGE_BATCH,
            population_accuracy=population,
            batch_accuracy=batch,
        ),
    )


@router.get("/{experiment_id}/batch-size-effect", responses=DEMO_ERRORS)
def get_batch_size_effect(net: StudyNetDep) -> BatchSizeEffectOut:
    """Test accuracy with BN on batch statistics for inference batches of 1, 2, 4, ... 1024
    images (up to the test set's size), and with population statistics for reference: where the
    collapse ends."""
    return _batch_size_effect(net)


@router.get(
    "/{experiment_id}/batch-size-effect.png",
    response_class=Response,
    responses={**PNG, **DEMO_ERRORS},
)
def get_batch_size_effect_png(net: StudyNetDep) -> Response:
    """The batch-size effect, plotted: accuracy against batch size, population as a line."""
    png = plots.batch_size_effect_png(_batch_size_effect(net), net.experiment.spec)
    return Response(png, media_type="image/png")


def _batch_size_effect(net: StudyNet) -> BatchSizeEffectOut:
    served = net.served_every("the batch-size effect")
    with net.computing():
        test = net.splits().test
        sizes = batch_sizes(len(test))
        shown = {
            variant: _batch_sizes_of(loaded, test, sizes) for variant, loaded in served.items()
        }
    return BatchSizeEffectOut(
        **dict(shown[net.variant]),
        experiment_id=net.experiment.id,
        variant=net.variant,
        images=len(test),
        sizes=sizes,
        variants=shown,
    )


def _batch_sizes_of(loaded: LoadedNet, test: Split, sizes: list[int]) -> NetBatchSizes:
    effect = batch_size_effect(loaded.net.stack, test, sizes)
    [population] = accuracy(loaded.net.stack, test, "population")
    return NetBatchSizes(
        checkpoint_version=loaded.checkpoint_version,
        mode_applies=loaded.net.mode_applies,
        batch_accuracy=[net_accuracy for [net_accuracy] in effect],
        population_accuracy=population,
    )


@router.get("/{experiment_id}/activations", responses=NOT_FOUND)
def get_activations(experiment: ExperimentDep, session: SessionDep) -> ActivationsOut:
    """Inside each net at every sample point, per hidden layer: the 15th, 50th and 85th
    percentiles of the input to the nonlinearity over a fixed probe batch of validation images
    (BN in population mode), the fraction of dead units, and the norm of the layer's weight
    gradient on the last training batch. Grows while the experiment runs."""
    return _activations(experiment, session)


@router.get(
    "/{experiment_id}/activations.png",
    response_class=Response,
    responses={**PNG, **NOT_FOUND},
)
def get_activations_png(experiment: ExperimentDep, session: SessionDep) -> Response:
    """The activations, plotted: a row per hidden layer, a column per variant."""
    png = plots.activations_png(_activations(experiment, session), experiment.spec)
    # A running experiment's statistics grow: a cached copy would hide the new ones.
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


def _activations(experiment: Experiment, session: Session) -> ActivationsOut:
    activation = experiment.spec.get("activation", "relu")
    rows = queries.layer_stats(session, experiment.id)
    return ActivationsOut(
        experiment_id=experiment.id,
        activation=activation,
        probe_images=min(PROBE_SIZE, experiment.spec.get("validation_size", 5000)),
        dead_means=DEAD[activation].means if activation in DEAD else "",
        variants={variant: _layer_series(stats) for variant, stats in rows.items()},
    )


def _layer_series(stats: list[LayerStat]) -> list[LayerSeries]:
    """Rows ordered by layer, then step, as one series per layer."""
    by_layer: dict[int, list[LayerStat]] = {}
    for row in stats:
        by_layer.setdefault(row.layer, []).append(row)
    return [
        LayerSeries(
            layer=layer,
            step=[row.step for row in rows],
            p15=[row.p15 for row in rows],
            p50=[row.p50 for row in rows],
            p85=[row.p85 for row in rows],
            dead_fraction=[row.dead_fraction for row in rows],
            grad_norm=[row.grad_norm for row in rows],
        )
        for layer, rows in sorted(by_layer.items())
    ]


@router.post("/{experiment_id}/recalibrate", status_code=201, responses=DEMO_ERRORS)
def recalibrate_bn(net: StudyNetDep, session: SessionDep) -> RecalibrationOut:
    """Re-estimate the bn net's population statistics as true averages over the training split
    (one pass per BN layer; "precise BN") instead of the decayed running estimate, and keep the
    result as a new checkpoint version that /predict and the demos take as ?version=. `version`
    names the checkpoint to start from (default latest)."""
    experiment, variant, version = net.experiment, net.variant, net.version
    require_trained(experiment, variant, "recalibration", needs_bn=True)
    if experiment.spec.get("net") == "rnn":
        raise Conflict(
            "recalibration measures an MLP's or conv net's BN layers; an rnn's BN keeps "
            "statistics per time step, which its running estimate already averages per step"
        )
    checkpoint = queries.checkpoint_of(session, experiment.id, variant, version)
    if checkpoint is None:
        which = f"version {version}" if version else "checkpoint yet"
        raise HTTPException(404, f"experiment {experiment.id} has no {variant} {which}")
    with net.computing():
        stack, meta = open_checkpoint(checkpoint, experiment.id, variant, net.settings)
        splits = net.splits()
        recalibrated = recalibrate(stack, splits.train, RECALIBRATION_BATCH)
        [before] = accuracy(stack, splits.test, "population")
        [after] = accuracy(recalibrated, splits.test, "population")
    # A name of its own: two recalibrations at once must not write the same file.
    folder = checkpoint.path.rsplit("/", 1)[0]  # beside the checkpoint, on its store
    path = artifacts.locate(folder, f"{variant}-recalibrated-{uuid4().hex[:12]}.safetensors")
    kept = {key: value for key, value in meta.items() if key not in WRITTEN_BY_SAVE}
    # Merged, not passed side by side: a recalibrated checkpoint's metadata already holds these.
    provenance = {
        "recalibrated_from_version": checkpoint.version,
        "recalibration_images": len(splits.train),
    }
    try:
        sha256, size = save_net(
            path, recalibrated.net_state(0), variant=variant, arch=stack.arch, **(kept | provenance)
        )
    except artifacts.StoreError as error:
        log.warning("recalibration of experiment %s not kept: %s", experiment.id, error)
        raise Unavailable(
            f"the recalibrated checkpoint of experiment {experiment.id} could not be stored: "
            "its store is unreachable; try again later"
        ) from None
    run = queries.run_of(experiment, variant)
    added = queries.add_checkpoint(session, run, checkpoint.step, path, sha256, size)
    try:
        session.commit()
    except IntegrityError:  # another recalibration took the same version number first
        session.rollback()
        artifacts.delete(path)
        raise HTTPException(
            409,
            f"another recalibration of experiment {experiment.id} finished at the same "
            "moment; try again",
        ) from None
    net.nets.forget_latest(experiment.id, variant)
    return RecalibrationOut(
        experiment_id=experiment.id,
        variant=variant,
        from_version=checkpoint.version,
        version=added.version,
        training_images=len(splits.train),
        test_accuracy_before=before,
        test_accuracy_after=after,
    )
