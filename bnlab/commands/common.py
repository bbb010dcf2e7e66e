"""What every client command shares: the server options, JSON output, and one clear line (not a
traceback) when the server is down or says no.

Options with a fixed set of values (--activation, --status, --mode, ...) are typed with the
`Literal`s of `bnlab.vocabulary` (torch-free, so a CLI call stays light): typer lists and checks
their values, the same the API takes."""

import functools
import json
from collections.abc import Callable
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from bnlab.client import DEFAULT_URL, ApiError, Client

Url = Annotated[
    str,
    typer.Option("--url", envvar="BNLAB_URL", help="The bnlab API to talk to."),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="BNLAB_API_TOKEN",
        show_default=False,
        help="The API token, sent as 'Authorization: Bearer'.",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead.")]

console = Console()
errors = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn an ApiError into one line on stderr and exit code 1; Ctrl-C into exit code 130."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ApiError as error:
            errors.print(f"bnlab: {error}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            # Only this command stops: an experiment it was following goes on.
            errors.print("bnlab: interrupted", markup=False, highlight=False)
            raise typer.Exit(130) from None

    return run


def connect(url: str, token: str | None) -> Client:
    return Client(url or DEFAULT_URL, token)


def print_json(value: Any) -> None:
    # Plain print: rich would wrap long lines and colour the output.
    print(json.dumps(value, indent=2))


def print_answer(
    url: str,
    token: str | None,
    json: bool,
    *,
    ask: Callable[[Client], Any],
    show: Callable[[Any], None],
) -> None:
    """Ask the server once; print its answer as it is with --json, else `show` it to a person."""
    with connect(url, token) as client:
        answer = ask(client)
    if json:
        print_json(answer)
    else:
        show(answer)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def number(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"
