"""Engines land batches and run queries. Capabilities are data, never ``if engine == ...``.

The contract is :mod:`icefield.engines.base`. Built-in: ``local`` (DuckDB + Arrow, one process) and ``spark``
(Spark 4.1 with the Iceberg runtime, :mod:`icefield.engines.spark`). A registry maps names to lazy loaders.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from icefield.engines.base import Engine, EngineCapabilities
from icefield.errors import ConfigError

if TYPE_CHECKING:
    from icefield.config import Project

__all__ = ["Engine", "EngineCapabilities", "get_engine"]

_REGISTRY = {"local": "icefield.engines.local:LocalEngine", "spark": "icefield.engines.spark:SparkEngine"}


def get_engine(name: str, project: Project | None = None) -> Engine:
    """Instantiate the engine registered under ``name`` for ``project`` (whose settings an engine may read,
    e.g. the ``spark`` section; :meth:`Engine.for_project`)."""
    try:
        module, cls = _REGISTRY[name].split(":")
    except KeyError:
        raise ConfigError(f"engine: unknown engine {name!r}; use one of {sorted(_REGISTRY)}") from None
    engine: Engine = getattr(importlib.import_module(module), cls).for_project(project)
    return engine
