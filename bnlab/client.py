"""The Python client of the bnlab API, and the one HTTP layer of the `bnlab` CLI.

    from bnlab import Client

    client = Client()                           # BNLAB_URL and BNLAB_API_TOKEN, or the embedded one
    experiment = client.run(activation="relu", learning_rate=1, training_batches=2000)
    experiment.wait()                           # a live bar; raises if it failed or was cancelled
    experiment.plot()                           # plain vs bn validation accuracy, current axes
    experiment.predict(image, mode="batch")     # numpy arrays, PIL images or file paths

It talks to the API only over HTTP (httpx) and imports nothing of the service, so it works
against any bnlab server and imports fast: numpy, PIL, pandas, matplotlib and tqdm are imported
only by the methods that need them, and only pandas-returning methods fall back without it.
"""

import io
import json
import mimetypes
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx

from bnlab.vocabulary import TERMINAL, VARIANTS, Mode, Preset, Status, Variant

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DEFAULT_URL = "http://127.0.0.1:8000"
# The server pings an idle event stream every 15 s; a read that waits this long is a dead link.
STREAM_READ_TIMEOUT = 45.0
POLL_SECONDS = 1.0
IMAGE_FIELD = "image"
IMAGE_SIDE = 28


class ApiError(Exception):
    """Something went wrong talking to the API; the message is one line for a person (the
    server's own words for a 4xx)."""


class Unreachable(ApiError):
    """The server is down, unreachable, or did not answer in time."""


class StreamBroken(ApiError):
    """An event stream's connection failed; reconnecting may help."""


class ExperimentFailed(ApiError):
    """An experiment waited on ended failed; `experiment` is it as the server returned it."""

    def __init__(self, message: str, experiment: dict[str, Any]):
        super().__init__(message)
        self.experiment = experiment


class ExperimentCancelled(ExperimentFailed):
    """An experiment waited on was cancelled."""


class SweepFailed(ApiError):
    """A sweep waited on ended with cells that did not succeed; `sweep` is it as it ended."""

    def __init__(self, message: str, sweep: dict[str, Any]):
        super().__init__(message)
        self.sweep = sweep


@dataclass(frozen=True)
class Event:
    """One server-sent event: its name (`point`, `progress`, `status`, ...), id and JSON data."""

    name: str
    id: str | None
    data: Any


@dataclass
class Update:
    """What changed: a variant's latest point, the progress, or (at the end) the experiment."""

    accuracy: dict[Variant, float] = field(default_factory=dict)
    progress: dict[str, Any] | None = None
    finished: dict[str, Any] | None = None


