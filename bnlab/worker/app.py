"""The worker's Celery app, built where a worker starts (`bnlab worker`), never at import: the
contract's app (bnlab/jobs.py) with the training task, the job logs and the worker's signals
(SIGTERM told to running jobs, fresh database connections in pool processes, heartbeats and the
reaper). The pool processes Celery forks inherit it.
"""

import logging
import socket
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import (
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from bnlab.jobs import TRAIN, Enqueue, make_celery, send_training_job
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.db import make_engine, make_sessionmaker
from bnlab.vocabulary import QUEUES, Queue
from bnlab.worker import job_logs, shutdown
from bnlab.worker.job import TrainingJob
from bnlab.worker.reaper import Reaper

log = logging.getLogger(__name__)


def worker_app(settings: Settings) -> Celery:
    """The app a worker runs, for `settings`. Call it once per worker process."""
    app = make_celery(settings)
    job_logs.install(TRAIN)

    def send(experiment_ids: list[int], queue: Queue) -> None:
        send_training_job(app, experiment_ids, queue)

    def train(task: Task, experiment_ids: list[int]) -> None:
        refuse_while_shutting_down()
        TrainingJob(
            experiment_ids,
            settings,
            # The node name (bnlab-cpu-<pid>@host): tells apart two workers on one host.
            worker=str(task.request.hostname or socket.gethostname()),
            shutting_down=shutdown.requested,
            hand_back=send,
        ).run()

    app.task(name=TRAIN, bind=True)(train)
    heartbeat = _Heartbeat(settings, send)
    worker_shutting_down.connect(_tell_jobs, weak=False, dispatch_uid="bnlab-shutting-down")
    worker_process_init.connect(
        lambda **_: _fresh_connections(settings), weak=False, dispatch_uid="bnlab-pool-init"
    )
    worker_ready.connect(heartbeat.start, weak=False, dispatch_uid="bnlab-heartbeat")
    worker_shutdown.connect(heartbeat.stop, weak=False, dispatch_uid="bnlab-heartbeat-stop")
    return app


def refuse_while_shutting_down() -> None:
    """A worker in its warm shutdown may still be handed a message (the file broker keeps
    delivering until the worker stops consuming), even the one a job handed back a moment ago:
    it goes back to the queue untouched, for the next worker."""
    if shutdown.requested():
        raise Reject("this worker is shutting down", requeue=True)


def _tell_jobs(**_: object) -> None:
    # SIGTERM: the running job hands its experiments back at its next sample point, and
    # Celery's warm shutdown, which waits for it, ends soon after.
    shutdown.request()


def _fresh_connections(settings: Settings) -> None:
    # A forked pool process must not share the parent's pooled database connections.
    make_engine(settings.database_url).dispose(close=False)


class _Heartbeat:
    """Workers heart-beat into SQL, whatever the broker: /health counts them per queue and the
    API can tell a user that no worker serves the queue their experiment waits in. Beside each
    beat, the reaper queues again the experiments whose worker died or whose message was lost.
    """

    def __init__(self, settings: Settings, send: Enqueue) -> None:
        self.settings = settings
        self.send = send
        self.stopped = threading.Event()

    def start(self, sender: Any, **_: object) -> None:
        """`sender`: the worker's consumer, once it is ready."""
        queues: Sequence[Any] = sender.task_consumer.queues
        # The vocabulary's word for the queue this worker serves (ValueError for another).
        queue = QUEUES[QUEUES.index(queues[0].name)]
        hostname = str(getattr(sender, "hostname", socket.gethostname()))
        slots = int(getattr(getattr(sender, "controller", None), "concurrency", 1) or 1)
        reaper = Reaper(queue, slots, self.settings, self.send)
        thread = threading.Thread(
            target=self._loop, args=(hostname, queue, reaper), daemon=True, name="bnlab-heartbeat"
        )
        thread.start()

    def stop(self, sender: Any, **_: object) -> None:
        self.stopped.set()
        with make_sessionmaker(self.settings.database_url)() as session:
            queries.remove_worker(session, str(getattr(sender, "hostname", "")))
            session.commit()

    def _loop(self, hostname: str, queue: Queue, reaper: Reaper) -> None:
        interval = timedelta(seconds=self.settings.worker_heartbeat_seconds).total_seconds()
        sessions = make_sessionmaker(self.settings.database_url)
        while True:
            try:
                with sessions() as session:
                    queries.heartbeat(session, hostname, queue)
                    session.commit()
            except Exception:  # the database may be restarting; the next beat tries again
                log.warning("worker heartbeat failed", exc_info=True)
            reaper.tick(sessions)
            if self.stopped.wait(interval):
                return
