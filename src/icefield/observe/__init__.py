"""Observability: the event stream of a run (:mod:`icefield.observe.events`) and JSON logs with correlation
ids. Metrics, lineage and audit observe the same events."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from icefield.config.secrets import redact


class RedactingFilter(logging.Filter):
    """Removes every resolved secret from log messages before the handler formats them. The message
    only: a traceback is formatted later, so the formatters (:class:`RedactingFormatter`,
    :class:`JsonFormatter`) redact their whole output too."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


class RedactingFormatter(logging.Formatter):
    """A text formatter whose whole output (message, traceback, stack) is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message; ``run_id``, ``pipeline`` and ``batch_id`` when
    the record has them (a handler with :class:`~icefield.observe.events.ContextFilter` sets them on every
    record emitted during a run); Airflow's ``dag_id``, ``task_id``, ``dag_run_id`` and ``try_number`` when
    the record has them (:class:`~icefield.observe.logs.AirflowFilter`); and the event's fields under ``event``
    for the lines of the logging observer."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key in ("run_id", "pipeline", "batch_id", "dag_id", "task_id", "dag_run_id", "try_number", "event"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["error"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return redact(json.dumps(out, ensure_ascii=False, default=str))