class Client:
    """A connection to a bnlab API.

    `url` defaults to BNLAB_URL, else the embedded service (http://127.0.0.1:8000); `token` to
    BNLAB_API_TOKEN, sent as the bearer token. Usable as a context manager (closes the
    connection pool). Every method raises ApiError with the server's message when it says no,
    and Unreachable when it cannot be reached.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30):
        self.url = (url or os.environ.get("BNLAB_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("BNLAB_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        self.http.close()

    # The study, as objects.

    def run(self, **spec: Any) -> "Experiment":
        """Queue an experiment: the spec's fields as keyword arguments (`activation`,
        `learning_rate`, `use_bad_weights`, `training_batches`, ...; see the server's /docs),
        every one left out taking the study's default."""
        return Experiment(self, self.post("/experiments", spec))

    def experiment(self, experiment_id: int) -> "Experiment":
        """An experiment already on the server."""
        return Experiment(self, self.get(f"/experiments/{experiment_id}"))

    def experiments(
        self, status: Status | None = None, tag: str | list[str] | None = None, limit: int = 50
    ) -> list["Experiment"]:
        """Experiments, newest first; only those with `status`, and with `tag` (all of them,
        given a list), if given."""
        page = self.get("/experiments", status=status, tag=tag, limit=limit)
        return [Experiment(self, item) for item in page["items"]]

    def sweep(
        self,
        preset: Preset | None = None,
        grid: dict[str, list[Any]] | None = None,
        base: dict[str, Any] | None = None,
        **options: Any,
    ) -> "Sweep":
        """Queue a grid of experiments: `preset="classic"` (the study's 15 cells) or `"why"`
        (5 cells with every probe on, plain/bn/bn_noisy) and/or a
        `grid` of field -> values (every combination a cell), `base` fields shared by every
        cell; `options` are the sweep's other fields (e.g. `stack=False`)."""
        body: dict[str, Any] = {"grid": grid or {}, "base": base or {}, **options}
        if preset is not None:
            body["preset"] = preset
        return Sweep(self, self.post("/sweeps", body))

    def existing_sweep(self, sweep_id: int) -> "Sweep":
        """A sweep already on the server."""
        return Sweep(self, self.get(f"/sweeps/{sweep_id}"))

    def sweeps(self, tag: str | list[str] | None = None, limit: int = 50) -> list["Sweep"]:
        """Sweeps, newest first; only those with `tag` (all of them, given a list), if given."""
        page = self.get("/sweeps", tag=tag, limit=limit)
        return [self.existing_sweep(item["id"]) for item in page["items"]]

    def compare(self, experiment_ids: Sequence[int]) -> "Comparison":
        """Several experiments side by side (2 to 8): every net's curve and results, labelled
        by the spec fields that differ between them."""
        ids = ",".join(str(experiment_id) for experiment_id in experiment_ids)
        return Comparison(self, ids, self.get("/compare", experiments=ids))

    def import_bundle(self, bundle: "str | os.PathLike[str] | bytes") -> "Experiment":
        """Take in a bundle (`Experiment.bundle`, of this server or another) as a new
        experiment: a file's path, or its bytes."""
        if isinstance(bundle, bytes):
            name, data = "bundle.zip", bundle
        else:
            name, data = Path(bundle).name, Path(bundle).read_bytes()
        files = {"bundle": (name, data, "application/zip")}
        return Experiment(self, self.request("POST", "/experiments/import", files=files).json())

    # HTTP, for the methods above and the CLI.

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response to a request; ApiError for anything but a 2xx."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise Unreachable(self._unreachable(error)) from None
        if response.is_error:
            raise ApiError(describe(response))
        return response

    def get(self, path: str, **params: Any) -> Any:
        query = {key: value for key, value in params.items() if value is not None}
        return self.request("GET", path, params=query).json()

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs).json()

    def events(self, path: str, last_event_id: str | None = None) -> Iterator[Event]:
        """The events of one connection to an event stream, until the server ends it."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        timeout = httpx.Timeout(self.http.timeout.connect, read=STREAM_READ_TIMEOUT)
        try:
            with self.http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    # A server error may pass (a restart); a 4xx will not.
                    broken = StreamBroken if response.is_server_error else ApiError
                    raise broken(describe(response))
                yield from parse_events(response.iter_lines())
        except httpx.TransportError as error:
            raise StreamBroken(self._unreachable(error)) from None

    def _unreachable(self, error: httpx.TransportError) -> str:
        if isinstance(error, httpx.TimeoutException):
            return f"the bnlab API at {self.url} did not answer in time ({type(error).__name__})"
        cause = str(error) or type(error).__name__
        return (
            f"cannot reach the bnlab API at {self.url} ({cause}): is it running (`bnlab up`)? "
            "Choose another server with BNLAB_URL (or --url, Client(url=...))"
        )


class Unchanged:
    """The default of `update(name=...)`, where None means "no name"."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = Unchanged()


