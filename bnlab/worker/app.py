"""The Celery app: one per process, configured from `Settings`, shared by API (to enqueue) and
worker (to run). Importing it does not import torch; the tasks module does, in the worker only.
"""

from celery import Celery

from bnlab.settings import Settings, get_settings
from bnlab.worker import job_logs

RUN_EXPERIMENT = "bnlab.run_experiment"
# Several cells of a sweep trained as one batched model (bnlab/worker/sweep_job.py).
RUN_SWEEP_GROUP = "bnlab.run_sweep_group"


def make_celery(settings: Settings) -> Celery:
    app = Celery("bnlab", broker=settings.broker_url, include=["bnlab.worker.tasks"])
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
        app.conf.broker_transport_options = redis_transport_options(settings)
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


def redis_transport_options(settings: Settings) -> dict[str, float]:
    """An unacknowledged job goes back to the queue after the visibility timeout; the sweep
    that puts it back runs every few seconds, not kombu's default ~100 s, so a job whose
    worker died is not left waiting long after its timeout."""
    timeout = settings.broker_visibility_timeout
    return {
        "visibility_timeout": timeout,
        "unacked_restore_interval": max(1.0, min(10.0, timeout / 2)),
        "unacked_restore_throttle": 1,
    }


celery_app = make_celery(get_settings())
job_logs.install(RUN_EXPERIMENT)


def enqueue_experiment(experiment_id: int, queue: str) -> None:
    """Queue the job; it carries only the id, the spec is read from SQL."""
    celery_app.send_task(RUN_EXPERIMENT, args=[experiment_id], queue=queue)


def enqueue_sweep_group(experiment_ids: list[int], queue: str) -> None:
    """Queue cells of a sweep that train as one batched model: only their ids."""
    celery_app.send_task(RUN_SWEEP_GROUP, args=[experiment_ids], queue=queue)
