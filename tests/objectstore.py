"""A real S3-API server for the tests: moto's standalone server (`moto_server`, what s3fs's own
tests use), as a process of its own that a test can stop and start again on the same port, on
127.0.0.1 or on another address of this machine (tests/multihost: a bridge the hosts reach).

`object_store` (session-wide) puts the S3 endpoint and test credentials in this process's
environment, where bnlab reads them as it would in production (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, ...), and so do the bnlab processes the service tests start (they inherit
os.environ). One server per session: s3fs keeps one client per set of arguments, and the
endpoint is not one of them.
"""

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import s3fs

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
# Distinctive values: a test can check that no message or log line repeats the secret.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bnlab-test-key",
    "AWS_SECRET_ACCESS_KEY": "bnlab-test-secret-do-not-print",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class ObjectStore:
    port: int
    log: Path
    host: str = "127.0.0.1"
    refuse_credentials: bool = False  # moto checks none unless told to refuse every key
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        # moto checks signatures only after this many requests: 0 refuses every key at once.
        refusing = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if self.refuse_credentials else {}
        env = {**os.environ, **refusing}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(MOTO_SERVER), "-H", self.host, "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"moto_server is not listening on {self.port} after 30 s")

    def stop(self) -> None:
        """Killed, as a crashed server: moto keeps everything in memory, so every bucket goes."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def new_bucket(self) -> str:
        """An empty bucket of its own: its name."""
        name = f"bnlab-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name

    def make_bucket(self, name: str) -> None:
        self.filesystem().mkdir(name)

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object in the bucket: key -> bytes."""
        fs = self.filesystem()
        return {path.removeprefix(f"{bucket}/"): fs.cat_file(path) for path in fs.find(bucket)}

    def filesystem(self) -> s3fs.S3FileSystem:
        """A client of its own (not fsspec's cached one), so it sees the server as it is now."""
        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint,
            key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            skip_instance_cache=True,
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """moto's S3 server, with AWS_ENDPOINT_URL and test credentials in os.environ."""
    store = ObjectStore(free_port(), tmp_path_factory.mktemp("moto") / "moto.log")
    store.start()
    saved = {key: os.environ.get(key) for key in [*CREDENTIALS, "AWS_ENDPOINT_URL"]}
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=store.endpoint)
    try:
        yield store
    finally:
        store.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
