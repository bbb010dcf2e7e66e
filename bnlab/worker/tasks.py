"""The worker's job: turn a stored experiment into a run of the paired trainer, and the trainer's
callbacks into SQL writes (at sample points only, never per training step)."""

import logging
import socket
import threading
from datetime import timedelta

from celery import Task
from celery.exceptions import Reject
from celery.signals import (
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from bnlab.settings import get_settings
from bnlab.store import queries
from bnlab.store.db import make_engine, make_sessionmaker
from bnlab.worker import shutdown
from bnlab.worker.app import (
    RUN_EXPERIMENT,
    RUN_SWEEP_GROUP,
    celery_app,
    enqueue_experiment,
    enqueue_sweep_group,
)
from bnlab.worker.job import ExperimentJob
from bnlab.worker.reaper import Reaper
from bnlab.worker.sweep_job import SweepGroupJob

log = logging.getLogger(__name__)


@celery_app.task(name=RUN_EXPERIMENT, bind=True)
def run_experiment(self: Task, experiment_id: int) -> None:
    refuse_while_shutting_down()
    ExperimentJob(
        experiment_id,
        get_settings(),
        # The node name (bnlab-cpu-<pid>@host): tells apart two workers on one host.
        worker=str(self.request.hostname or socket.gethostname()),
        shutting_down=shutdown.requested,
        hand_back=enqueue_experiment,
    ).run()


@celery_app.task(name=RUN_SWEEP_GROUP, bind=True)
def run_sweep_group(self: Task, experiment_ids: list[int]) -> None:
    refuse_while_shutting_down()
    SweepGroupJob(
        experiment_ids,
        get_settings(),
        worker=str(self.request.hostname or socket.gethostname()),
        shutting_down=shutdown.requested,
        hand_back=enqueue_sweep_group,
    ).run()


def refuse_while_shutting_down() -> None:
    """A worker in its warm shutdown may still be handed a message (the file broker keeps
    delivering until the worker stops consuming), even the one a job handed back a moment ago:
    it goes back to the queue untouched, for the next worker."""
    if shutdown.requested():
        raise Reject("this worker is shutting down", requeue=True)


@worker_shutting_down.connect
def _tell_jobs(**_: object) -> None:
    # SIGTERM: the running job hands its experiment back at its next sample point, and Celery's
    # warm shutdown, which waits for it, ends soon after.
    shutdown.request()


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
    slots = int(getattr(getattr(sender, "controller", None), "concurrency", 1) or 1)
    reaper = Reaper(queues[0], slots, get_settings(), enqueue_experiment)
    thread = threading.Thread(
        target=_heartbeat_loop,
        args=(hostname, queues[0], reaper),
        daemon=True,
        name="bnlab-heartbeat",
    )
    thread.start()


@worker_shutdown.connect
def _stop(sender: object, **_: object) -> None:
    _stop_heartbeat.set()
    settings = get_settings()
    with make_sessionmaker(settings.database_url)() as session:
        queries.remove_worker(session, str(getattr(sender, "hostname", "")))
        session.commit()


def _heartbeat_loop(hostname: str, queue: str, reaper: Reaper) -> None:
    settings = get_settings()
    interval = timedelta(seconds=settings.worker_heartbeat_seconds).total_seconds()
    sessions = make_sessionmaker(settings.database_url)
    while True:
        try:
            with sessions() as session:
                queries.heartbeat(session, hostname, queue)
                session.commit()
        except Exception:  # the database may be restarting; the next beat tries again
            log.warning("worker heartbeat failed", exc_info=True)
        # Beside the heartbeat: experiments whose worker died, or whose message was lost.
        reaper.tick(sessions)
        if _stop_heartbeat.wait(interval):
            return
