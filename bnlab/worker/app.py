"""The Celery app: one per process, configured from `Settings`, shared by API (to enqueue) and
worker (to run). Importing it does not import torch; the tasks module does, in the worker only.
"""

from celery import Celery

from bnlab.settings import Settings, get_settings

RUN_EXPERIMENT = "bnlab.run_experiment"


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


celery_app = make_celery(get_settings())


def enqueue_experiment(experiment_id: int, queue: str) -> None:
    """Queue the job; it carries only the id, the spec is read from SQL."""
    celery_app.send_task(RUN_EXPERIMENT, args=[experiment_id], queue=queue)
