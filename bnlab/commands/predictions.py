"""`bnlab predict IMAGE` and `bnlab collapse ID`: asking a trained net, one image at a time."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bnlab.client import DEFAULT_URL
from bnlab.commands.common import (
    Json,
    Token,
    Url,
    console,
    percent,
    print_answer,
    reports_errors,
)
from bnlab.vocabulary import Mode, Variant

MODE_WORDS: dict[Mode, str] = {
    "population": "population statistics",
    "batch": "the statistics of this one image",
    "fused": "population statistics folded into the weights",
}


@reports_errors
def predict(
    image: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="A PNG or JPEG of a digit."
        ),
    ],
    experiment: Annotated[
        int, typer.Option(min=1, help="A succeeded experiment's id.", show_default=False)
    ],
    variant: Annotated[Variant, typer.Option(help="Which net of the pair answers.")] = "bn",
    mode: Annotated[Mode, typer.Option(help="BN's statistics.")] = "population",
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Classify one image with a trained net, BN using population or batch statistics."""
    print_answer(
        url,
        token,
        json,
        ask=lambda client: client.experiment(experiment).predict(image, variant, mode),
        show=lambda answer: _show_prediction(answer, experiment, variant, mode),
    )


def _show_prediction(answer: dict[str, Any], experiment: int, variant: Variant, mode: Mode) -> None:
    probabilities = answer["probabilities"]
    console.print(
        f"[bold]{answer['prediction']}[/bold] ({percent(probabilities[answer['prediction']])}) "
        f"from the {variant} net of experiment {experiment}, "
        + (MODE_WORDS[mode] if answer.get("mode_applies", True) else "which has no BN")
    )
    ranked = sorted(range(len(probabilities)), key=probabilities.__getitem__, reverse=True)
    table = Table("class", "probability")
    for digit in ranked[:3]:
        table.add_row(str(digit), percent(probabilities[digit]))
    console.print(table)


@reports_errors
def collapse(
    experiment_id: Annotated[
        int, typer.Argument(min=1, help="A succeeded experiment's id.", show_default=False)
    ],
    n: Annotated[int, typer.Option(min=1, help="How many test images, from the first.")] = 200,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """The collapse: the bn net on single images, population vs batch statistics.

    With the statistics of one image, every BN output equals beta: every image gets the same
    class. The whole test set in large batches shows it is about batch size.
    """
    print_answer(
        url,
        token,
        json,
        ask=lambda client: client.experiment(experiment_id).collapse(n),
        show=_show_collapse,
    )


def _show_collapse(result: dict[str, Any]) -> None:
    console.print(
        f"experiment {result['experiment_id']}, {result['variant']} net (checkpoint "
        f"v{result['checkpoint_version']}): the first {result['n']} test images, one at a time"
    )
    table = Table("BN statistics", "accuracy", "classes given")
    for mode, answers in result["one_at_a_time"].items():
        given = sorted(set(answers["predictions"]))
        classes = f"all {given[0]}" if len(given) == 1 else f"{len(given)} different"
        table.add_row(MODE_WORDS.get(mode, mode), percent(answers["accuracy"]), classes)
    console.print(table)
    whole = result["whole_test_set"]
    console.print(
        f"the whole test set ({whole['images']} images) in batches of {whole['batch_size']}: "
        f"population {percent(whole['population_accuracy'])}, "
        f"batch {percent(whole['batch_accuracy'])}"
    )
