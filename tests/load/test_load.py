"""Load, on both stacks, with an API token set: the real API and two real worker processes.

- 50 experiments posted at once (each with an Idempotency-Key, then all posted again as
  retries): 50 experiments made, all succeed, none lost, both workers take a share; GET
  /experiments answers 200 throughout.
- /predict from 32 concurrent clients in 4 processes (JSON images in both BN modes, and PNG
  uploads) for BNLAB_SOAK_SECONDS (default 15; docs/reliability.md has a 60 s run): zero errors.
- No log line holds the token, and a wrong one is logged as refused, without itself.

The issue's speed and memory targets (GET /experiments p99 < 100 ms meanwhile; the API's
resident memory grows < 10% from the first to the last 10 s of the soak) are measured and
printed (`pytest -s`), not asserted: timings on a shared test machine say more about the
machine. The figures of the last run are in docs/reliability.md.
"""

import multiprocessing
import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from sqlalchemy import create_engine, text

from tests.conftest import REDIS_HOST, REDIS_PORT, require_service
from tests.load.clients import predict_clients
from tests.service.conftest import Service, running_service, service_env

pytestmark = pytest.mark.service

TOKEN = "load-test-token-" + uuid.uuid4().hex
WORKERS = 2
EXPERIMENTS = 50
TINY = {"training_batches": 20, "batches_per_sample": 10, "validation_size": 200, "seed": 1}
CLIENTS = 32
CLIENT_PROCESSES = 4
SOAK_SECONDS = float(os.environ.get("BNLAB_SOAK_SECONDS", "15"))
# Redis db 15 is tests/conftest.py's (flushed by every service module); this module has its own.
REDIS_DB = 14


