"""Several worker hosts on this one machine, nothing shared between them but PostgreSQL, Redis
and an S3 object store, reached over a network.

Each host is a network namespace of its own (`ip netns add`), joined to a bridge on this
machine's side by a veth pair, with an address on a private /24; its workers run inside it
(`ip netns exec`, and a UTS namespace so that it has a hostname of its own, which names its
workers in the database), with a state folder and a data folder of their own. PostgreSQL, Redis
and moto's S3 server (`moto_server`) listen on the bridge's address only, the API on 127.0.0.1:
the API host is this machine's own namespace. Everything is removed at the end.

Creating namespaces takes root: without it, or without `ip netns`, the tests skip saying why;
under CI=true they fail instead.
"""

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.faults.conftest import (
    FAULT_SETTINGS,
    RedisServer,
    database_url,
    running_postgres,
)
from tests.objectstore import CREDENTIALS, ObjectStore, free_port
from tests.service.conftest import Service, running_service, service_env

BUCKET = "bnlab-checkpoints"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    """A worker machine: a network namespace named `name`, `address` on its link `link`."""

    name: str
    address: str
    link: str
    folder: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def env(self, service: Service) -> dict[str, str]:
        """The service's environment with this host's own folders."""
        return {
            **service.env,
            "BNLAB_STATE_DIR": str(self.folder / "state"),
            "BNLAB_DATA_DIR": str(self.folder / "data"),
        }

    def start_worker(self, service: Service, cpus: set[int] | None = None) -> subprocess.Popen:
        """A `bnlab worker` in this host's namespace, under its hostname, on `cpus` (default:
        any); logs to `<name>.log` among the service's logs, stopped with the service."""
        command = [
            *("ip", "netns", "exec", self.name, "unshare", "--uts", "--"),
            *("sh", "-c", 'hostname "$0" && exec "$@"', self.name),
            *(sys.executable, "-m", "bnlab.cli", "worker", "--queue", "cpu"),
        ]
        with open(service.logs / f"{self.name}.log", "ab") as log:
            process = subprocess.Popen(
                command,
                env=self.env(service),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
            )
        service.processes[self.name] = process
        self.workers.append(process)
        return process

    def cut(self) -> None:
        """Its link down: nothing in or out, as a pulled cable; its processes run on."""
        _ip("netns", "exec", self.name, "ip", "link", "set", self.link, "down")

    def reconnect(self) -> None:
        _ip("netns", "exec", self.name, "ip", "link", "set", self.link, "up")


