"""The API's routes, one module per resource."""

from fastapi import FastAPI

from bnlab.api.routes import dashboard, events, experiments, health, metrics, predict, study, sweeps


def add_routes(app: FastAPI) -> None:
    # /predict goes on the app itself, first: FastAPI matches an included router as a nested
    # router, and that level, like every route tried before, costs each prediction time.
    app.add_api_route(endpoint=predict.predict, **predict.ROUTE)
    app.include_router(experiments.router)
    app.include_router(study.router)
    app.include_router(events.router)
    app.include_router(events.sweep_router)
    app.include_router(sweeps.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # The dashboard last: its mount at /static must not shadow an API route.
    dashboard.add_dashboard(app)
