"""Logging for API and worker: plain text for a person, or one JSON object per line for a log
collector (BNLAB_LOG_FORMAT=json), with the experiment id on every line written for a job.

The id comes from `experiment_id`, a context variable the worker sets for the length of a job
(bnlab/worker/job_logs.py), or from a record's own `experiment_id` attribute (`extra=`).
"""

import json
import logging
import sys
from collections.abc import Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]

experiment_id: ContextVar[int | None] = ContextVar("experiment_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ExperimentIdFilter(logging.Filter):
    """Puts the current job's experiment id on each record that does not carry one already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "experiment_id", None) is None:
            record.experiment_id = experiment_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time, level, logger, message, experiment_id
    (when known), and the traceback as `exception` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        experiment = getattr(record, "experiment_id", None)
        if experiment is not None:
            line["experiment_id"] = experiment
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exception"] = self.formatStack(record.stack_info)
        # default=str: a message argument JSON cannot encode must not lose the line.
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        experiment = getattr(record, "experiment_id", None)
        return text if experiment is None else f"{text} [experiment {experiment}]"


def configure(
    log_format: LogFormat,
    level: int | str = logging.INFO,
    filters: Sequence[logging.Filter] = (),
) -> None:
    """Send every logger's records to stderr in `log_format`, replacing any earlier handlers
    of the root logger (so calling it twice, as Celery's pool processes do, is harmless).
    `filters` run before the experiment id is looked up, and may supply it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    for extra_filter in (*filters, ExperimentIdFilter()):
        handler.addFilter(extra_filter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # Python's warnings become records too, so a JSON log holds nothing but JSON.
    logging.captureWarnings(True)
