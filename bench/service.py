"""The worker against the engine, and how soon a posted experiment starts, side by side.

Starts `bnlab api` and `bnlab worker` (Redis + PostgreSQL when reachable, else the embedded
default), posts experiments, and compares the worker's training speed (pair steps per second,
from start to finish as the database records it) with a lone experiment's trainer run in this
process on the same spec, before and after the worker run. Also reports the delay from POST to
the job starting on an idle worker.

    python bench/service.py --data-dir /tmp/fdata [--steps 5000] [--stack redis-postgres]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import torch
from sqlalchemy import create_engine, text

from bnlab.models.data import load_splits
from bnlab.models.trainer import Cell, build_trainer
from bnlab.settings import get_settings
from bnlab.spec import ExperimentSpec

POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432"


def engine_seconds(spec: ExperimentSpec, data_dir: Path) -> float:
    splits = load_splits(spec.dataset, data_dir, False, spec.validation_size)
    cells = [Cell("pair", spec.training())]
    # The BN kernel the worker trains with (its settings, from the same environment).
    bn_impl = get_settings().bn_impl
    trainer = build_trainer(spec.architecture(), cells, splits, torch.device("cpu"), bn_impl)
    start = time.perf_counter()
    trainer.run(lambda sample: None)
    return time.perf_counter() - start


def start_service(env: dict[str, str], logs: Path) -> list[subprocess.Popen]:
    subprocess.run([sys.executable, "-m", "bnlab.cli", "migrate"], env=env, check=True)
    return [
        subprocess.Popen(
            [sys.executable, "-m", "bnlab.cli", *command],
            env=env,
            stdout=open(logs / f"{command[0]}.log", "w"),
            stderr=subprocess.STDOUT,
        )
        for command in (["api"], ["worker", "--queue", "cpu"])
    ]


def wait_ready(client: httpx.Client) -> None:
    for _ in range(300):
        try:
            if client.get("/health").json()["workers"]["cpu"] >= 1:
                return
        except (httpx.TransportError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    raise SystemExit("the service did not come up")


def run_experiment(
    client: httpx.Client, spec: ExperimentSpec, poll_seconds: float = 0.05
) -> tuple[dict, list[float]]:
    """The finished experiment, and the training rates its worker reported along the way."""
    experiment_id = client.post("/experiments", json=spec.model_dump()).json()["id"]
    rates: set[float] = set()
    while (experiment := client.get(f"/experiments/{experiment_id}").json())["status"] in (
        "queued",
        "running",
    ):
        if experiment["progress"]["steps_per_second"]:
            rates.add(experiment["progress"]["steps_per_second"])
        time.sleep(poll_seconds)
    assert experiment["status"] == "succeeded", experiment["error"]
    return experiment, sorted(rates)


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--stack", choices=["embedded", "redis-postgres"], default="redis-postgres")
    args = parser.parse_args()
    spec = ExperimentSpec(
        dataset="fashion-mnist", training_batches=args.steps, batches_per_sample=500
    )
    state = Path(tempfile.mkdtemp(prefix="bnlab-bench-"))
    env = {
        **os.environ,
        "BNLAB_STATE_DIR": str(state),
        "BNLAB_DATA_DIR": str(args.data_dir.absolute()),
        "BNLAB_DOWNLOAD": "false",
        "BNLAB_PORT": "8791",
    }
    if args.stack == "redis-postgres":
        name = f"bnlab_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        env["BNLAB_DATABASE_URL"] = f"{POSTGRES}/{name}"
        env["BNLAB_BROKER_URL"] = "redis://127.0.0.1:6379/14"
    processes = start_service(env, state)
    client = httpx.Client(base_url="http://127.0.0.1:8791", timeout=30)
    try:
        wait_ready(client)
        quick = ExperimentSpec(dataset="fashion-mnist", training_batches=10, batches_per_sample=10)
        # A worker that has run a job has its data read and its step compiled, as the engine
        # below has after its first run; polled twice a second, as a dashboard does (polling
        # at 20/s took a share of the 2 cores the lanes train on)
        run_experiment(client, quick)
        before = engine_seconds(spec, args.data_dir)
        experiment, rates = run_experiment(client, spec, poll_seconds=0.5)
        after = engine_seconds(spec, args.data_dir)
        delays = []
        for _ in range(5):  # the worker is idle again: time POST -> started
            done, _ = run_experiment(client, quick)
            delays.append(seconds_between(done["created_at"], done["started_at"]))
    finally:
        for process in processes:
            process.terminate()
            process.wait()
    worker_seconds = seconds_between(experiment["started_at"], experiment["finished_at"])
    engine = (before + after) / 2
    print(f"stack {args.stack}, {args.steps} pair steps, torch {torch.__version__}")
    print(f"engine in-process: {args.steps / before:.0f} and {args.steps / after:.0f} pair steps/s")
    print(
        f"worker (start to finish, incl. loading data, SQL, checkpoints): "
        f"{args.steps / worker_seconds:.0f} pair steps/s"
    )
    print(f"worker / engine throughput: {engine / worker_seconds:.2f}x")
    reported = rates[len(rates) // 2]  # between sample points: training alone
    print(
        f"worker's reported rate between sample points: median {reported:.0f} pair steps/s, "
        f"{reported * engine / args.steps:.2f}x the engine"
    )
    print(
        f"POST -> training started on an idle worker: "
        f"median {sorted(delays)[len(delays) // 2]:.3f} s, max {max(delays):.3f} s"
    )


if __name__ == "__main__":
    main()
