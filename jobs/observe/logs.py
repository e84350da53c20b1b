"""Log lines as text or JSON (``JOBRUNNER_LOG_FORMAT``), carrying the context of the job running.

The worker sets :data:`job_context` around each job (claim to outcome); :class:`JobContextFilter`,
on every handler :func:`configure_logging` formats, copies it onto each record, so a handler's own
``logging`` calls carry the job's id, kind, queue, attempt and trace id too. In JSON (rendered by
python-json-logger) each line is one object: ``time``, ``level``, ``logger``, ``message``, then
those fields and any ``extra``.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable, Mapping
from typing import Any

#: The job the current thread runs: its log fields (job_id, kind, queue, attempt, trace_id).
job_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "jobrunner_log_context", default=None
)
#: Loggers with handlers of their own that do not propagate to the root (uvicorn's).
OWN_HANDLER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JobContextFilter(logging.Filter):
    """Adds the current job's fields to each record (a field the call gave in ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = job_context.get()
        if context:
            for key, value in context.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message, and the extras."""
    from pythonjsonlogger.json import JsonFormatter  # only processes that log JSON need it

    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        timestamp="time",
        rename_fields={"levelname": "level", "name": "logger"},
        json_ensure_ascii=False,
    )


def configure_logging(log_format: str, *, extra_loggers: Iterable[str] = OWN_HANDLER_LOGGERS) -> None:
    """Give every handler of the root logger (one on stderr if it has none) and of ``extra_loggers``
    the job-context filter and, for ``json``, the JSON formatter. Call after the process's own
    logging setup (uvicorn's, Dramatiq's, ``basicConfig``)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    handlers = [*root.handlers, *(h for name in extra_loggers for h in logging.getLogger(name).handlers)]
    formatter = json_formatter() if log_format == "json" else None
    for handler in handlers:
        if not any(isinstance(f, JobContextFilter) for f in handler.filters):
            handler.addFilter(JobContextFilter())
        if formatter is not None:
            handler.setFormatter(formatter)
