"""/predict load generators, one process each, for test_load.py.

Several processes of 8 clients rather than one of 32: one asyncio process with 32 httpx clients
is itself the bottleneck (measured against the same API: 125 requests/s for 1 process x 32
clients, 403 for 4 x 8). Kept free of torch and the app, so a spawned process starts quickly.
"""

import asyncio
import io
import time
from typing import Any

import httpx
import numpy as np
from PIL import Image


def predict_clients(
    base_url: str,
    headers: dict[str, str],
    experiment_id: int,
    clients: int,
    start: float,
    until: float,
    seed: int,
) -> dict[str, Any]:
    """`clients` concurrent clients from wall-clock time `start` to `until`, each cycling
    through JSON pixels (population and batch statistics) and PNG uploads. Returns how many
    requests were answered, the errors (non-200 or transport), and the latencies (s)."""
    time.sleep(max(0.0, start - time.time()))
    return asyncio.run(_run(base_url, headers, experiment_id, clients, until, seed))


async def _run(
    base_url: str,
    headers: dict[str, str],
    experiment_id: int,
    clients: int,
    until: float,
    seed: int,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    images = [rng.random((28, 28)) * (rng.random((28, 28)) > 0.7) for _ in range(16)]
    pixels = [image.tolist() for image in images]
    pngs = [_png((image * 255).astype(np.uint8)) for image in images]
    outcome: dict[str, Any] = {"requests": 0, "errors": [], "latencies": []}

    async def client(number: int, http: httpx.AsyncClient) -> None:
        turn = number
        while time.time() < until:
            turn += 1
            kind = turn % 3
            mode = "batch" if kind == 1 else "population"
            params = {"experiment_id": experiment_id, "mode": mode}
            body: dict[str, Any] = (
                {"files": {"image": ("digit.png", pngs[turn % 16], "image/png")}}
                if kind == 2
                else {"json": {"pixels": pixels[turn % 16]}}
            )
            sent = time.perf_counter()
            try:
                response = await http.post("/predict", params=params, **body)
            except httpx.HTTPError as error:
                outcome["errors"].append(repr(error))
                continue
            outcome["latencies"].append(time.perf_counter() - sent)
            outcome["requests"] += 1
            if response.status_code != 200:
                outcome["errors"].append(f"{response.status_code} {response.text[:200]}")

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=30, limits=limits
    ) as http:
        await asyncio.gather(*(client(number, http) for number in range(clients)))
    return outcome


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
