"""What /metrics costs /predict: the app as shipped against the same app without its metrics
(no middleware, no predict histogram), in one process, on the study's 784-100-100-100-10 `bn`
net, single images as JSON.

Requests go straight into each app's ASGI callable (no sockets, no HTTP client), so the figure
is the app's own time per request; rounds alternate between the two apps.

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
from bnlab.api import main, metrics
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
    for _ in range(args.rounds):
        for name, app in apps.items():
            times[name].append(await per_request(app, query, body, args.requests))
    print(f"torch {torch.__version__}; {args.rounds} rounds of {args.requests} requests per app")
    best = {name: min(values) for name, values in times.items()}
    for name, values in times.items():
        print(
            f"{name:12}: best {best[name] * 1e6:6.1f} us/request, "
            f"median {statistics.median(values) * 1e6:6.1f} us"
        )
    extra = best["with metrics"] - best["without"]
    print(
        f"metrics cost {extra * 1e6:.1f} us/request; requests/s with/without: "
        f"{best['without'] / best['with metrics']:.3f}x"
    )


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main_()
