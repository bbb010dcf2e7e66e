"""What the why-BN-helps routes return. A value the net made not finite (inf, NaN) is null."""

from pydantic import BaseModel, Field

from bnlab.vocabulary import Variant


class Measured(BaseModel):
    """What every answer starts with: whether the experiment asked for the measurement."""

    experiment_id: int
    measured: bool = Field(
        description="Whether the experiment's probes included this measurement; if not, the "
        "series are empty and `message` says how to ask for it."
    )
    message: str | None = Field(description="Why there is nothing to show, when there is not.")
    every: int = Field(description="Measured at every N-th sample point, step 0 included.")
    learning_rate: float


class LandscapeSeries(BaseModel):
    """One net's landscape along its gradient g, a value per probed step."""

    step: list[int]
    step_sizes: list[float] = Field(description="The step sizes eta, the same at every step.")
    losses: list[list[float | None]] = Field(
        description="Per step, the loss at theta - eta g on the same batch, per step size."
    )
    loss_min: list[float | None] = Field(description="The band the paper plots: min over eta.")
    loss_max: list[float | None]
    grad_changes: list[list[float | None]] = Field(
        description="Per step, ||grad L(theta) - grad L(theta - eta g)|| per step size."
    )
    grad_change_min: list[float | None] = Field(
        description="Gradient predictiveness: the range over eta of "
        "||grad L(theta) - grad L(theta - eta g)||."
    )
    grad_change_max: list[float | None]
    beta_smoothness: list[float | None] = Field(
        description="Effective beta-smoothness: the largest gradient change per unit of step."
    )


class LandscapeOut(Measured):
    variants: dict[Variant, LandscapeSeries]


class ShiftSeries(BaseModel):
    """One weight layer's internal covariate shift, a value per probed step."""

    layer: int = Field(description="Weight layers from the first (0) to the output layer.")
    step: list[int]
    norm: list[float | None] = Field(description="||G - G'||: the gradient's change.")
    cosine: list[float | None] = Field(description="cos(G, G'): 1 is no shift.")


class IcsOut(Measured):
    variants: dict[Variant, list[ShiftSeries]]


class SharpnessSeries(BaseModel):
    step: list[int]
    eigenvalue: list[float | None] = Field(description="The Hessian's top eigenvalue.")
    iterations: list[int] = Field(
        description="Lanczos iterations (Hessian-vector products) each took."
    )


class SharpnessOut(Measured):
    edge: float = Field(
        description="2 / learning rate: plain gradient descent cannot stay where the sharpness "
        "is above it (Cohen et al. 2021)."
    )
    variants: dict[Variant, SharpnessSeries]
