"""The worker's job: turn a stored experiment into a run of the paired trainer, and the trainer's
callbacks into SQL writes (at sample points only, never per training step)."""

import logging
import socket
import threading
from datetime import timedelta

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from bnlab.settings import get_settings
from bnlab.store import queries
from bnlab.store.db import make_engine, make_sessionmaker
from bnlab.worker.app import RUN_EXPERIMENT, celery_app
from bnlab.worker.job import ExperimentJob

log = logging.getLogger(__name__)


@celery_app.task(name=RUN_EXPERIMENT)
def run_experiment(experiment_id: int) -> None:
    ExperimentJob(experiment_id, get_settings(), hostname=socket.gethostname()).run()


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # A forked pool process must not share the parent's pooled database connections.
    make_engine(get_settings().database_url).dispose(close=False)


# Workers heart-beat into SQL, whatever the broker: /health counts them per queue and the API
# can tell a user that no worker serves the queue their experiment waits in.

_stop_heartbeat = threading.Event()


@worker_ready.connect
def _start_heartbeat(sender: object, **_: object) -> None:
    queues = [queue.name for queue in sender.task_consumer.queues]  # type: ignore[attr-defined]
    hostname = str(getattr(sender, "hostname", socket.gethostname()))
    thread = threading.Thread(
        target=_heartbeat_loop, args=(hostname, queues[0]), daemon=True, name="bnlab-heartbeat"
    )
    thread.start()


@worker_shutdown.connect
def _stop(sender: object, **_: object) -> None:
    _stop_heartbeat.set()
    settings = get_settings()
    with make_sessionmaker(settings.database_url)() as session:
        queries.remove_worker(session, str(getattr(sender, "hostname", "")))
        session.commit()


def _heartbeat_loop(hostname: str, queue: str) -> None:
    settings = get_settings()
    interval = timedelta(seconds=settings.worker_heartbeat_seconds).total_seconds()
    while True:
        try:
            with make_sessionmaker(settings.database_url)() as session:
                queries.heartbeat(session, hostname, queue)
                session.commit()
        except Exception:  # the database may be restarting; the next beat tries again
            log.warning("worker heartbeat failed", exc_info=True)
        if _stop_heartbeat.wait(interval):
            return
