"""The API's routers, one module per resource."""

from fastapi import APIRouter

from bnlab.api.routes import experiments, health, predict

api_router = APIRouter()
api_router.include_router(experiments.router)
api_router.include_router(predict.router)
api_router.include_router(health.router)
