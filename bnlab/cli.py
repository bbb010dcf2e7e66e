"""The `bnlab` command: the embedded service in one process tree, or its parts one at a time."""

import os
import signal
import subprocess
import sys
from enum import StrEnum
from typing import Annotated

import typer

from bnlab.settings import get_settings

app = typer.Typer(help="bnlab: the batch-normalization study as a service.", no_args_is_help=True)


class Queue(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (alembic upgrade head)."""
    from bnlab.store.migrate import upgrade

    upgrade(get_settings().database_url)
    typer.echo("database schema is up to date")


@app.command()
def api() -> None:
    """Serve the HTTP API (uvicorn) on BNLAB_HOST:BNLAB_PORT."""
    import uvicorn

    settings = get_settings()
    uvicorn.run("bnlab.api.main:create_app", factory=True, host=settings.host, port=settings.port)


@app.command()
def worker(
    queue: Annotated[
        Queue, typer.Option(help="The queue this worker takes jobs from.")
    ] = Queue.cpu,
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at once (cpu queue).")] = 1,
) -> None:
    """Run a Celery worker for one queue. GPU workers use the solo pool: no fork after CUDA."""
    from bnlab.worker.app import celery_app

    pool = (
        ["--pool", "solo"] if queue is Queue.gpu else ["--pool", "prefork", "-c", str(concurrency)]
    )
    # A node name of its own, so several workers on one host are told apart.
    name = f"bnlab-{queue.value}-{os.getpid()}@%h"
    celery_app.worker_main(["worker", "-Q", queue.value, "-n", name, "--loglevel", "INFO", *pool])


@app.command()
def up() -> None:
    """The embedded default: migrate, start one worker process, serve the API. Ctrl-C stops all."""
    settings = get_settings()
    migrate()
    typer.echo(f"bnlab on http://{settings.host}:{settings.port} (bound to {settings.host} only)")
    worker_process = subprocess.Popen(
        [sys.executable, "-m", "bnlab.cli", "worker", "--queue", "cpu"], env=os.environ.copy()
    )
    # SIGTERM on `bnlab up` must stop the worker too, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        api()
    except KeyboardInterrupt:
        pass
    finally:
        worker_process.terminate()
        try:
            worker_process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_process.kill()


if __name__ == "__main__":
    app()