class Handle:
    """What an experiment and a sweep handle share: `info`, the thing as the server last
    returned it; `status`, asked again until it has ended; cancel."""

    collection: str  # its URL's first part: "experiments" or "sweeps"

    def __init__(self, client: Client, info: dict[str, Any]):
        self.client = client
        self.info = info
        self.id: int = info["id"]
        self.path = f"/{self.collection}/{self.id}"

    def refresh(self) -> dict[str, Any]:
        """It as the server has it now (also kept in `info`)."""
        self.info = self.client.get(self.path)
        return self.info

    def _current(self) -> dict[str, Any]:
        # Once ended it never changes again: no need to ask.
        return self.info if self.info["status"] in TERMINAL else self.refresh()

    @property
    def status(self) -> Status:
        status: Status = self._current()["status"]
        return status

    def cancel(self) -> Self:
        """Cancel it if queued; what is running stops at its next sample point."""
        self.info = self.client.post(f"{self.path}/cancel")
        return self

    @property
    def name(self) -> str | None:
        name: str | None = self.info.get("name")
        return name

    @property
    def notes(self) -> str:
        """A person's notes on it, in markdown."""
        notes: str = self.info.get("notes") or ""
        return notes

    @property
    def tags(self) -> list[str]:
        tags: list[str] = self.info.get("tags") or []
        return tags

    def update(
        self,
        *,
        name: str | Unchanged | None = UNCHANGED,
        notes: str | None = None,
        tags: list[str] | None = None,
    ) -> Self:
        """Give it a name (None removes it), markdown notes or tags (the whole new list); what
        is left out stays as it is."""
        body: dict[str, Any] = {"notes": notes, "tags": tags}
        body = {key: value for key, value in body.items() if value is not None}
        if not isinstance(name, Unchanged):
            body["name"] = name
        self.info = self.client.request("PATCH", self.path, json=body).json()
        return self


