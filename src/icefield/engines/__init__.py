"""Engines run merges, transforms and queries. Capabilities are data, never ``if engine == ...``.

Built-in: ``local`` (DuckDB + Arrow, one process). A registry maps names to lazy loaders.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from icefield.errors import ConfigError

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from icefield.config.models import TargetConfig
    from icefield.write import TableWriter


@dataclass(frozen=True)
class EngineCapabilities:
    supports_merge: bool = False
    supports_sql: bool = False
    distributed: bool = False


@dataclass
class MergePlan:
    """The outcome of planning a merge: data files to remove and rows to write in their place."""

    remove: list[Any] = field(default_factory=list)
    rewrite: list[pa.Table] = field(default_factory=list)
    rows_written: int = 0
    rows_deleted: int = 0
    rows_updated: int = 0
    rows_inserted: int = 0

    def add_files(self, table: Table, writer: TableWriter) -> list[Any]:
        files: list[Any] = []
        for part in self.rewrite:
            if part.num_rows:
                files.extend(writer.write_files(table, part))
        return files


class Engine:
    """Base class of engines."""

    name: ClassVar[str] = "base"
    capabilities: ClassVar[EngineCapabilities] = EngineCapabilities()

    def merge(self, table: Table, data: pa.Table, target: TargetConfig) -> MergePlan:
        """Plan a merge of ``data`` (already typed as the table) into ``table`` by ``target.keys``."""
        raise NotImplementedError


_REGISTRY = {"local": "icefield.engines.local:LocalEngine"}


def get_engine(name: str) -> Engine:
    """Instantiate the engine registered under ``name``."""
    try:
        module, cls = _REGISTRY[name].split(":")
    except KeyError:
        raise ConfigError(f"engine: unknown engine {name!r}; use one of {sorted(_REGISTRY)}") from None
    engine: Engine = getattr(importlib.import_module(module), cls)()
    return engine
