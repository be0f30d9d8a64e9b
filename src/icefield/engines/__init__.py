"""Engines land batches and run queries. Capabilities are data, never ``if engine == ...``.

The contract is :mod:`icefield.engines.base`. Built-in: ``local`` (DuckDB + Arrow, one process). A registry
maps names to lazy loaders.
"""

from __future__ import annotations

import importlib

from icefield.engines.base import Engine, EngineCapabilities
from icefield.errors import ConfigError

__all__ = ["Engine", "EngineCapabilities", "get_engine"]

_REGISTRY = {"local": "icefield.engines.local:LocalEngine"}


def get_engine(name: str) -> Engine:
    """Instantiate the engine registered under ``name``."""
    try:
        module, cls = _REGISTRY[name].split(":")
    except KeyError:
        raise ConfigError(f"engine: unknown engine {name!r}; use one of {sorted(_REGISTRY)}") from None
    engine: Engine = getattr(importlib.import_module(module), cls)()
    return engine
