"""`bnlab sweep run | report | annotate`: grids of experiments (the study's table in one
request)."""

import json
from typing import Annotated, Any, Literal

import typer
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from bnlab.client import DEFAULT_URL, Sweep
from bnlab.commands.annotations import Name, Notes, Tags, annotated, show_name_and_tags
from bnlab.commands.common import (
    Json,
    Token,
    Url,
    connect,
    console,
    errors,
    print_answer,
    print_json,
    reports_errors,
)
from bnlab.vocabulary import TERMINAL, Preset

app = typer.Typer(help="Run a grid of experiments and read its report.", no_args_is_help=True)

# The report as text; its JSON is --json, as on every read command.
TextFormat = Literal["md", "csv"]


SweepId = Annotated[int, typer.Argument(min=1, help="The sweep's id.", show_default=False)]


@app.command()
@reports_errors
def run(
    preset: Annotated[
        Preset | None,
        typer.Option(
            help="classic: the study's 15 cells; why: 5 telling cells with every probe on "
            "(plain, bn, bn_noisy; see the README's 'Why does BN help?')."
        ),
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            metavar="FIELD=V1,V2",
            help="Try every value of an experiment field; repeat for more fields (all "
            "combinations), e.g. --grid learning_rate=0.01,1 --grid seed=0,1,2.",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="FIELD=VALUE",
            help="A field shared by every cell, e.g. --set training_batches=2000.",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow it to the end, then print its report.")
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Queue every experiment of a grid.

    With --wait, follow it, print its report, and exit non-zero unless all succeed.
    """
    if preset is None and not grid:
        raise typer.BadParameter(
            "give --preset classic (or why), or at least one --grid FIELD=V1,V2"
        )
    grid_values = {
        name: [_value(value) for value in values.split(",")]
        for name, values in map(_field, grid or [])
    }
    base = {name: _value(value) for name, value in map(_field, set_ or [])}
    with connect(url, token) as client:
        sweep = client.sweep(preset, grid_values, base)
        if not wait:
            if json:
                print_json(sweep.info)
            else:
                console.print(f"sweep {sweep.id} queued: {len(sweep.info['cells'])} experiments")
            return
        _follow(sweep, show=not json)
        if json:
            print_json(sweep.info)
        else:
            # Plain print: rich would wrap the Markdown table's long lines.
            print(_ending_in_newline(sweep.report_text("md")), end="")
    failed = [cell for cell in sweep.info["cells"] if cell["status"] != "succeeded"]
    if failed:
        ids = ", ".join(str(cell["id"]) for cell in failed)
        errors.print(f"bnlab: sweep {sweep.id}: not all succeeded ({ids})", markup=False)
        raise typer.Exit(1)


@app.command()
@reports_errors
def report(
    sweep_id: SweepId,
    format: Annotated[TextFormat, typer.Option("--format", help="Markdown or CSV.")] = "md",
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """A sweep's report: each cell's outcome, plain vs bn."""
    with connect(url, token) as client:
        sweep = client.existing_sweep(sweep_id)
        if json:
            print_json(sweep.report_json())
        else:
            print(_ending_in_newline(sweep.report_text(format)), end="")


@app.command()
@reports_errors
def annotate(
    sweep_id: SweepId,
    name: Name = None,
    notes: Notes = None,
    tag: Tags = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Give a sweep a name, notes or tags; what is not given stays as it is."""
    print_answer(
        url,
        token,
        json,
        ask=lambda client: annotated(client.existing_sweep(sweep_id), name, notes, tag),
        show=_show_sweep,
    )


def _show_sweep(sweep: dict[str, Any]) -> None:
    cells = len(sweep["cells"])
    console.print(f"sweep {sweep['id']}: [bold]{sweep['status']}[/bold], {cells} cells")
    show_name_and_tags(sweep)
    if sweep["notes"]:
        console.print(Markdown(sweep["notes"]))


def _ending_in_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _field(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip() or not value.strip():
        raise typer.BadParameter(f"{text!r}: write FIELD=VALUE, e.g. learning_rate=0.01,1")
    return name.strip(), value.strip()


def _value(text: str) -> Any:
    """A value as JSON reads it (0.5, 2000, true), else as the text it is (relu)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _follow(sweep: Sweep, show: bool) -> None:
    """Wait for the sweep to end, with a bar of finished cells; `sweep.info` is then as it
    ended."""
    bar = Progress(
        TextColumn(f"sweep {sweep.id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("experiments finished"),
        console=console,
        disable=not show,
    )
    task = bar.add_task("cells", total=len(sweep.info["cells"]) or None)
    with bar:
        for state in sweep.cell_states():
            done = sum(cell["status"] in TERMINAL for cell in state.values())
            bar.update(task, completed=done, total=len(state) or None)
    sweep.refresh()
