"""The worker's logs: bnlab's format (BNLAB_LOG_FORMAT) instead of Celery's, and the experiment
id on every line written about a job of one experiment (a group's lines name their ids).

- In the process that runs the job (a pool process, or the worker itself with the solo pool)
  the id is in the `bnlab.logs.experiment_id` context variable from task_prerun to
  task_postrun: bnlab's own lines and Celery's "Task ... succeeded/failed" lines get it.
- Celery's "Task ... received" line is written by the worker's main process before any of
  that; its record carries the task's arguments, and the id is read from them.
"""

import ast
import logging
from typing import Any

from celery import Task
from celery.signals import setup_logging, task_postrun, task_prerun

from bnlab import logs
from bnlab.settings import get_settings

_tasks_with_experiment: set[str] = set()


def install(task_name: str) -> None:
    """Log the worker bnlab's way; `task_name`'s first argument is a list of experiment ids."""
    _tasks_with_experiment.add(task_name)
    setup_logging.connect(_configure, weak=False, dispatch_uid="bnlab-logs")
    task_prerun.connect(_job_starts, weak=False, dispatch_uid="bnlab-job-starts")
    task_postrun.connect(_job_ends, weak=False, dispatch_uid="bnlab-job-ends")


def _configure(loglevel: int | str | None = None, **_: Any) -> None:
    # A receiver here means Celery leaves logging alone (no handlers, no stdout redirect).
    level = loglevel or logging.INFO
    logs.configure(get_settings().log_format, level, filters=[ReceivedTaskFilter()])


def _job_starts(task: Task, args: tuple[Any, ...] | None = None, **_: Any) -> None:
    if task.name in _tasks_with_experiment and args:
        logs.experiment_id.set(_lone_experiment(args[0]))


def _job_ends(task: Task, **_: Any) -> None:
    if task.name in _tasks_with_experiment:
        logs.experiment_id.set(None)


class ReceivedTaskFilter(logging.Filter):
    """The experiment id of Celery's "Task ... received" line, from the task's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if (
            getattr(record, "experiment_id", None) is None
            and isinstance(data, dict)
            and data.get("name") in _tasks_with_experiment
        ):
            record.experiment_id = _first_argument(data.get("args"))
        return True


def _first_argument(argsrepr: object) -> int | None:
    try:
        # Celery's repr of the arguments: "[[3]]" or "([3],)"
        args = ast.literal_eval(str(argsrepr))
        return _lone_experiment(args[0])
    except (ValueError, SyntaxError, TypeError, IndexError):
        return None


def _lone_experiment(experiment_ids: Any) -> int | None:
    """The id of a job's one experiment; None for a group of several."""
    return int(experiment_ids[0]) if len(experiment_ids) == 1 else None
