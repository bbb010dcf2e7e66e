"""What /compare returns, as pydantic models (the OpenAPI document is made from these)."""

from typing import Any

from pydantic import BaseModel, Field

from bnlab.api.experiments.schemas import RunResults, Series
from bnlab.vocabulary import Status, Variant


class ComparedExperiment(BaseModel):
    id: int
    url: str
    name: str | None
    status: Status
    values: dict[str, Any] = Field(description="Its values of the fields that differ.")
    label: str = Field(description='"#id" and those values, short: "#4 lr 1, bad init".')
    series: dict[Variant, Series] = Field(description="Each net's curve, as /curve gives it.")


class Net(BaseModel):
    """One net of one experiment: a line on the plot."""

    experiment_id: int
    variant: Variant
    label: str = Field(description='The legend\'s words: "#4 lr 1, bad init, with BN".')


class NetResults(Net, RunResults):
    """A row of the results table."""


class Comparison(BaseModel):
    differing: list[str] = Field(
        description="The spec fields whose value differs between the experiments (only these "
        "are named in the labels)."
    )
    experiments: list[ComparedExperiment] = Field(description="In the order asked for.")
    legend: list[Net] = Field(description="A line per net, as the PNG draws them.")
    table: list[NetResults] = Field(description="A row per net: its results.")
