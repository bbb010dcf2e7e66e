"""`bnlab experiment bundle | import`: an ended experiment as one zip file, and a zip taken into
(another) bnlab as an experiment (bnlab/bundle.py says what is in it)."""

from pathlib import Path
from typing import Annotated, Any

import typer

from bnlab.client import DEFAULT_URL
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

BundleFile = Annotated[
    Path,
    typer.Argument(exists=True, dir_okay=False, help="A bundle (zip) file.", show_default=False),
]


@reports_errors
def bundle(
    experiment_id: Annotated[
        int, typer.Argument(min=1, help="The experiment's id.", show_default=False)
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            dir_okay=False,
            help="Where to write it (default: bnlab-experiment-ID.zip).",
        ),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Save an ended experiment as a bundle: spec, curve, results, checkpoints, layer
    statistics and provenance, each file's sha256 in its manifest."""
    target = output or Path(f"bnlab-experiment-{experiment_id}.zip")
    with connect(url, token) as client:
        client.experiment(experiment_id).bundle(target)
    errors.print(f"wrote {target}", markup=False)


@reports_errors
def import_bundle(
    file: BundleFile, url: Url = DEFAULT_URL, token: Token = None, json: Json = False
) -> None:
    """Take a bundle in as a new experiment, served like any other (/predict, /curve, ...)."""
    with connect(url, token) as client:
        experiment = client.import_bundle(file)
    if json:
        print_json(experiment.info)
        return
    origin = experiment.info["imported_from"]
    console.print(
        f"experiment {experiment.id}: {experiment.info['status']}, imported from {file.name} "
        f"(experiment {origin['experiment_id']} there)"
    )


def show_origin(experiment: dict[str, Any]) -> None:
    """What trained it (its provenance, in short) and, if imported, where it came from."""
    provenance = experiment.get("provenance")
    if provenance:
        cpu, bnlab = provenance["cpu"], provenance["bnlab"]
        commit = f" {bnlab['git_commit'][:12]}" if bnlab.get("git_commit") else ""
        console.print(
            f"trained on: {provenance['device']['name'] or cpu['model']} ({cpu['capability']}), "
            f"torch {provenance['torch']}, bnlab {bnlab['version']}{commit}",
            markup=False,
        )
    origin = experiment.get("imported_from")
    if origin:
        console.print(
            f"imported from: experiment {origin['experiment_id']} of {origin['file']} "
            f"(made by bnlab {origin['made_by']})",
            markup=False,
        )
