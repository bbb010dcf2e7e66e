"""The API's side of the broker: queue a job, and say whether the broker answers.

The API builds its own Celery app from its own `Settings` (the contract's `make_celery`): an app
made by `create_app(settings)` must queue jobs on the broker those settings name. It imports
nothing of the worker's.
"""

import os

from celery import Celery

from bnlab.api.core.redact import reason
from bnlab.jobs import make_celery, send_training_job
from bnlab.settings import Settings
from bnlab.vocabulary import Queue

CHECK_TIMEOUT_SECONDS = 2.0


class Broker:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._celery: Celery = make_celery(settings)

    def enqueue(self, experiment_ids: list[int], queue: Queue) -> None:
        """One job training these experiments as one group (a lone experiment: a group of
        one). Raises when the broker cannot take it."""
        send_training_job(self._celery, experiment_ids, queue)

    def check(self) -> str:
        """ "ok", or what is wrong, quickly: a health probe must not hang on a dead broker."""
        if self._settings.broker_url == "filesystem://":
            # The embedded broker is a folder: reachable means there and writable.
            folder = self._settings.broker_dir / "queue"
            if not folder.is_dir():
                return f"the broker folder {folder} does not exist"
            if not os.access(folder, os.W_OK | os.X_OK):
                return f"the broker folder {folder} is not writable"
            return "ok"
        try:
            with self._celery.connection_for_write(connect_timeout=CHECK_TIMEOUT_SECONDS) as conn:
                conn.ensure_connection(
                    max_retries=1, interval_start=0, timeout=CHECK_TIMEOUT_SECONDS
                )
        except Exception as error:  # any failure to connect is the answer, not a crash
            return f"unreachable: {self.describe(error)}"
        return "ok"

    def describe(self, error: BaseException) -> str:
        return reason(error, self._settings.broker_url)
