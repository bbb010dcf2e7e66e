"""The message contract between API and worker: the Celery app's configuration, the one task's
name and the one function that sends it. Torch-free, and it imports neither side: the API
enqueues through it, the worker builds its app from it (bnlab/worker/app.py).

A training job trains a group of cells (experiments that share one batch sequence); a lone
experiment is a group of one. Its message carries only the experiments' ids; the worker reads
their specs from SQL.
"""

from collections.abc import Callable, Sequence

from celery import Celery

from bnlab.settings import Settings
from bnlab.vocabulary import Queue

TRAIN = "bnlab.train"
# `send_training_job` bound to an app: how the worker queues jobs again (hand-back, reaper).
Enqueue = Callable[[list[int], Queue], None]


def make_celery(settings: Settings) -> Celery:
    """A Celery app for the broker `settings` name, configured as API and worker both need it.
    With the embedded broker it creates the broker's folders."""
    app = Celery("bnlab", broker=settings.broker_url)
    app.conf.update(
        task_default_queue="cpu",
        task_create_missing_queues=True,
        # A job is acknowledged when it ends, so a worker that dies mid-job leaves it queued,
        # and a worker takes one job at a time instead of hoarding the queue.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results live in SQL
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if settings.broker_url.startswith(("redis://", "rediss://")):
        app.conf.broker_transport_options = _redis_transport_options(settings)
    if settings.broker_url == "filesystem://":
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # else kombu writes ./control
            "store_processed": False,
        }
    return app


def _redis_transport_options(settings: Settings) -> dict[str, float]:
    """An unacknowledged job goes back to the queue after the visibility timeout; the sweep
    that puts it back runs every few seconds, not kombu's default ~100 s, so a job whose
    worker died is not left waiting long after its timeout."""
    timeout = settings.broker_visibility_timeout
    return {
        "visibility_timeout": timeout,
        "unacked_restore_interval": max(1.0, min(10.0, timeout / 2)),
        "unacked_restore_throttle": 1,
    }


def send_training_job(celery: Celery, experiment_ids: Sequence[int], queue: Queue) -> None:
    """Queue one job training these experiments as one group. Raises when the broker cannot
    take it."""
    celery.send_task(TRAIN, args=[list(experiment_ids)], queue=queue)
