"""bnlab's /predict against a bare FastAPI app doing only the forward pass, side by side.

Both serve the same checkpoint (the study's 784-100-100-100-10 `bn` net) from uvicorn, one
process each; the load generator (this script, asyncio + httpx) sends single images as JSON with
1 and with 8 concurrent clients, alternating between the two apps, and prints requests/s and
latency percentiles and bnlab's ratios against the bare app.

    python bench/predict.py [--seconds 10] [--token]

With --token, bnlab runs with BNLAB_API_TOKEN set and every request (to both apps) carries it:
the cost of the token check on the hot path.
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from bnlab.models.checkpoint import save_net
from bnlab.models.network import Architecture, NetStack, initial_weights
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.migrate import upgrade

BNLAB_PORT, BARE_PORT = 8793, 8794
TOKEN = "bench-token-0123456789abcdef"


def prepare(state: Path) -> tuple[dict[str, str], Path]:
    """A succeeded experiment with a `bn` checkpoint in a fresh embedded database."""
    settings = Settings(state_dir=state)
    upgrade(settings.database_url)
    arch = Architecture()
    stack = NetStack(arch, "bn", [initial_weights(arch, 0.05, 0)])
    path = state / "bn.safetensors"
    sha256, size = save_net(path, stack.net_state(0), variant="bn", arch=arch, step=0)
    with make_sessionmaker(settings.database_url)() as session:
        experiment = queries.create_experiment(session, ExperimentSpec().model_dump(), "cpu", 1)
        experiment.status = "succeeded"
        queries.add_checkpoint(
            session, queries.run_of(experiment, "bn"), 0, str(path), sha256, size
        )
        session.commit()
        experiment_id = experiment.id
    env = {**os.environ, "BNLAB_STATE_DIR": str(state), "BNLAB_PORT": str(BNLAB_PORT)}
    env["BARE_CHECKPOINT"] = str(path)
    return env, Path(f"/predict?experiment_id={experiment_id}&variant=bn&mode=population")


async def load(
    url: str, clients: int, seconds: float, pixels: list[float], headers: dict[str, str]
) -> list[float]:
    """Latencies (s) of every request that `clients` concurrent clients sent in `seconds`."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:

        async def one_client() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.post(url, json={"pixels": pixels})
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies


def wait_up(url: str) -> None:
    for _ in range(200):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--token", action="store_true", help="run bnlab with BNLAB_API_TOKEN")
    args = parser.parse_args()
    env, path = prepare(Path(tempfile.mkdtemp(prefix="bnlab-predict-")))
    headers = {}
    if args.token:
        env["BNLAB_API_TOKEN"] = TOKEN
        headers["Authorization"] = f"Bearer {TOKEN}"
    servers = [
        subprocess.Popen([sys.executable, "-m", "bnlab.cli", "api"], env=env),
        subprocess.Popen(
            # the same uvicorn settings as `bnlab api`, access log included
            [sys.executable, "-m", "uvicorn", "bench.bare_predict:app", "--port", str(BARE_PORT)],
            env=env,
        ),
    ]
    urls = {
        "bnlab": f"http://127.0.0.1:{BNLAB_PORT}{path}",
        "bare": f"http://127.0.0.1:{BARE_PORT}/predict",
    }
    pixels = (torch.rand(784) * (torch.rand(784) > 0.8)).tolist()
    try:
        for name in urls:
            wait_up(urls[name].split("/predict")[0] + "/docs")
            asyncio.run(load(urls[name], 2, 1.0, pixels, headers))  # warm-up: checkpoint cached
        token = ", bnlab with an API token" if args.token else ""
        print(f"torch {torch.__version__}; {args.seconds:.0f} s per run, runs alternate{token}")
        for clients in (1, 8):
            results: dict[str, list[float]] = {"bnlab": [], "bare": []}
            for _ in range(2):
                for name, url in urls.items():
                    run = load(url, clients, args.seconds / 2, pixels, headers)
                    results[name] += asyncio.run(run)
            summary = {}
            for name, latencies in results.items():
                latencies.sort()
                rate = len(latencies) / args.seconds
                p50 = statistics.median(latencies) * 1000
                p99 = latencies[int(len(latencies) * 0.99)] * 1000
                summary[name] = (rate, p99)
                print(
                    f"{clients} client(s) {name:5}: {rate:6.0f} req/s  p50 {p50:5.1f} ms  "
                    f"p99 {p99:5.1f} ms"
                )
            rate_ratio = summary["bnlab"][0] / summary["bare"][0]
            p99_ratio = summary["bnlab"][1] / summary["bare"][1]
            print(f"{clients} client(s) bnlab/bare: req/s {rate_ratio:.2f}x, p99 {p99_ratio:.2f}x")
    finally:
        for server in servers:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