class Experiment(Handle):
    """A handle on one experiment: its nets (plain and bn unless its spec names other
    variants), trained side by side from the same initial weights on the same batches."""

    collection = "experiments"

    def __repr__(self) -> str:
        return f"<Experiment {self.id}: {self.info['status']}>"

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.info["spec"]
        return spec

    @property
    def results(self) -> dict[Variant, dict[str, Any]]:
        """Per variant: final_val_accuracy, test_accuracy, test_accuracy_batch_stats,
        steps_to_90, steps_to_95, diverged_at_step (None until known)."""
        results: dict[Variant, dict[str, Any]] = self._current()["results"]
        return results

    def fork(self, step: int, **changes: Any) -> "Experiment":
        """A new experiment continuing this one from sample point `step` (one of
        `kept_steps`), with `changes` to any of learning_rate, training_batches,
        batches_per_sample, keep_states_every, device and variants; queued."""
        body = {"step": step, "changes": changes}
        return Experiment(self.client, self.client.post(f"{self.path}/fork", body))

    @property
    def parent(self) -> dict[str, Any] | None:
        """For a fork: its parent's `id`, the `step` it starts from and its `changes`
        ({field: {"parent": value, "fork": value}}); None for an experiment that is no fork."""
        parent: dict[str, Any] | None = self.info.get("parent")
        return parent

    @property
    def forks(self) -> list["Experiment"]:
        """The experiments forked from it, oldest first."""
        ids: list[int] = self.refresh().get("forks") or []
        return [self.client.experiment(fork_id) for fork_id in ids]

    @property
    def kept_steps(self) -> list[int]:
        """The sample points it kept its training state at: where it can be forked from."""
        steps: list[int] = self.refresh().get("kept_steps") or []
        return steps

    def wait(self, progress: bool = True) -> "Experiment":
        """Follow it to its end (a progress bar with `progress` and tqdm installed); raises
        ExperimentFailed or ExperimentCancelled, with the server's reason, unless it succeeded."""
        bar = ProgressBar(self.info["progress"]["total"], f"experiment {self.id}", progress)
        accuracy: dict[str, str] = {}
        try:
            for update in self.updates():
                accuracy.update({v: f"{a:.1%}" for v, a in update.accuracy.items()})
                if update.progress is not None:
                    bar.show(update.progress["step"], accuracy)
                if update.finished is not None:
                    self.info = update.finished
                    bar.show(self.info["progress"]["step"], accuracy)
        finally:
            bar.close()
        raise_unless_succeeded(self.info)
        return self

    def updates(self) -> Iterator[Update]:
        """Updates until it ends, the last one `finished`: from its event stream, or by polling
        if the stream cannot be had (a proxy that buffers it, an older server)."""
        try:
            yield from self._updates_from_events()
        except StreamBroken:
            yield from self._updates_by_polling()

    def _updates_from_events(self) -> Iterator[Update]:
        for event in follow(self.client, f"{self.path}/events"):
            if event.name == "point":
                yield Update(accuracy={event.data["variant"]: event.data["val_accuracy"]})
            elif event.name == "progress":
                yield Update(progress=event.data)
            elif event.name == "status":
                yield Update(finished=event.data)

    def _updates_by_polling(self) -> Iterator[Update]:
        while True:
            experiment = self.refresh()
            latest = {
                variant: values["val_accuracy"][-1]
                for variant, values in self.series().items()
                if values["val_accuracy"]
            }
            status = experiment["status"]
            yield Update(accuracy=latest, progress={**experiment["progress"], "status": status})
            if status in TERMINAL:
                yield Update(finished=experiment)
                return
            time.sleep(POLL_SECONDS)

    def series(self) -> dict[Variant, dict[str, list[Any]]]:
        """The curve as the server sends it: per variant, lists `step`, `val_accuracy` and
        `train_loss`."""
        series: dict[Variant, dict[str, list[Any]]] = self.client.get(f"{self.path}/curve")[
            "series"
        ]
        return series

    def curve(self) -> Any:
        """The curve, a row per variant and sample point: columns step, variant, val_accuracy,
        train_loss. A pandas DataFrame where pandas is installed, else a dict of those columns
        as lists."""
        columns: dict[str, list[Any]] = {
            "step": [],
            "variant": [],
            "val_accuracy": [],
            "train_loss": [],
        }
        for variant, values in self.series().items():
            columns["step"] += values["step"]
            columns["variant"] += [variant] * len(values["step"])
            columns["val_accuracy"] += values["val_accuracy"]
            columns["train_loss"] += values["train_loss"]
        return _frame(columns)

    def curve_png(self) -> bytes:
        """The curve as the server plots it (PNG)."""
        return self.client.request("GET", f"{self.path}/curve.png").content

    def plot(self, ax: "Axes | None" = None) -> "Axes":
        """Validation accuracy against training step, a line per net (plain and bn), on `ax`
        (default: the current matplotlib axes); returns the axes."""
        import matplotlib.pyplot as plt

        ax = ax if ax is not None else plt.gca()
        for variant, values in self.series().items():
            ax.plot(values["step"], values["val_accuracy"], label=variant)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation accuracy")
        ax.set_title(_describe_spec(self.spec))
        ax.legend()
        return ax

    def checkpoint(
        self, variant: Variant = "bn", path: str | os.PathLike[str] | None = None
    ) -> bytes | Path:
        """The variant's latest checkpoint (safetensors): its bytes, or written to `path`
        (then the path is returned)."""
        return _kept(self.client.request("GET", f"{self.path}/checkpoints/{variant}"), path)

    def bundle(self, path: str | os.PathLike[str] | None = None) -> bytes | Path:
        """Everything to reproduce it or take it into another bnlab, in one zip (once it has
        ended): its bytes, or written to `path` (then the path is returned)."""
        return _kept(self.client.request("GET", f"{self.path}/bundle"), path)

    @property
    def provenance(self) -> dict[str, Any] | None:
        """What trained it: bnlab, python, torch and cuda versions, device, cpu, bn_impl,
        dataset (name, sha256 of its files), seed; None before a worker took it."""
        provenance: dict[str, Any] | None = self._current().get("provenance")
        return provenance

    def predict(
        self,
        images: Any,
        variant: Variant = "bn",
        mode: Mode = "population",
        version: int | None = None,
    ) -> Any:
        """The net's answer (`prediction`, `probabilities`, `mode`, `mode_applies`) for one
        image, or a list of answers for a batch. `images`: a numpy array (28x28 or 784 values
        in [0, 1], or 0-255 integers; a batch of either), a PIL image, a file path (PNG or
        JPEG), or a list of images or paths. mode="batch" normalizes with the statistics of
        the batch sent."""
        query = {"experiment_id": self.id, "variant": variant, "mode": mode, "version": version}
        params = {key: value for key, value in query.items() if value is not None}
        return self.client.request("POST", "/predict", params=params, **_image_body(images)).json()

    def collapse(self, n: int = 200) -> dict[str, Any]:
        """The study's check on the first `n` test images, one at a time, with population and
        with batch statistics (the latter all one class), and the whole test set in batches."""
        collapse: dict[str, Any] = self.client.post(f"{self.path}/collapse", params={"n": n})
        return collapse


