"""The `bnlab` command: the embedded service in one process tree, or its parts one at a time."""

import logging
import os
import signal
import sys
from typing import Annotated

import typer

from bnlab import artifacts, logs
from bnlab.commands import bundles, experiments, predictions, reproduce, sweeps
from bnlab.settings import get_settings
from bnlab.vocabulary import Queue

app = typer.Typer(help="bnlab: the batch-normalization study as a service.", no_args_is_help=True)
# Commands that talk to a running API over HTTP (--url / BNLAB_URL).
experiments.app.command("bundle")(bundles.bundle)
experiments.app.command("import")(bundles.import_bundle)
app.add_typer(experiments.app, name="experiment")
app.add_typer(sweeps.app, name="sweep")
app.command()(predictions.predict)
app.command()(predictions.collapse)
app.command()(reproduce.reproduce)

GRACEFUL_SHUTDOWN_SECONDS = 5


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
    from uvicorn.config import LOGGING_CONFIG

    from bnlab.api.core.auth import access_notice

    settings = get_settings()
    logs.configure(settings.log_format)
    _check_checkpoint_store()
    logging.getLogger("bnlab.api").log(*access_notice(settings))
    uvicorn.run(
        "bnlab.api.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        # JSON: uvicorn's own lines go through bnlab's handler too, instead of its text config.
        log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
        # An event stream lasts as long as its experiment: on shutdown, cut it after a grace
        # period (its client reconnects with Last-Event-ID) rather than wait for the end.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


@app.command()
def worker(
    queue: Annotated[Queue, typer.Option(help="The queue this worker takes jobs from.")] = "cpu",
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at once (cpu queue).")] = 1,
) -> None:
    """Run a Celery worker for one queue. GPU workers use the solo pool: no fork after CUDA."""
    # Now, not only when Celery sets up logging: its start-up warnings are log lines too.
    logs.configure(get_settings().log_format)
    _check_checkpoint_store()
    _yield_cpu_to_api(get_settings().worker_nice)
    from bnlab.worker.app import worker_app

    celery_app = worker_app(get_settings())
    pool = ["--pool", "solo"] if queue == "gpu" else ["--pool", "prefork", "-c", str(concurrency)]
    # A node name of its own, so several workers on one host are told apart.
    name = f"bnlab-{queue}-{os.getpid()}@%h"
    # JSON logs: no startup banner either (`celery --quiet`), so every line is a JSON object.
    quiet = ["--quiet"] if get_settings().log_format == "json" else []
    celery_app.worker_main([*quiet, "worker", "-Q", queue, "-n", name, "--loglevel", "INFO", *pool])


def _check_checkpoint_store() -> None:
    """A checkpoint store that cannot be opened, reached or written stops the command now, with
    one line saying what to fix, instead of failing every job (or download) later."""
    try:
        artifacts.check(get_settings().checkpoint_dir)
    except artifacts.StoreError as error:
        typer.echo(f"bnlab: {error}", err=True)
        raise typer.Exit(1) from None


def _yield_cpu_to_api(niceness: int) -> None:
    """Lower this process's CPU priority to `niceness` before Celery starts a thread or forks
    its pool: both inherit it, so training waits whenever the API (normal priority) needs a
    core. Only ever lowered: an unprivileged process cannot raise it back."""
    now = os.nice(max(0, niceness - os.nice(0)))
    logging.getLogger("bnlab.worker").info(
        "training at niceness %d (BNLAB_WORKER_NICE=%d): the API comes first for the CPU",
        now,
        niceness,
    )


@app.command()
def up() -> None:
    """The embedded default: migrate, start one worker process (started again if it dies, see
    bnlab/supervisor.py), serve the API. Ctrl-C stops all."""
    from bnlab.supervisor import Supervisor

    settings = get_settings()
    logs.configure(settings.log_format)
    _check_checkpoint_store()  # before the worker starts: it would only fail the same way
    migrate()
    typer.echo(f"bnlab on http://{settings.host}:{settings.port} (bound to {settings.host} only)")
    supervisor = Supervisor(
        [sys.executable, "-m", "bnlab.cli", "worker", "--queue", "cpu"], "cpu", settings.state_dir
    )
    supervisor.start()
    # SIGTERM on `bnlab up` must stop the worker too, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        api()
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop()


if __name__ == "__main__":
    app()