@dataclass
class Network:
    """A bridge at `<prefix>.1` and a namespace per host at `<prefix>.11`, `.12`, ..."""

    tag: str
    prefix: str
    hosts: list[Host] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"bn{self.tag}br"

    @property
    def address(self) -> str:
        """This machine's address on the hosts' network: where the servers listen."""
        return f"{self.prefix}.1"

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self, folder: Path, data_dir: Path) -> Host:
        number = len(self.hosts) + 1
        host = Host(
            f"bnlab-{self.tag}-h{number}",
            f"{self.prefix}.{10 + number}",
            f"bn{self.tag}n{number}",
            folder,
        )
        outside = f"bn{self.tag}h{number}"
        self.hosts.append(host)  # before it exists, so that a failure half-way removes it
        _ip("netns", "add", host.name)
        _ip("link", "add", outside, "type", "veth", "peer", "name", host.link)
        _ip("link", "set", outside, "master", self.bridge, "up")
        _ip("link", "set", host.link, "netns", host.name)
        for command in (
            ("addr", "add", f"{host.address}/24", "dev", host.link),
            ("link", "set", host.link, "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("netns", "exec", host.name, "ip", *command)
        (folder / "state").mkdir(parents=True)
        shutil.copytree(data_dir, folder / "data")
        return host

    def remove(self) -> None:
        """Each namespace (its end of the veth pair goes with it, and so the other end), then
        the bridge."""
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot make the hosts' namespaces, or None if it can."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"bnlab-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@contextmanager
def private_network() -> Iterator[Network]:
    """A bridge on a random private /24 (and random names, so runs side by side do not meet),
    without hosts yet; removed with its hosts at the end."""
    tag = f"{random.randrange(16**4):04x}"
    network = Network(tag, f"10.{random.randrange(200, 250)}.{random.randrange(256)}")
    try:
        network.create()
        yield network
    finally:
        network.remove()


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    reason = namespaces_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; in CI the multi-host tests must run (as root)")
        pytest.skip(reason)
    with private_network() as network:
        yield network


@dataclass
class Cluster:
    """The API on this machine, and worker hosts, over PostgreSQL, Redis and S3."""

    service: Service
    hosts: list[Host]
    store: ObjectStore
    folder: Path  # everything the API and the hosts keep locally

    def objects(self) -> dict[str, tuple[str, float]]:
        """The bucket's objects: key -> (ETag, last modified)."""
        found = self.store.filesystem().find(BUCKET, detail=True)
        return {
            path.removeprefix(f"{BUCKET}/"): (info["ETag"], info["LastModified"].timestamp())
            for path, info in found.items()
        }

    def host_of(self, worker: str) -> Host:
        """The host whose worker this is (a worker is named `bnlab-<queue>-<pid>@<hostname>`)."""
        return next(host for host in self.hosts if worker.endswith(f"@{host.name}"))

    def sql(self, query: str, **parameters: object) -> list[tuple]:
        engine = create_engine(database_url(self.service))
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(text(query), parameters)]
        finally:
            engine.dispose()

    def wait_for_workers(self, count: int, timeout: float = 90) -> None:
        self.service.poll("/health", lambda health: health["workers"]["cpu"] == count, timeout)


@contextmanager
def running_cluster(
    network: Network,
    folder: Path,
    data_dir: Path,
    hosts: int,
    api_cpus: set[int] | None = None,
    worker_cpus: set[int] | None = None,
    **settings: str,
) -> Iterator[Cluster]:
    """PostgreSQL, Redis and S3 on the network's address, `bnlab migrate` and the API here, and
    a worker on each of `hosts` new hosts; with FAULT_SETTINGS's short leases and `settings`.
    `api_cpus`, `worker_cpus`: the cores those processes may run on (default: any)."""
    with ExitStack() as stack:
        postgres = stack.enter_context(running_postgres(network.address))
        redis = RedisServer(folder, host=network.address)
        redis.start()
        stack.callback(redis.kill)
        store = ObjectStore(free_port(network.address), folder / "moto.log", network.address)
        store.start()
        stack.callback(store.stop)
        store.make_bucket(BUCKET)
        env = service_env(
            folder / "api",
            data_dir,
            database_url=postgres.create_database(),
            broker_url=redis.url,
            checkpoint_dir=f"s3://{BUCKET}/checkpoints",
            **{**FAULT_SETTINGS, **settings},
        )
        env.update(CREDENTIALS, AWS_ENDPOINT_URL=store.endpoint)
        (folder / "api").mkdir()
        anywhere = os.sched_getaffinity(0)
        os.sched_setaffinity(0, api_cpus or anywhere)  # the API started from here inherits it
        try:
            service = stack.enter_context(running_service(folder / "api", env, workers=0))
        finally:
            os.sched_setaffinity(0, anywhere)
        machines = [
            network.add_host(folder / f"host-{number}", data_dir) for number in range(hosts)
        ]
        cluster = Cluster(service, machines, store, folder)
        for host in machines:
            host.start_worker(service, worker_cpus)
        cluster.wait_for_workers(hosts)
        yield cluster


def cut_between_transactions(cluster: Cluster, host: Host) -> None:
    """Cut `host` off at a moment none of its database sessions is inside a transaction.
    Cut off inside one, it would hold its row locks until PostgreSQL noticed the connection
    dead (TCP keepalive: hours), and the test would show that instead of a lost lease."""
    for _ in range(100):
        host.cut()
        busy = cluster.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE client_addr = :address"
            " AND state <> 'idle'",
            address=host.address,
        )[0][0]
        if not busy:
            return
        host.reconnect()
        time.sleep(0.02)
    pytest.fail(f"{host.name} was inside a transaction at every try")
