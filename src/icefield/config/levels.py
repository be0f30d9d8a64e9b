"""The log levels a ``logs.level`` and ``--log-level`` may name: apart from :mod:`icefield.config.logs` so that
the command line reads them without loading pydantic (``icefield sql "select 1"`` stays light)."""

from __future__ import annotations

LEVELS = ("debug", "info", "warning", "error")
"""The log levels, most to least verbose."""
