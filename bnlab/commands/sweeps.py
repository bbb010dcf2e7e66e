"""`bnlab sweep run | report`: grids of experiments (the study's table in one request)."""

import json
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from bnlab.client import DEFAULT_URL, ApiError, Client, StreamBroken, follow
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
from bnlab.vocabulary import TERMINAL, Preset

app = typer.Typer(help="Run a grid of experiments and read its report.", no_args_is_help=True)

POLL_SECONDS = 2.0


# The report as text; its JSON is --json, as on every read command.
TextFormat = Literal["md", "csv"]


SweepId = Annotated[int, typer.Argument(min=1, help="The sweep's id.", show_default=False)]


@app.command()
@reports_errors
def run(
    preset: Annotated[
        Preset | None, typer.Option(help="The classic study's cells (15 experiments).")
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
        raise typer.BadParameter("give --preset classic, or at least one --grid FIELD=V1,V2")
    body: dict[str, Any] = {
        "grid": {
            name: [_value(value) for value in values.split(",")]
            for name, values in map(_field, grid or [])
        },
        "base": {name: _value(value) for name, value in map(_field, set_ or [])},
    }
    if preset is not None:
        body["preset"] = preset
    with connect(url, token) as client:
        sweep = client.post("/sweeps", body)
        if not wait:
            if json:
                print_json(sweep)
            else:
                console.print(f"sweep {sweep['id']} queued: {len(cells(sweep))} experiments")
            return
        sweep = _follow(client, sweep, show=not json)
        if json:
            print_json(sweep)
        else:
            # Plain print: rich would wrap the Markdown table's long lines.
            print(_report_text(client, sweep["id"], "md"), end="")
    failed = [cell for cell in cells(sweep) if cell.get("status") != "succeeded"]
    if failed or sweep.get("status", "succeeded") != "succeeded":
        ids = ", ".join(str(cell.get("id")) for cell in failed)
        errors.print(f"bnlab: sweep {sweep['id']}: not all succeeded ({ids})", markup=False)
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
        if json:
            print_json(client.get(f"/sweeps/{sweep_id}/report"))
        else:
            print(_report_text(client, sweep_id, format), end="")


def _report_text(client: Client, sweep_id: int, format: TextFormat) -> str:
    text = client.request("GET", f"/sweeps/{sweep_id}/report", params={"format": format}).text
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


def cells(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """A sweep's cells (its experiments), under whichever key the server keeps them."""
    found = sweep.get("cells", sweep.get("experiments", []))
    return found if isinstance(found, list) else []


def finished(sweep: dict[str, Any]) -> bool:
    if "status" in sweep:
        return sweep["status"] in TERMINAL
    return all(cell.get("status") in TERMINAL for cell in cells(sweep))


def _follow(client: Client, sweep: dict[str, Any], show: bool) -> dict[str, Any]:
    """Wait for the sweep to end, with a bar of finished cells; returns the sweep as it ended."""
    bar = Progress(
        TextColumn(f"sweep {sweep['id']}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("experiments finished"),
        console=console,
        disable=not show,
    )
    task = bar.add_task("cells", total=len(cells(sweep)) or None)
    with bar:
        for state in _states(client, sweep["id"]):
            done = sum(cell.get("status") in TERMINAL for cell in state.values())
            bar.update(task, completed=done, total=len(state) or None)
    ended: dict[str, Any] = client.get(f"/sweeps/{sweep['id']}")
    return ended


def _states(client: Client, sweep_id: int) -> Iterator[dict[Any, dict[str, Any]]]:
    """Each cell's latest state (by id) after every change: from /sweeps/{id}/events, or by
    polling GET /sweeps/{id} where the stream cannot be had."""
    state: dict[Any, dict[str, Any]] = {}
    try:
        for event in follow(client, f"/sweeps/{sweep_id}/events"):
            if event.name == "cell" and isinstance(event.data, dict):
                state[event.data.get("id")] = event.data
                yield state
        return
    except StreamBroken:
        pass
    except ApiError:
        # A server without sweep events (404 on the stream) is still followed by polling; a
        # sweep that does not exist fails the GET below with the server's own words.
        pass
    while True:
        sweep = client.get(f"/sweeps/{sweep_id}")
        yield {cell.get("id"): cell for cell in cells(sweep)}
        if finished(sweep):
            return
        time.sleep(POLL_SECONDS)
