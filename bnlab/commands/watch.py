"""Following a running experiment: its event stream (or, where that fails, polling), shown as
one live progress bar per variant with steps per second, ETA and the latest validation accuracy.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from bnlab.client import ApiError, Client, StreamBroken, follow
from bnlab.commands.common import number, percent
from bnlab.vocabulary import TERMINAL, VARIANTS, Variant

POLL_SECONDS = 1.0


@dataclass
class Update:
    """What changed: a variant's latest point, the progress, or (at the end) the experiment."""

    accuracy: dict[Variant, float] = field(default_factory=dict)
    progress: dict[str, Any] | None = None
    finished: dict[str, Any] | None = None


def updates(client: Client, experiment_id: int) -> Iterator[Update]:
    """Updates until the experiment ends: from its event stream, or by polling if the stream
    cannot be had (a proxy that buffers it, an older server)."""
    try:
        yield from _from_events(client, experiment_id)
    except StreamBroken:
        yield from _by_polling(client, experiment_id)


def _from_events(client: Client, experiment_id: int) -> Iterator[Update]:
    for event in follow(client, f"/experiments/{experiment_id}/events"):
        if event.name == "point":
            point = event.data
            yield Update(accuracy={point["variant"]: point["val_accuracy"]})
        elif event.name == "progress":
            yield Update(progress=event.data)
        elif event.name == "status":
            yield Update(finished=event.data)


def _by_polling(client: Client, experiment_id: int) -> Iterator[Update]:
    while True:
        experiment = client.get(f"/experiments/{experiment_id}")
        series = client.get(f"/experiments/{experiment_id}/curve")["series"]
        latest = {
            variant: values["val_accuracy"][-1]
            for variant, values in series.items()
            if values["val_accuracy"]
        }
        yield Update(
            accuracy=latest, progress={**experiment["progress"], "status": experiment["status"]}
        )
        if experiment["status"] in TERMINAL:
            yield Update(finished=experiment)
            return
        time.sleep(POLL_SECONDS)


def watch(client: Client, experiment: dict[str, Any], console: Console) -> dict[str, Any]:
    """Show live progress bars until the experiment ends; returns it as finished."""
    total = experiment["progress"]["total"]
    bars = Progress(
        TextColumn("{task.description:>5}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TextColumn("val acc {task.fields[accuracy]}"),
        TextColumn("{task.fields[state]}"),
        console=console,
    )
    tasks = {
        variant: bars.add_task(variant, total=total, speed="", eta="-", accuracy="-", state="")
        for variant in VARIANTS
    }
    with bars:
        for update in updates(client, experiment["id"]):
            for variant, accuracy in update.accuracy.items():
                bars.update(tasks[variant], accuracy=percent(accuracy))
            if update.progress is not None:
                _show_progress(bars, tasks, update.progress)
            if update.finished is not None:
                _show_end(bars, tasks, update.finished)
                return update.finished
    raise ApiError(f"experiment {experiment['id']}: the server stopped sending progress")


def _show_progress(bars: Progress, tasks: dict[Variant, TaskID], progress: dict[str, Any]) -> None:
    rate = progress.get("steps_per_second")
    speed = f"{number(rate, 0)} steps/s" if rate else ""
    for task in tasks.values():
        bars.update(
            task,
            completed=progress["step"],
            speed=speed,
            eta=_duration(progress.get("eta_seconds")),
            state="" if progress["status"] == "running" else progress["status"],
        )


def _show_end(bars: Progress, tasks: dict[Variant, TaskID], experiment: dict[str, Any]) -> None:
    for variant, task in tasks.items():
        diverged = experiment["results"][variant]["diverged_at_step"]
        state = experiment["status"] if diverged is None else f"diverged at {diverged}"
        bars.update(task, completed=experiment["progress"]["step"], eta="-", state=state)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
