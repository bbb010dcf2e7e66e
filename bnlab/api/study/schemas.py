"""What the study's routes return, as pydantic models (the OpenAPI document is made from these)."""

from pydantic import BaseModel, Field

from bnlab.vocabulary import Variant


class NetAnswers(BaseModel):
    predictions: list[int] = Field(description="The class given to each image, in order.")
    accuracy: float


class OneAtATime(BaseModel):
    population: NetAnswers = Field(description="BN on its population (running) statistics.")
    batch: NetAnswers = Field(description="BN on the statistics of the one image at hand.")


class WholeTestSet(BaseModel):
    images: int
    batch_size: int = Field(description="The batch size of the `batch` mode evaluation.")
    population_accuracy: float
    batch_accuracy: float = Field(
        description="Batch statistics of large batches: almost as good as population ones."
    )


MODE_APPLIES = Field(
    description="Whether the net's answers depend on the batch (bn, bn_after): for the others "
    "both modes are the same net, and nothing collapses."
)


class NetCollapse(BaseModel):
    """One net's answers in the collapse demo."""

    checkpoint_version: int
    mode_applies: bool = MODE_APPLIES
    one_at_a_time: OneAtATime
    whole_test_set: WholeTestSet


class CollapseOut(NetCollapse):
    """The study's last experiment: the first n test images, one at a time, in both modes; at
    the top level for the variant asked for, under `variants` for every net trained."""

    experiment_id: int
    variant: Variant
    n: int
    labels: list[int] = Field(description="The true class of each of the n images.")
    variants: dict[Variant, NetCollapse] = Field(
        description="Every variant the experiment trained."
    )


class NetBatchSizes(BaseModel):
    """One net's test accuracy with batch statistics, per inference batch size."""

    checkpoint_version: int
    mode_applies: bool = MODE_APPLIES
    batch_accuracy: list[float] = Field(description="One per size, in the order of `sizes`.")
    population_accuracy: float = Field(description="The reference: population statistics.")


class BatchSizeEffectOut(NetBatchSizes):
    """Test accuracy with BN on batch statistics, per inference batch size: at the top level for
    the variant asked for, under `variants` for every net trained."""

    experiment_id: int
    variant: Variant
    images: int = Field(description="Test images evaluated at every size.")
    sizes: list[int]
    variants: dict[Variant, NetBatchSizes] = Field(
        description="Every variant the experiment trained."
    )


class LayerSeries(BaseModel):
    """One hidden layer over the sample points: the input to its nonlinearity on the probe batch
    (percentiles), its dead fraction, and its weight's gradient norm on the last training batch."""

    layer: int = Field(description="0 is the first hidden layer (conv layers come first).")
    step: list[int]
    p15: list[float]
    p50: list[float]
    p85: list[float]
    dead_fraction: list[float]
    grad_norm: list[float | None] = Field(description="Null at step 0: no gradient yet.")


class ActivationsOut(BaseModel):
    experiment_id: int
    activation: str
    probe_images: int = Field(description="The first validation images, the same at every step.")
    dead_means: str = Field(description="What `dead_fraction` counts for this activation.")
    variants: dict[Variant, list[LayerSeries]]


class RecalibrationOut(BaseModel):
    """A new checkpoint version whose BN statistics are true averages over the training split."""

    experiment_id: int
    variant: Variant
    from_version: int
    version: int = Field(description="The new checkpoint version: pass it as ?version= to use it.")
    training_images: int
    test_accuracy_before: float = Field(description="Population statistics as trained.")
    test_accuracy_after: float = Field(description="Population statistics recalibrated.")
