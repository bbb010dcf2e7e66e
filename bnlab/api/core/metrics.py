"""GET /metrics, in the Prometheus text format: HTTP requests and latencies per route,
/predict latency per mode, checkpoint-cache hits and misses, and, read from SQL when scraped,
experiments by status, queued jobs per queue, live workers and the training speed of each
running experiment.

Each app has a registry of its own (tests build many apps in one process). Per request the cost
is a dict lookup, a counter increment and one histogram observation: /predict is held to a bare
app's speed (bench/predict.py), so nothing heavier belongs on that path.
"""

from collections.abc import Iterator, Mapping
from time import perf_counter
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bnlab.api.core.workers import live_worker_counts
from bnlab.api.predict.serving import ServedNets
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.db import make_sessionmaker
from bnlab.vocabulary import MODES, Mode

# No `*_created` series: a timestamp per label set that no dashboard here reads.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it bare

# Requests that matched no route share one label: raw paths would grow the series without end.
UNMATCHED = "unmatched"
# From a cached prediction (~1 ms) to a slow report or plot.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    """The app's registry and the metrics updated while serving."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], served_nets: ServedNets
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bnlab_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bnlab_http_request_duration_seconds",
            "Time to answer an HTTP request (a whole stream, for event streams), by route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predict_latency = Histogram(
            "bnlab_predict_duration_seconds",
            "Time /predict took to answer, by BN mode.",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # One child per mode, made once: /predict observes without a label lookup.
        self._predict_by_mode = {mode: self.predict_latency.labels(mode) for mode in MODES}
        self.registry.register(CacheCollector(served_nets))
        self.registry.register(StoreCollector(settings, sessions))
        # Label lookups cached: `labels()` validates its arguments on every call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_prediction(self, mode: Mode, seconds: float) -> None:
        self._predict_by_mode[mode].observe(seconds)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (`/experiments/{id}`)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # The router has put the matched route in the (shared) scope by now.
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            self.metrics.observe_request(scope["method"], template, status, perf_counter() - start)


class CacheCollector(Collector):
    """The /predict checkpoint cache, counted by ServedNets itself (plain integers)."""

    def __init__(self, served_nets: ServedNets) -> None:
        self.served_nets = served_nets

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily(
            "bnlab_checkpoint_cache_lookups",
            "/predict net lookups: `hit` served from memory, `miss` loaded from its checkpoint.",
            labels=["result"],
        )
        lookups.add_metric(["hit"], self.served_nets.hits)
        lookups.add_metric(["miss"], self.served_nets.misses)
        yield lookups
        yield GaugeMetricFamily(
            "bnlab_checkpoint_cache_nets", "Nets held in memory.", value=len(self.served_nets)
        )


class StoreCollector(Collector):
    """Gauges read from SQL when scraped: nothing to keep in step, and right after a restart."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        try:
            with self.sessions() as session:
                by_status = queries.experiments_by_status(session)
                queued = queries.queued_per_queue(session)
                workers = live_worker_counts(session, self.settings)
                rates = queries.running_rates(session)
        except SQLAlchemyError:
            # A scrape still answers; /health says what is wrong.
            yield GaugeMetricFamily("bnlab_database_up", "1 if the database answered.", value=0)
            return
        yield GaugeMetricFamily("bnlab_database_up", "1 if the database answered.", value=1)
        yield _gauge("bnlab_experiments", "Experiments by status.", "status", by_status)
        yield _gauge(
            "bnlab_queued_jobs", "Experiments waiting for a worker, per queue.", "queue", queued
        )
        yield _gauge(
            "bnlab_workers", "Live workers (recent heartbeat), per queue.", "queue", workers
        )
        speed = GaugeMetricFamily(
            "bnlab_training_steps_per_second",
            "Training steps per second of each running experiment, as of its last sample point.",
            labels=["experiment_id"],
        )
        for experiment_id, rate in rates:
            speed.add_metric([str(experiment_id)], rate)
        yield speed


Label = TypeVar("Label", bound=str)  # a status, a queue: the label's values


def _gauge(name: str, documentation: str, label: str, values: Mapping[Label, int]) -> Metric:
    gauge = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        gauge.add_metric([key], value)
    return gauge


def install(app: FastAPI) -> None:
    """Metrics for `app` (after `app.state.settings` and `served_nets` are set): the registry on
    `app.state.metrics`, and the middleware that counts requests."""
    settings: Settings = app.state.settings
    sessions = make_sessionmaker(settings.database_url)
    app.state.metrics = Metrics(settings, sessions, app.state.served_nets)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
def metrics(request: Request) -> Response:
    """Requests and latencies per route, /predict latency, checkpoint-cache hits, experiments by
    status, queued jobs per queue, live workers, and each running experiment's steps/s."""
    # A plain `def`: the scrape reads SQL, so it runs in the threadpool, not on the event loop.
    app_metrics: Metrics = request.app.state.metrics
    return Response(generate_latest(app_metrics.registry), media_type=CONTENT_TYPE_LATEST)