class Sweep(Handle):
    """A handle on one sweep: a grid of experiments (its cells), and its report."""

    collection = "sweeps"

    def __repr__(self) -> str:
        return f"<Sweep {self.id}: {self.info['status']}, {len(self.info['cells'])} cells>"

    @property
    def experiments(self) -> list[Experiment]:
        """Its cells, as experiments."""
        return [self.client.experiment(cell["id"]) for cell in self.info["cells"]]

    def wait(self, progress: bool = True) -> "Sweep":
        """Follow it to its end (a bar of finished cells); raises SweepFailed, naming the cells
        that did not succeed and why, unless every cell succeeded."""
        bar = ProgressBar(len(self.info["cells"]), f"sweep {self.id}", progress, unit="cell")
        try:
            for cells in self.cell_states():
                bar.show(sum(cell["status"] in TERMINAL for cell in cells.values()))
        finally:
            bar.close()
        self.refresh()
        unsuccessful = [cell for cell in self.info["cells"] if cell["status"] != "succeeded"]
        if unsuccessful:
            what = "; ".join(_cell_outcome(cell) for cell in unsuccessful)
            raise SweepFailed(f"sweep {self.id} {self.info['status']}: {what}", self.info)
        return self

    def cell_states(self) -> Iterator[dict[int, dict[str, Any]]]:
        """Each cell's latest state (by id) after every change, until all have ended: from the
        sweep's event stream, or by polling where the stream cannot be had."""
        state: dict[int, dict[str, Any]] = {}
        try:
            for event in follow(self.client, f"{self.path}/events"):
                if event.name == "cell":
                    state[event.data["id"]] = event.data
                    yield state
            return
        except StreamBroken:
            pass
        while True:
            sweep = self.refresh()
            yield {cell["id"]: cell for cell in sweep["cells"]}
            if sweep["status"] in TERMINAL:
                return
            time.sleep(POLL_SECONDS)

    def report(self, tolerance: float | None = None) -> Any:
        """The study's table, a row per cell (or per cell over its seeds): the varying fields'
        values, then `plain_*` and `bn_*` (final_val_accuracy, test_accuracy, steps_to_90, ...),
        `verdict` and `speedup_90`. A DataFrame where pandas is installed, else a list of dicts.
        While cells run it holds what is done."""
        rows = self.report_json(tolerance)["rows"]
        return _frame([_flat_row(row) for row in rows])

    def report_json(self, tolerance: float | None = None) -> dict[str, Any]:
        """The report as the server sends it (`complete`, `columns`, `rows`, ...)."""
        report: dict[str, Any] = self.client.get(f"{self.path}/report", tolerance=tolerance)
        return report

    def report_text(self, format: str = "md") -> str:
        """The report as Markdown (`md`) or CSV (`csv`)."""
        return self.client.request("GET", f"{self.path}/report", params={"format": format}).text

    def plot(self, columns: int = 3) -> "Figure":
        """A small curve plot per cell, in the current matplotlib figure; returns the figure."""
        import matplotlib.pyplot as plt

        cells = self.experiments
        rows = -(-len(cells) // columns)
        figure = plt.gcf()
        figure.set_size_inches(4 * min(columns, len(cells)), 3 * rows)
        axes = list(figure.subplots(rows, min(columns, len(cells)), squeeze=False).flat)
        for ax, cell in zip(axes, cells, strict=False):
            cell.plot(ax)
        for ax in axes[len(cells) :]:
            ax.set_visible(False)  # the grid's unused panels
        figure.tight_layout()
        return figure


class Comparison:
    """Experiments side by side, as GET /compare answers: `info` holds `differing` (the spec
    fields that differ), `experiments` (each with its curves) and `legend`."""

    def __init__(self, client: Client, ids: str, info: dict[str, Any]):
        self.client = client
        self.ids = ids
        self.info = info

    def __repr__(self) -> str:
        return f"<Comparison of experiments {self.ids}: {', '.join(self.info['differing'])}>"

    def table(self) -> Any:
        """A row per net: experiment_id, variant, label, then its results. A DataFrame where
        pandas is installed, else a list of dicts."""
        return _frame(self.info["table"])

    def plot(self, ax: "Axes | None" = None) -> "Axes":
        """Every net's validation accuracy on `ax` (default: the current axes), labelled as the
        server's legend labels them; returns the axes."""
        import matplotlib.pyplot as plt

        ax = ax if ax is not None else plt.gca()
        labels = {
            (net["experiment_id"], net["variant"]): net["label"] for net in self.info["legend"]
        }
        for experiment in self.info["experiments"]:
            for variant, values in experiment["series"].items():
                label = labels[experiment["id"], variant]
                ax.plot(values["step"], values["val_accuracy"], label=label)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation accuracy")
        ax.legend()
        return ax

    def png(self) -> bytes:
        """The comparison as the server plots it (PNG)."""
        return self.client.request("GET", "/compare.png", params={"experiments": self.ids}).content


class ProgressBar:
    """A tqdm.auto bar (a widget in Jupyter, text in a terminal); nothing where tqdm is not
    installed or `show` is false."""

    def __init__(self, total: int, description: str, show: bool, unit: str = "step"):
        self._bar: Any = None
        if show:
            try:
                from tqdm.auto import tqdm  # type: ignore[import-untyped]
            except ImportError:
                return
            self._bar = tqdm(total=total, desc=description, unit=unit)

    def show(self, done: int, fields: dict[str, str] | None = None) -> None:
        if self._bar is None:
            return
        if fields:
            self._bar.set_postfix(fields, refresh=False)
        # update(), not a refresh per event: tqdm redraws at most every `mininterval` seconds.
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _kept(response: httpx.Response, path: str | os.PathLike[str] | None) -> bytes | Path:
    """A download's bytes, or written to `path` (then the path)."""
    if path is None:
        return response.content
    target = Path(path)
    target.write_bytes(response.content)
    return target


def raise_unless_succeeded(experiment: dict[str, Any]) -> None:
    """ExperimentFailed (or ExperimentCancelled) with the server's reason, unless it
    succeeded."""
    status = experiment["status"]
    if status == "succeeded":
        return
    reason = f": {experiment['error']}" if experiment.get("error") else ""
    kind = ExperimentCancelled if status == "cancelled" else ExperimentFailed
    raise kind(f"experiment {experiment['id']} {status}{reason}", experiment)


def _cell_outcome(cell: dict[str, Any]) -> str:
    reason = f" ({cell['error']})" if cell.get("error") else ""
    return f"experiment {cell['id']} {cell['status']}{reason}"


def _describe_spec(spec: dict[str, Any]) -> str:
    weights = "bad" if spec.get("use_bad_weights") else "good"
    if spec.get("weight_std") is not None:
        weights = f"std {spec['weight_std']}"
    return f"{spec.get('activation')}, lr {spec.get('learning_rate')}, {weights} weights"


def _flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """A report row with its values first, then each variant's summary and its comparison with
    the row's reference variant as `<variant>_<name>`, then the rest (verdict, speedup_90, ...)."""
    flat = dict(row["values"])
    for by_variant in (row["variants"], row["comparisons"]):
        for variant, numbers in by_variant.items():
            flat.update({f"{variant}_{name}": value for name, value in numbers.items()})
    nested = {"values", "variants", "comparisons", *VARIANTS}
    flat.update({name: value for name, value in row.items() if name not in nested})
    return flat


def _frame(data: Any) -> Any:
    """`data` (columns or rows) as a pandas DataFrame, or as it is without pandas."""
    try:
        import pandas  # type: ignore[import-untyped]
    except ImportError:
        return data
    return pandas.DataFrame(data)


def _image_body(images: Any) -> dict[str, Any]:
    """The /predict request body for `images`: files as multipart uploads, arrays as JSON
    pixels (a single image flat, a batch as a list of flat images, so the shape is plain)."""
    many = isinstance(images, (list, tuple))
    if all(_is_file_like(image) for image in (images if many else [images])):
        files = [(IMAGE_FIELD, _upload(image)) for image in (images if many else [images])]
        return {"files": files}
    return {"json": {"pixels": _pixels(images)}}


def _is_file_like(image: Any) -> bool:
    return isinstance(image, (str, os.PathLike)) or _is_pil_image(image)


def _is_pil_image(image: Any) -> bool:
    # Without PIL imported, nothing can be a PIL image: no need to import it to ask.
    if "PIL.Image" not in sys.modules:
        return False
    from PIL import Image

    return isinstance(image, Image.Image)


def _upload(image: Any) -> tuple[str, bytes, str]:
    if _is_pil_image(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "image.png", buffer.getvalue(), "image/png"
    path = Path(image)
    return path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "image/png"


def _pixels(images: Any) -> list[Any]:
    import numpy as np

    array = np.asarray(images)
    if np.issubdtype(array.dtype, np.integer):
        array = array / 255.0  # 8-bit grey levels, as images store them
    size = IMAGE_SIDE * IMAGE_SIDE
    shape = array.shape
    if shape in ((size,), (IMAGE_SIDE, IMAGE_SIDE)):
        flat: list[Any] = array.reshape(size).astype(float).tolist()
        return flat
    if len(shape) in (2, 3) and shape[1:] in ((size,), (IMAGE_SIDE, IMAGE_SIDE)):
        batch: list[Any] = array.reshape(shape[0], size).astype(float).tolist()
        return batch
    raise ValueError(
        f"images of shape {shape}: give 28x28 or 784 pixels, or a batch of either "
        "(n x 28 x 28, n x 784), a PIL image or a file path"
    )


def describe(response: httpx.Response) -> str:
    """An error response as one line: the server's `detail` where it gave one."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # a validation error: where and what, per problem
        detail = "; ".join(_validation_problem(problem) for problem in detail)
    if not detail:
        detail = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    text = f"{detail}" if detail else f"the server answered {response.status_code}"
    if response.status_code == 401:
        text += " (set BNLAB_API_TOKEN, --token or Client(token=...))"
    return text


def _validation_problem(problem: Any) -> str:
    if not isinstance(problem, dict):
        return str(problem)
    where = [str(part) for part in problem.get("loc", []) if part not in ("body", "query")]
    message = problem.get("msg", "invalid")
    return f"{'.'.join(where)}: {message}" if where else message


def parse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Server-sent events from the lines of a text/event-stream (comments skipped)."""
    name, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Event(name, event_id, _json_or_text("\n".join(data)))
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field_name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field_name == "event":
            name = value
        elif field_name == "data":
            data.append(value)
        elif field_name == "id":
            event_id = value


def _json_or_text(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


def follow(
    client: Client, path: str, final: str = "status", retries: int = 5, pause: float = 1.0
) -> Iterator[Event]:
    """The events of a stream to its `final` event, reconnecting with Last-Event-ID when the
    connection breaks, so nothing is missed; StreamBroken after `retries` failures in a row."""
    last_event_id: str | None = None
    failures = 0
    while True:
        try:
            for event in client.events(path, last_event_id):
                failures = 0
                if event.id is not None:
                    last_event_id = event.id
                yield event
                if event.name == final:
                    return
            error = StreamBroken(f"the event stream {path} ended before its {final} event")
        except StreamBroken as broken:
            error = broken
        failures += 1
        if failures > retries:
            raise error
        time.sleep(pause)


__all__ = [
    "ApiError",
    "Client",
    "Comparison",
    "Experiment",
    "ExperimentCancelled",
    "ExperimentFailed",
    "Sweep",
    "SweepFailed",
    "Unreachable",
]
