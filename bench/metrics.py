"""What /metrics costs /predict: the app as shipped against the same app without its metrics
(no middleware, no predict histogram), in one process, on the study's 784-100-100-100-10 `bn`
net, single images as JSON.

Requests go straight into each app's ASGI callable (no sockets, no HTTP client), so the figure
is the app's own time per request; rounds alternate between the two apps. Then the metrics work
alone: the middleware and the predict histogram around an app that answers at once.

    python bench/metrics.py [--requests 3000] [--rounds 5]
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI

from bench.predict import prepare
from bnlab.api import main
from bnlab.api.core import metrics
from bnlab.settings import Settings


class NoMetrics:
    def observe_prediction(self, mode: str, seconds: float) -> None:
        pass


def app_without_metrics(settings: Settings) -> FastAPI:
    shipped = metrics.install

    def no_metrics(app: FastAPI) -> None:
        app.state.metrics = NoMetrics()

    main.metrics.install = no_metrics  # type: ignore[assignment]
    try:
        return main.create_app(settings)
    finally:
        main.metrics.install = shipped  # type: ignore[assignment]


async def call(app: FastAPI, query: bytes, body: bytes) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": query,
        "headers": [(b"content-type", b"application/json"), (b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # no disconnect while the app answers
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def per_request(app: FastAPI, query: bytes, body: bytes, requests: int) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        assert await call(app, query, body) == 200
    return (time.perf_counter() - start) / requests


async def run(args: argparse.Namespace) -> None:
    env, path = prepare(Path(tempfile.mkdtemp(prefix="bnlab-metrics-")))
    settings = Settings(state_dir=Path(env["BNLAB_STATE_DIR"]))
    apps = {"with metrics": main.create_app(settings), "without": app_without_metrics(settings)}
    query = str(path).split("?", 1)[1].encode()
    pixels = (torch.rand(784) * (torch.rand(784) > 0.8)).tolist()
    body = json.dumps({"pixels": pixels}).encode()
    for app in apps.values():  # warm-up: the checkpoint is loaded and cached
        await per_request(app, query, body, 200)
    times: dict[str, list[float]] = {name: [] for name in apps}
    for round_ in range(args.rounds):
        # Alternate which app goes first: the second of a pair runs on a warmer machine.
        order = list(apps.items()) if round_ % 2 == 0 else list(reversed(apps.items()))
        for name, app in order:
            times[name].append(await per_request(app, query, body, args.requests))
    print(f"torch {torch.__version__}; {args.rounds} rounds of {args.requests} requests per app")
    best = {name: min(values) for name, values in times.items()}
    for name, values in times.items():
        print(
            f"{name:12}: best {best[name] * 1e6:6.1f} us/request, "
            f"median {statistics.median(values) * 1e6:6.1f} us"
        )
    # Each round's pair ran back to back: the median of their ratios shrugs off the machine's
    # drift between rounds better than a ratio of bests.
    ratios = [
        without / with_
        for with_, without in zip(times["with metrics"], times["without"], strict=True)
    ]
    print(
        f"requests/s with/without metrics: median of round ratios {statistics.median(ratios):.3f}x "
        f"(range {min(ratios):.3f}-{max(ratios):.3f})"
    )
    isolated = await isolated_cost(apps["with metrics"], 20_000)
    print(
        f"metrics alone (middleware + predict histogram): {isolated * 1e6:.1f} us/request, "
        f"{isolated / best['without']:.1%} of a request"
    )


async def isolated_cost(app: FastAPI, requests: int) -> float:
    """What the metrics middleware and the predict histogram add to one request, measured around
    an ASGI app that answers at once (best of 5; the rest of the request does not matter)."""

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app_metrics: metrics.Metrics = app.state.metrics
    wrapped = metrics.MetricsMiddleware(answer, app_metrics)
    scope = {"type": "http", "method": "POST", "path": "/predict"}

    async def nothing(*_: Any) -> Any:
        return {}

    async def timed(target: Any, observe: bool) -> float:
        start = time.perf_counter()
        for _ in range(requests):
            await target(scope, nothing, nothing)
            if observe:
                app_metrics.observe_prediction("population", 0.001)
        return time.perf_counter() - start

    with_metrics = min([await timed(wrapped, True) for _ in range(5)])
    without = min([await timed(answer, False) for _ in range(5)])
    return (with_metrics - without) / requests


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main_()
