"""`bnlab experiment run | list | show | curve | cancel | fork`: paired experiments over HTTP."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markdown import Markdown
from rich.table import Table

from bnlab.client import DEFAULT_URL, Experiment, raise_unless_succeeded
from bnlab.commands.annotations import Name, Notes, Tags, annotated, show_name_and_tags
from bnlab.commands.bundles import show_origin
from bnlab.commands.common import (
    Json,
    Token,
    Url,
    connect,
    console,
    errors,
    number,
    percent,
    print_answer,
    print_json,
    reports_errors,
)
from bnlab.commands.watch import watch
from bnlab.vocabulary import (
    VARIANTS,
    Activation,
    ArchitectureKind,
    Dataset,
    Queue,
    SequenceOrder,
    Status,
    Variant,
)

app = typer.Typer(
    help="Run and inspect experiments: variants side by side (plain vs bn by default).",
    no_args_is_help=True,
)

# typer takes no list of a Literal, but a list of an Enum: the vocabulary's variants as one
# (made from the tuple, so mypy cannot list its members; nothing here needs them by name)
VariantChoice = StrEnum("VariantChoice", {variant: variant for variant in VARIANTS})  # type: ignore[misc]

ExperimentId = Annotated[
    int, typer.Argument(min=1, help="The experiment's id.", show_default=False)
]


def _widths(text: str | None) -> list[int] | None:
    """'100,100,100' as [100, 100, 100]; '' as [] (no conv layers)."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give whole numbers separated by commas") from None


