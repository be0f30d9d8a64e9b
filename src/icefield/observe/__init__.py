"""Observability: JSON logs with correlation ids (metrics and lineage follow the same results)."""

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
    """One JSON object per line: time, level, logger, message, and the run id when set."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key in ("run_id", "pipeline", "batch_id"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["error"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return redact(json.dumps(out, ensure_ascii=False))