@pytest.fixture(scope="module", params=["embedded", "redis-postgres"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, idx_data_dir: Path
) -> Iterator[Service]:
    tmp_path = tmp_path_factory.mktemp(f"load-{request.param}")
    settings = {"api_token": TOKEN}
    if request.param == "redis-postgres":
        settings["database_url"] = request.getfixturevalue("module_postgres_url")
        settings["broker_url"] = _empty_redis_db()
    env = service_env(tmp_path, idx_data_dir, **settings)
    with running_service(tmp_path, env, workers=WORKERS) as service:
        service.client.headers["Authorization"] = f"Bearer {TOKEN}"
        service.client.timeout = httpx.Timeout(30)
        yield service


def _empty_redis_db() -> str:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class Poller(threading.Thread):
    """GET /experiments in a loop, as a dashboard would, recording latency and status."""

    def __init__(self, service: Service) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(
            base_url=service.client.base_url, headers=service.client.headers, timeout=30
        )
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        with self.client:
            while not self.done.is_set():
                start = time.perf_counter()
                response = self.client.get("/experiments", params={"limit": 50})
                self.latencies.append(time.perf_counter() - start)
                self.statuses.append(response.status_code)
                time.sleep(0.05)


def test_fifty_experiments_with_two_workers_all_succeed_and_none_is_lost(
    service: Service,
) -> None:
    assert service.client.get("/health").json()["workers"]["cpu"] == WORKERS
    keys = [f"load-{n}-{uuid.uuid4().hex}" for n in range(EXPERIMENTS)]
    specs = [{**TINY, "seed": n} for n in range(EXPERIMENTS)]
    poller = Poller(service)
    poller.start()
    started = time.monotonic()

    def submit(n: int) -> httpx.Response:
        headers = {"Idempotency-Key": keys[n]}
        return service.client.post("/experiments", json=specs[n], headers=headers)

    with ThreadPoolExecutor(EXPERIMENTS) as pool:
        first = list(pool.map(submit, range(EXPERIMENTS)))
        retries = list(pool.map(submit, range(EXPERIMENTS)))  # a client that timed out, say
    posted = time.monotonic() - started
    assert [r.status_code for r in first + retries] == [202] * (2 * EXPERIMENTS), [
        r.text for r in first + retries if r.status_code != 202
    ][:3]
    ids = [r.json()["id"] for r in first]
    assert len(set(ids)) == EXPERIMENTS
    assert [r.json()["id"] for r in retries] == ids
    assert all(r.headers.get("idempotent-replayed") == "true" for r in retries)

    finished = {n: service.wait_for(n, _finished, timeout=900) for n in ids}
    elapsed = time.monotonic() - started
    poller.done.set()
    poller.join()

    failed = {n: e["error"] for n, e in finished.items() if e["status"] != "succeeded"}
    assert not failed, failed
    page = service.client.get("/experiments", params={"limit": 500}).json()
    assert page["total"] == EXPERIMENTS
    assert sorted(item["id"] for item in page["items"]) == sorted(ids)
    assert all(e["progress"]["step"] == TINY["training_batches"] for e in finished.values())
    shares = _experiments_per_worker(service)
    assert len(shares) == WORKERS and sum(shares.values()) == EXPERIMENTS, shares
    assert set(poller.statuses) == {200}

    print(
        f"\n[load] {EXPERIMENTS} experiments (+{EXPERIMENTS} retries) posted in {posted:.1f} s, "
        f"all succeeded {elapsed:.1f} s after the first post; per worker: "
        f"{sorted(shares.values())}; GET /experiments meanwhile: {len(poller.latencies)} "
        f"requests, p50 {statistics.median(poller.latencies) * 1000:.0f} ms, "
        f"p99 {percentile(poller.latencies, 0.99) * 1000:.0f} ms, "
        f"max {max(poller.latencies) * 1000:.0f} ms"
    )


def _finished(experiment: dict[str, Any]) -> bool:
    return experiment["status"] in ("succeeded", "failed", "cancelled")


def _experiments_per_worker(service: Service) -> dict[str, int]:
    """Who ran what, from the database: the API does not show an experiment's worker."""
    url = service.env.get("BNLAB_DATABASE_URL") or (
        f"sqlite:///{Path(service.env['BNLAB_STATE_DIR']).absolute() / 'bnlab.db'}"
    )
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT worker, count(*) FROM experiments GROUP BY 1"))
            return {str(worker): int(count) for worker, count in rows}
    finally:
        engine.dispose()


def test_predict_under_32_clients_makes_no_errors(service: Service) -> None:
    posted = service.client.post("/experiments", json={**TINY, "training_batches": 100})
    experiment = service.wait_for(posted.json()["id"], _finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    api = psutil.Process(service.processes["api"].pid)

    outcome = _soak(service, experiment["id"], api)

    assert outcome["requests"] > 0
    assert outcome["errors"] == [], outcome["errors"][:5]
    window = min(10.0, SOAK_SECONDS / 3)
    first = [rss for at, rss in outcome["rss"] if at <= window]
    last = [rss for at, rss in outcome["rss"] if at >= SOAK_SECONDS - window]
    growth = statistics.mean(last) / statistics.mean(first) - 1
    latencies = outcome["latencies"]
    print(
        f"\n[load] /predict, {CLIENTS} clients, {SOAK_SECONDS:.0f} s: {outcome['requests']} "
        f"requests ({outcome['requests'] / SOAK_SECONDS:.0f}/s), 0 errors, "
        f"p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms; API resident memory "
        f"{statistics.mean(first) / 2**20:.1f} MiB (first {window:.0f} s) -> "
        f"{statistics.mean(last) / 2**20:.1f} MiB (last {window:.0f} s), {growth:+.1%}"
    )


def _soak(service: Service, experiment_id: int, api: psutil.Process) -> dict[str, Any]:
    """CLIENT_PROCESSES processes of clients (tests/load/clients.py) from a common start time
    for SOAK_SECONDS; the API's resident memory sampled every 0.5 s meanwhile."""
    start = time.time() + 5  # time for the spawned processes to start
    until = start + SOAK_SECONDS
    base_url, headers = str(service.client.base_url), dict(service.client.headers)
    per_process = CLIENTS // CLIENT_PROCESSES
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch
    with ProcessPoolExecutor(CLIENT_PROCESSES, mp_context=context) as pool:
        runs = [
            pool.submit(
                predict_clients, base_url, headers, experiment_id, per_process, start, until, n
            )
            for n in range(CLIENT_PROCESSES)
        ]
        time.sleep(max(0.0, start - time.time()))
        rss = []
        while time.time() < until:
            rss.append((time.time() - start, api.memory_info().rss))
            time.sleep(0.5)
        rss.append((time.time() - start, api.memory_info().rss))
        outcomes = [run.result() for run in runs]
    return {
        "requests": sum(o["requests"] for o in outcomes),
        "errors": [error for o in outcomes for error in o["errors"]],
        "latencies": [latency for o in outcomes for latency in o["latencies"]],
        "rss": rss,
    }


def test_no_log_line_holds_the_token(service: Service) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    refused = httpx.get(
        f"{service.client.base_url}/experiments", headers={"Authorization": f"Bearer {wrong}"}
    )
    assert refused.status_code == 401
    assert service.client.get("/health").status_code == 200  # and let the line be written
    logs = {log.name: log.read_text() for log in service.logs.glob("*.log")}
    assert "wrong token" in logs["api.log"]
    for name, content in logs.items():
        assert TOKEN not in content, f"{name} holds the API token"
        assert wrong not in content, f"{name} holds the token a client sent"
