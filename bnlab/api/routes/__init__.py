"""The API's routers, one module per resource, in the order the app matches them.

/predict comes first and the routers are included into the app itself, not into an umbrella
router: every level of nesting and every route tried before it adds to each request's cost.
"""

from fastapi import APIRouter

from bnlab.api.routes import experiments, health, predict

ROUTERS: tuple[APIRouter, ...] = (predict.router, experiments.router, health.router)
