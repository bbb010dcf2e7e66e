"""Following a running experiment in a terminal: its updates (`Experiment.updates`), shown as
one live progress bar per variant with steps per second, ETA and the latest validation accuracy.
"""

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from bnlab.client import ApiError, Experiment
from bnlab.commands.common import number, percent
from bnlab.vocabulary import Variant


def watch(experiment: Experiment, console: Console) -> dict[str, Any]:
    """Show live progress bars until the experiment ends; returns it as finished."""
    total = experiment.info["progress"]["total"]
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
        for variant in experiment.info["results"]  # the variants it trains
    }
    with bars:
        for update in experiment.updates():
            for variant, accuracy in update.accuracy.items():
                bars.update(tasks[variant], accuracy=percent(accuracy))
            if update.progress is not None:
                _show_progress(bars, tasks, update.progress)
            if update.finished is not None:
                _show_end(bars, tasks, update.finished)
                return update.finished
    raise ApiError(f"experiment {experiment.id}: the server stopped sending progress")


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
