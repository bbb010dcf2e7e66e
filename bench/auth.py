"""The cost of the API token (and of the body limit) on /predict's hot path, in process.

The same app is built twice on the same checkpoint, with and without BNLAB_API_TOKEN, and driven
straight through ASGI (no sockets, so the scheduler noise of a shared machine stays out): one
JSON image per request, population statistics, the net cached. Runs alternate; the figure is
microseconds per request and the ratio of requests/s with the token to without it. Then the two
middlewares alone, around an app that does nothing: their own cost, without the forward pass.

    python bench/auth.py [--requests 3000] [--rounds 5]
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

from bench.predict import prepare
from bnlab.api.core.auth import RequireToken
from bnlab.api.core.limits import LimitBody
from bnlab.api.main import create_app
from bnlab.settings import Settings

TOKEN = "bench-token-0123456789abcdef"


def request(path: str, body: bytes, token: bool) -> tuple[dict[str, Any], bytes]:
    route, _, query = path.partition("?")
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if token:
        headers.append((b"authorization", f"Bearer {TOKEN}".encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    return scope, body


async def per_request(app: Any, scope: dict[str, Any], body: bytes, n: int) -> float:
    """Seconds per request over `n` requests, each checked to be a 200."""
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = time.perf_counter()
    for _ in range(n):
        await app(scope, receive, send)
    elapsed = time.perf_counter() - start
    assert set(statuses) == {200}, set(statuses)
    return elapsed / n


async def nothing(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})


def guards_alone(scope: dict[str, Any], body: bytes, n: int = 100_000) -> dict[str, float]:
    """Microseconds per request: a no-op app, and the same behind each middleware."""
    apps = {
        "no-op app": nothing,
        "+ LimitBody": LimitBody(nothing, 1_000_000),
        "+ RequireToken": RequireToken(nothing, TOKEN),
    }
    return {name: asyncio.run(per_request(app, scope, body, n)) * 1e6 for name, app in apps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bnlab-auth-"))
    _env, path = prepare(state)
    pixels = (torch.rand(784) * (torch.rand(784) > 0.8)).tolist()
    body = json.dumps({"pixels": pixels}).encode()
    apps = {
        "open": create_app(Settings(state_dir=state)),
        "token": create_app(Settings(state_dir=state, api_token=TOKEN)),
    }
    scopes = {name: request(str(path), body, name == "token") for name in apps}
    times: dict[str, list[float]] = {name: [] for name in apps}
    for name, app in apps.items():  # warm-up: the checkpoint loaded and cached
        asyncio.run(per_request(app, *scopes[name], 50))
    for _ in range(args.rounds):
        for name, app in apps.items():
            times[name].append(asyncio.run(per_request(app, *scopes[name], args.requests)))
    print(f"torch {torch.__version__}; {args.rounds} rounds of {args.requests} requests each")
    best = {name: min(values) * 1e6 for name, values in times.items()}
    median = {name: statistics.median(values) * 1e6 for name, values in times.items()}
    for name in apps:
        print(f"{name:5}: best {best[name]:6.1f} us/request, median {median[name]:6.1f} us")
    print(
        f"requests/s with the token / without: {best['open'] / best['token']:.3f}x (best), "
        f"{median['open'] / median['token']:.3f}x (median)"
    )
    alone = [guards_alone(scopes["token"][0], body) for _ in range(args.rounds)]
    for name in alone[0]:
        print(f"{name:15}: {min(run[name] for run in alone):5.2f} us/request (best)")


if __name__ == "__main__":
    main()
