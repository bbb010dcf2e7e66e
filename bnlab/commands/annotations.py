"""What `bnlab experiment annotate` and `bnlab sweep annotate` share: their options, the write
through the client, and how a name and tags are shown."""

from typing import Annotated, Any

import typer

from bnlab.client import Handle
from bnlab.commands.common import console

Name = Annotated[str | None, typer.Option(help="One line to call it by.")]
Notes = Annotated[str | None, typer.Option(help="Notes, in markdown (replaces them).")]
Tags = Annotated[
    list[str] | None, typer.Option(help="A tag; repeat for several (replaces its tags).")
]


def annotated(
    handle: Handle, name: str | None, notes: str | None, tags: list[str] | None
) -> dict[str, Any]:
    """`handle` (an experiment or a sweep) with what is given set, as the server returns it."""
    # Without --name the name stays (None would remove it).
    named = {"name": name} if name is not None else {}
    return handle.update(notes=notes, tags=tags, **named).info


def show_name_and_tags(row: dict[str, Any]) -> None:
    if row["name"]:
        console.print(f"name: {row['name']}", markup=False)
    if row["tags"]:
        console.print(f"tags: {', '.join(row['tags'])}", markup=False)
