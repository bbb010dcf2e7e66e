"""Why BN helps, measured per net at sample points (issue 12): Santurkar et al. 2018 and Cohen et
al. 2021 on the user's own nets. The measurements themselves are being written; these are the
types the trainer reports them in and the worker stores."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Probes:
    """Which measurements run, at every `every`-th sample point (step 0 counts as the first)."""

    landscape: bool = False  # loss, gradient predictiveness and beta-smoothness along -g
    ics: bool = False  # internal covariate shift per layer (Santurkar et al. Def. 2.1)
    sharpness: bool = False  # top Hessian eigenvalue, beside 2/lr
    every: int = 5

    @property
    def any(self) -> bool:
        return self.landscape or self.ics or self.sharpness


@dataclass(frozen=True)
class Landscape:
    """Along the gradient g of the current batch, at theta - eta * g for each eta."""

    step_sizes: tuple[float, ...]
    losses: tuple[float, ...]  # L(theta - eta g) on the same batch, per eta
    grad_changes: tuple[float, ...]  # ||grad L(theta) - grad L(theta - eta g)||_2, per eta
    beta_smoothness: float  # max over eta of grad_change / ||eta g||_2


@dataclass(frozen=True)
class LayerShift:
    """One layer's internal covariate shift: its weight gradient G before, G' after every
    earlier layer took its SGD step, on the same batch."""

    norm: float  # ||G - G'||_2
    cosine: float  # cos(G, G')


@dataclass(frozen=True)
class Sharpness:
    eigenvalue: float  # the Hessian's largest, by power iteration on Hessian-vector products
    iterations: int  # power iterations it took
    edge: float  # 2 / learning rate: gradient descent's edge of stability


@dataclass(frozen=True)
class WhySample:
    """One net at a sample point where probes ran: each measurement asked for, else None."""

    landscape: Landscape | None = None
    ics: tuple[LayerShift, ...] | None = None  # per weight layer, first to last
    sharpness: Sharpness | None = None
