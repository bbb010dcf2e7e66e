"""The FastAPI app. `bnlab api` runs `uvicorn bnlab.api.main:create_app --factory`."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bnlab.api.compare import routes as compare
from bnlab.api.core import dashboard, errors, health, metrics, writes
from bnlab.api.core.auth import require_token
from bnlab.api.core.broker import Broker
from bnlab.api.core.limits import LimitBody
from bnlab.api.events import routes as events
from bnlab.api.experiments import routes as experiments
from bnlab.api.predict import routes as predict
from bnlab.api.predict.serving import ServedNets, checkpoint_loader
from bnlab.api.study import routes as study
from bnlab.api.study.sources import ComputeSlots
from bnlab.api.sweeps import routes as sweeps
from bnlab.api.why import routes as why
from bnlab.settings import Settings, get_settings
from bnlab.store.db import make_sessionmaker

DESCRIPTION = """
The classic batch-normalization study as a service. Submit an experiment: two networks,
with and without BN, train from the same initial weights on the same mini-batches. Follow
their validation-accuracy curves, read the results, download the checkpoints, and ask the
trained nets for predictions with BN using population or batch statistics.
"""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # What is built by now (torch, FastAPI, this app: ~450,000 objects) lives as long as the
    # process. Frozen, the garbage collector stops walking it: a full collection took ~210 ms
    # with every request of the process stalled meanwhile (the load test's p99 spikes); now the
    # collector walks only what requests made.
    gc.freeze()
    yield


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app bound to `settings` (default: the `BNLAB_*` environment)."""
    settings = settings or get_settings()
    app = FastAPI(title="bnlab", version="0.1.0", description=DESCRIPTION, lifespan=_lifespan)
    # Long-lived objects, made once per app; deps.py hands them to routes.
    app.state.settings = settings
    app.state.broker = Broker(settings)
    app.state.served_nets = ServedNets(
        settings.predict_cache_size,
        checkpoint_loader(settings, make_sessionmaker(settings.database_url)),
    )
    app.state.study_slots = ComputeSlots(settings.study_slots)
    writes.install(app)
    errors.install(app)
    add_routes(app)
    app.add_middleware(LimitBody, max_bytes=settings.max_body_bytes)
    if settings.api_token is not None:
        # Outside the body limit: a request without the token is refused before anything else.
        require_token(app, settings.api_token.get_secret_value())
    # Outermost of all, so refused requests (401, 413) are counted too.
    metrics.install(app)
    return app


def add_routes(app: FastAPI) -> None:
    # /predict goes on the app itself, first: FastAPI matches an included router as a nested
    # router, and that level, like every route tried before, costs each prediction time.
    app.add_api_route(endpoint=predict.predict, **predict.ROUTE)
    app.include_router(experiments.router)
    app.include_router(study.router)
    app.include_router(why.router)
    app.include_router(events.router)
    app.include_router(events.sweep_router)
    app.include_router(sweeps.router)
    app.include_router(compare.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # The dashboard last: its mount at /static must not shadow an API route.
    dashboard.add_dashboard(app)
