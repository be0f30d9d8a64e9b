"""Where icefield's log lines go: the ``logs:`` block of ``icefield.yaml`` (``docs/logs.md``).

::

    logs:
      format: json            # json lines, or text (the default)
      level: info             # debug, info, warning (the default), error
      file: logs/icefield.jsonl   # instead of stderr; relative to the project folder
      ship:                   # and to a central log store (VictoriaLogs' JSON lines ingestion)
        url: http://127.0.0.1:9428
        stream_fields: [pipeline]
        headers: {Authorization: "Bearer ${env:VL_TOKEN}"}

The CLI's ``--log-format``, ``--log-level``, ``-v``, ``--log-file`` and ``--log-ship`` win over these keys.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from icefield.config.levels import LEVELS
from icefield.config.secrets import has_reference

__all__ = ["LEVELS", "LogShipConfig", "LogsConfig", "check_ship_url"]


INGEST_PATH = "/insert/jsonline"
"""VictoriaLogs' JSON lines ingestion endpoint, appended to ``logs.ship.url`` unless the URL ends with it."""

_URL = re.compile(r"^https?://[^/\s?#]+(/[^\s?#]*)?$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def check_ship_url(url: str, where: str = "logs.ship.url") -> str:
    """``url`` if it is an http(s) URL of a log store (a ``${env:...}`` reference passes, checked once
    resolved); raises ValueError naming ``where``, the value and an example."""
    if not has_reference(url) and not _URL.match(url):
        raise ValueError(
            f"{where} {url!r} is not an http(s) URL of a log store; give the VictoriaLogs server, e.g. "
            "http://127.0.0.1:9428 (icefield posts to its /insert/jsonline endpoint)"
        )
    return url


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogShipConfig(_Model):
    """Shipping to VictoriaLogs: every log line, as a JSON object, is posted in batches to
    ``<url>/insert/jsonline`` by a background thread; a store that is down or slow never blocks or fails a
    run (after ``retries`` the batch is dropped with a warning on the local log).

    ``stream_fields`` are the fields that name a log stream in VictoriaLogs (few values each: never
    ``run_id`` or ``batch_id``); ``headers`` go with every request (an ``Authorization`` header for a proxy,
    ``AccountID``/``ProjectID`` for a multi-tenant cluster), values may be ``${env:...}``/``${file:...}``
    references; ``batch_size`` lines or ``flush_seconds`` make a batch, whichever comes first; ``queue_size``
    lines wait at most (more are dropped, counted in a warning)."""

    url: str
    stream_fields: list[str] = Field(default_factory=lambda: ["pipeline"])
    headers: dict[str, str] = Field(default_factory=dict)
    batch_size: int = Field(default=500, ge=1, le=100_000)
    flush_seconds: float = Field(default=1.0, gt=0, le=60)
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    retries: int = Field(default=3, ge=0, le=10)
    queue_size: int = Field(default=10_000, ge=1, le=10_000_000)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_ship_url(v)

    @field_validator("stream_fields")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if not _FIELD.match(f)]
        if bad:
            raise ValueError(f"logs.ship.stream_fields: {bad!r} are not field names; use names such as pipeline, dag_id, logger")
        unbounded = [f for f in v if f in ("run_id", "batch_id", "dag_run_id", "message", "ts")]
        if unbounded:
            raise ValueError(
                f"logs.ship.stream_fields: {unbounded!r} take a new value at every run or line, which would make a "
                "stream each; keep them as plain fields (they are searchable as they are) and stream by pipeline"
            )
        return v


class LogsConfig(_Model):
    """The ``logs:`` block: the lines' ``format`` (``text`` or ``json`` lines carrying ``run_id``,
    ``pipeline``, ``batch_id`` and Airflow's ``dag_id``, ``task_id``, ``dag_run_id``, ``try_number``), their
    ``level``, the ``file`` they are appended to instead of stderr (relative to the project folder) and
    where they are shipped (``ship``)."""

    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "warning"
    file: str | None = None
    ship: LogShipConfig | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, v: object) -> object:
        if isinstance(v, str) and v.lower() in LEVELS:
            return v.lower()
        if isinstance(v, str) and v.lower() == "warn":
            return "warning"
        raise ValueError(f"logs.level {v!r} is not a level; use one of {', '.join(LEVELS)}")

    @field_validator("file")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("logs.file is empty; give a path (e.g. logs/icefield.jsonl) or remove the key to log to stderr")
        return v