@app.command()
@reports_errors
def run(
    activation: Annotated[
        Activation, typer.Option(help="The hidden layers' nonlinearity.")
    ] = "relu",
    learning_rate: Annotated[float, typer.Option(help="Plain SGD step size.")] = 0.01,
    bad_weights: Annotated[
        bool, typer.Option("--bad-weights", help="The study's bad initial weights (std 5.0).")
    ] = False,
    weight_std: Annotated[
        float | None, typer.Option(help="Any std for the initial weights instead.")
    ] = None,
    dataset: Annotated[Dataset, typer.Option(help="What the nets learn.")] = "mnist",
    training_batches: Annotated[
        int | None, typer.Option(help="Training steps (server default: 50,000).")
    ] = None,
    batches_per_sample: Annotated[
        int | None, typer.Option(help="Validation accuracy every N steps (default: 500).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Mini-batch size (default: 60).")] = None,
    hidden_layers: Annotated[
        str | None, typer.Option(help="Hidden widths, e.g. 100,100,100 (the default).")
    ] = None,
    conv_channels: Annotated[
        str | None, typer.Option(help="Conv layers before the MLP head, e.g. 8,16.")
    ] = None,
    net: Annotated[
        ArchitectureKind | None,
        typer.Option(help="mlp (the study's, the default) or rnn (an LSTM reading the image)."),
    ] = None,
    rnn_hidden: Annotated[int | None, typer.Option(help="An rnn's width (default: 100).")] = None,
    sequence: Annotated[
        SequenceOrder | None,
        typer.Option(help="An rnn reads rows (28 steps, the default) or pixels (784 steps)."),
    ] = None,
    variant: Annotated[
        list[VariantChoice] | None,
        typer.Option(help="A net to train; repeat for several (default: plain and bn)."),
    ] = None,
    groups: Annotated[
        int | None, typer.Option(help="group_norm's groups (default: the server's choice).")
    ] = None,
    validation_size: Annotated[
        int | None, typer.Option(help="Held-out training images (default: 5,000).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Initial weights and batch order.")] = None,
    device: Annotated[Queue, typer.Option(help="Which queue trains it.")] = "cpu",
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow it live to the end, then show the results.")
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Queue an experiment: its variants (plain and bn unless --variant), same initial weights,
    same batches.

    With --wait, follow it live and exit non-zero unless it succeeds.
    """
    spec: dict[str, Any] = {
        "activation": activation,
        "learning_rate": learning_rate,
        "use_bad_weights": bad_weights,
        "weight_std": weight_std,
        "dataset": dataset,
        "training_batches": training_batches,
        "batches_per_sample": batches_per_sample,
        "batch_size": batch_size,
        "hidden_layers": _widths(hidden_layers),
        "conv_channels": _widths(conv_channels),
        "net": net,
        "rnn_hidden": rnn_hidden,
        "sequence": sequence,
        "variants": variant and [choice.value for choice in variant],
        "groups": groups,
        "validation_size": validation_size,
        "seed": seed,
        "device": device,
    }
    # Options left out take the server's defaults (the study's).
    spec = {key: value for key, value in spec.items() if value is not None}
    with connect(url, token) as client:
        experiment = client.run(**spec)
        if not wait:
            _say_queued(experiment.info, json)
            return
        if json:
            finished = _wait_quietly(experiment)
            print_json(finished)
        else:
            console.print(
                f"experiment {experiment.id} queued; following it (Ctrl-C stops "
                "following, not the experiment)"
            )
            _say_notice(experiment.info)
            finished = watch(experiment, console)
            _show_results(finished)
    raise_unless_succeeded(finished)


def _say_queued(experiment: dict[str, Any], json: bool) -> None:
    if json:
        print_json(experiment)
        return
    console.print(f"experiment {experiment['id']} queued")
    _say_notice(experiment)


def _say_notice(experiment: dict[str, Any]) -> None:
    """What it waits on (no worker for its queue, say): on stderr, so stdout stays the answer."""
    if experiment.get("notice"):
        errors.print(f"note: {experiment['notice']}", markup=False)


def _wait_quietly(experiment: Experiment) -> dict[str, Any]:
    for update in experiment.updates():
        if update.finished is not None:
            return update.finished
    raise AssertionError("unreachable: updates() ends with the finished experiment")


@app.command("list")
@reports_errors
def list_experiments(
    status: Annotated[Status | None, typer.Option(help="Only those with this status.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Only those with this tag; repeat for all of several.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many.")] = 50,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Experiments, newest first."""
    query = {"status": status, "tag": tag, "limit": limit}
    print_answer(
        url, token, json, ask=lambda client: client.get("/experiments", **query), show=_show_page
    )


def _show_page(page: dict[str, Any]) -> None:
    table = Table(
        "id", "name", "status", "activation", "lr", "init", "steps", "plain test", "bn test"
    )
    for experiment in page["items"]:
        spec, progress, results = experiment["spec"], experiment["progress"], experiment["results"]
        table.add_row(
            str(experiment["id"]),
            experiment["name"] or "",
            experiment["status"],
            str(spec.get("activation", "?")),
            str(spec.get("learning_rate", "?")),
            _init(spec),
            f"{progress['step']}/{progress['total']}",
            # An experiment may train other variants than the pair.
            percent(results.get("plain", {}).get("test_accuracy")),
            percent(results.get("bn", {}).get("test_accuracy")),
        )
    console.print(table)
    console.print(f"{len(page['items'])} of {page['total']}")


def _init(spec: dict[str, Any]) -> str:
    if spec.get("weight_std") is not None:
        return f"std {spec['weight_std']}"
    return "bad" if spec.get("use_bad_weights") else "good"


@app.command()
@reports_errors
def show(
    experiment_id: ExperimentId, url: Url = DEFAULT_URL, token: Token = None, json: Json = False
) -> None:
    """An experiment's spec, progress and results."""
    print_answer(
        url,
        token,
        json,
        ask=lambda client: client.get(f"/experiments/{experiment_id}"),
        show=_show_experiment,
    )


def _show_experiment(experiment: dict[str, Any]) -> None:
    spec, progress = experiment["spec"], experiment["progress"]
    console.print(
        f"experiment {experiment['id']}: [bold]{experiment['status']}[/bold]  "
        f"{spec.get('dataset')}, {spec.get('activation')}, lr {spec.get('learning_rate')}, "
        f"{_init(spec)} initial weights, step {progress['step']}/{progress['total']}"
    )
    show_name_and_tags(experiment)
    if experiment.get("error"):
        console.print(f"error: {experiment['error']}", markup=False)
    if experiment.get("notice"):
        console.print(f"note: {experiment['notice']}", markup=False)
    _show_lineage(experiment)
    show_origin(experiment)
    _show_results(experiment, titled=False)
    if experiment["notes"]:
        console.print(Markdown(experiment["notes"]))


@app.command()
@reports_errors
def annotate(
    experiment_id: ExperimentId,
    name: Name = None,
    notes: Notes = None,
    tag: Tags = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Give an experiment a name, notes or tags; what is not given stays as it is."""
    print_answer(
        url,
        token,
        json,
        ask=lambda client: annotated(client.experiment(experiment_id), name, notes, tag),
        show=_show_experiment,
    )


def _show_results(experiment: dict[str, Any], titled: bool = True) -> None:
    title = f"experiment {experiment['id']}: {experiment['status']}" if titled else None
    table = Table(
        "variant",
        "final val acc",
        "test acc",
        "test acc, batch stats",
        "steps to 90%",
        "steps to 95%",
        "diverged at",
        title=title,
    )
    for variant, results in experiment["results"].items():
        table.add_row(
            variant,
            percent(results["final_val_accuracy"]),
            percent(results["test_accuracy"]),
            percent(results["test_accuracy_batch_stats"]),
            number(results["steps_to_90"]),
            number(results["steps_to_95"]),
            number(results["diverged_at_step"]),
        )
    console.print(table)


@app.command()
@reports_errors
def curve(
    experiment_id: ExperimentId,
    png: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Also save the plotted curve to FILE.")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Validation accuracy (and training loss) of every variant per sample point."""
    with connect(url, token) as client:
        experiment = client.experiment(experiment_id)
        series = experiment.series()
        if png is not None:
            png.write_bytes(experiment.curve_png())
    if json:
        print_json({"series": series})
    else:
        _show_curve(series)
    if png is not None:
        errors.print(f"wrote {png}", markup=False)


def _show_curve(series: dict[Variant, dict[str, list[Any]]]) -> None:
    """A row per sample point: each trained variant's validation accuracy, then its loss."""
    variants = list(series)
    table = Table("step", *(f"{v} val acc" for v in variants), *(f"{v} loss" for v in variants))
    # step -> (validation accuracy, training loss), per variant
    columns = {
        variant: {
            step: (accuracy, loss)
            for step, accuracy, loss in zip(
                values["step"], values["val_accuracy"], values["train_loss"], strict=True
            )
        }
        for variant, values in series.items()
    }
    steps = sorted({step for values in columns.values() for step in values})
    for step in steps:
        points = [columns[variant].get(step, (None, None)) for variant in variants]
        table.add_row(
            str(step),
            *(percent(accuracy) for accuracy, _ in points),
            *(number(loss, 3) for _, loss in points),
        )
    console.print(table)


@app.command()
@reports_errors
def cancel(
    experiment_id: ExperimentId, url: Url = DEFAULT_URL, token: Token = None, json: Json = False
) -> None:
    """Cancel a queued experiment, or stop a running one at its next sample point."""
    print_answer(
        url,
        token,
        json,
        ask=lambda client: client.post(f"/experiments/{experiment_id}/cancel"),
        show=_say_cancelled,
    )


def _say_cancelled(experiment: dict[str, Any]) -> None:
    if experiment["status"] == "cancelled":
        console.print(f"experiment {experiment['id']} cancelled")
    else:
        console.print(f"experiment {experiment['id']} stops at its next sample point")


@app.command()
@reports_errors
def fork(
    experiment_id: ExperimentId,
    step: Annotated[
        int,
        typer.Option(min=0, help="A sample point it kept its training state at (see `show`)."),
    ],
    changes: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="FIELD=VALUE, a change; repeat for several. Fields: learning_rate, "
            "training_batches, batches_per_sample, keep_states_every, device, variants "
            "(comma-separated, e.g. plain,bn,layer_norm).",
        ),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Continue an experiment from one of its sample points, with changes: a new experiment,
    queued, whose curve starts there."""
    parsed = dict(_change(text) for text in changes or [])
    print_answer(
        url,
        token,
        json,
        ask=lambda client: client.experiment(experiment_id).fork(step, **parsed).info,
        show=_say_forked,
    )


def _change(text: str) -> tuple[str, Any]:
    """'learning_rate=0.5' as ("learning_rate", 0.5): a number where it reads as one, a list
    for variants, else the text (the server says what is wrong with it)."""
    field, equals, value = text.partition("=")
    if not equals or not field.strip():
        raise typer.BadParameter(f"{text!r}: give FIELD=VALUE, e.g. learning_rate=0.5")
    field = field.strip()
    if field == "variants":
        return field, [part.strip() for part in value.split(",") if part.strip()]
    for kind in (int, float):
        try:
            return field, kind(value)
        except ValueError:
            pass
    return field, value


def _say_forked(experiment: dict[str, Any]) -> None:
    console.print(f"experiment {experiment['id']} queued", markup=False)
    _show_lineage(experiment)
    _say_notice(experiment)


def _show_lineage(experiment: dict[str, Any]) -> None:
    """Where a fork comes from and what it changed; the forks made from it; where it can be
    forked from."""
    parent = experiment.get("parent")
    if parent:
        changes = "; ".join(
            f"{field} {change['parent']} -> {change['fork']}"
            for field, change in parent["changes"].items()
        )
        origin = f"#{parent['id']}" if parent["id"] is not None else "a deleted experiment"
        console.print(
            f"forked from {origin} at step {parent['step']}: {changes or 'no changes'}",
            markup=False,
        )
    if experiment.get("forks"):
        console.print(f"forks: {', '.join(f'#{i}' for i in experiment['forks'])}", markup=False)
    if experiment.get("kept_steps"):
        steps = ", ".join(map(str, experiment["kept_steps"]))
        console.print(f"can be forked at steps: {steps}", markup=False)
