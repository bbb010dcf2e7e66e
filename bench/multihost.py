"""Load across hosts: 100 experiments posted at once to an API whose workers run on three hosts
(network namespaces; tests/multihost/conftest.py) that share nothing but PostgreSQL, Redis and
the S3 object store; `GET /experiments` timed meanwhile, as a dashboard polls it.

Checks, and exits 1 if one fails: every experiment succeeds, 100 distinct ids (none lost, none
made twice), each claimed exactly once (lease token 1: never run twice, let alone at once), each
sample point once, every host ran a share. Prints the figures for docs/reliability.md.

Run as root (it makes network namespaces): `.venv/bin/python bench/multihost.py`;
`--api-cpus 0 --worker-cpus 1` pins the API to core 0 and the workers to core 1 (PostgreSQL,
Redis and the S3 server may run on either).
"""

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.conftest import finished
from tests.idx import write_idx_dataset
from tests.load.test_load import Poller, percentile
from tests.multihost.conftest import (
    Cluster,
    namespaces_unavailable,
    private_network,
    running_cluster,
)

TINY = {"training_batches": 20, "batches_per_sample": 10, "validation_size": 200}


def cpus(text: str) -> set[int] | None:
    return {int(cpu) for cpu in text.split(",")} if text else None


def run(cluster: Cluster, experiments: int) -> list[str]:
    """Post, wait, check; returns what is wrong (nothing, if all holds)."""
    service = cluster.service
    service.client.timeout = httpx.Timeout(60)
    poller = Poller(service)
    poller.start()
    started = time.monotonic()

    def submit(n: int) -> httpx.Response:
        headers = {"Idempotency-Key": f"multihost-{n}-{uuid.uuid4().hex}"}
        return service.client.post("/experiments", json={**TINY, "seed": n}, headers=headers)

    with ThreadPoolExecutor(experiments) as pool:
        answers = list(pool.map(submit, range(experiments)))
    posted = time.monotonic() - started
    wrong = [f"POST {a.status_code}: {a.text}" for a in answers if a.status_code != 202]
    ids = [a.json()["id"] for a in answers if a.status_code == 202]
    ended = {n: service.wait_for(n, finished, timeout=1800) for n in ids}
    elapsed = time.monotonic() - started
    poller.done.set()
    poller.join()

    wrong += [
        f"{n}: {e['status']} {e['error']}" for n, e in ended.items() if e["status"] != "succeeded"
    ]
    if len(set(ids)) != experiments:
        wrong.append(f"{len(set(ids))} distinct ids for {experiments} posts")
    total = service.client.get("/experiments", params={"limit": 1}).json()["total"]
    if total != experiments:
        wrong.append(f"GET /experiments says {total} experiments")
    claims = dict(cluster.sql("SELECT id, lease_token FROM experiments"))
    if set(claims.values()) != {1}:
        wrong.append(f"claimed more than once: { {n: t for n, t in claims.items() if t != 1} }")
    steps = list(range(0, TINY["training_batches"] + 1, TINY["batches_per_sample"]))
    points = cluster.sql(
        "SELECT r.experiment_id, r.variant, count(*), count(DISTINCT c.step) FROM curve_points c"
        " JOIN runs r ON r.id = c.run_id GROUP BY 1, 2"
    )
    if len(points) != 2 * experiments or any(a != b or a != len(steps) for *_, a, b in points):
        wrong.append("a curve is missing a sample point or has one twice")
    shares = {
        host.name: count
        for host in cluster.hosts
        for (count,) in cluster.sql(
            "SELECT count(*) FROM experiments WHERE worker LIKE :name", name=f"%@{host.name}"
        )
    }
    if min(shares.values()) == 0:
        wrong.append(f"a host ran nothing: {shares}")
    if set(poller.statuses) != {200}:
        wrong.append(f"GET /experiments answered {sorted(set(poller.statuses))}")

    latencies = [seconds * 1000 for seconds in poller.latencies]
    print(
        f"{experiments} experiments posted in {posted:.1f} s; all finished {elapsed:.1f} s after "
        f"the first post; per host {sorted(shares.values())}; GET /experiments meanwhile: "
        f"{len(latencies)} requests, p50 {statistics.median(latencies):.0f} ms, "
        f"p99 {percentile(latencies, 0.99):.0f} ms, max {max(latencies):.0f} ms"
    )
    return wrong


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--api-cpus", type=cpus, default=None, help="e.g. 0")
    parser.add_argument("--worker-cpus", type=cpus, default=None, help="e.g. 1")
    args = parser.parse_args()
    reason = namespaces_unavailable()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bnlab-multihost-") as folder:
        (Path(folder) / "data").mkdir()
        (Path(folder) / "cluster").mkdir()
        data_dir = write_idx_dataset(Path(folder) / "data")
        with (
            private_network() as network,
            running_cluster(
                network,
                Path(folder) / "cluster",
                data_dir,
                args.hosts,
                api_cpus=args.api_cpus,
                worker_cpus=args.worker_cpus,
                # The default lease timeout: a busy worker must not be taken for dead.
                lease_timeout_seconds="10",
                requeue_after_seconds="30",
            ) as cluster,
        ):
            wrong = run(cluster, args.experiments)
    for line in wrong:
        print(line, file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
