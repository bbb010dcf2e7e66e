"""/metrics: the Prometheus text format (see bnlab/api/metrics.py for what is in it)."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bnlab.api.metrics import Metrics

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
