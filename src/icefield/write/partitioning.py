"""Partition specs from config: ``region``, ``day(updated_at)``, ``bucket(16, id)``, ``truncate(4, sku)``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from icefield.errors import ConfigError

_EXPR = re.compile(r"^\s*(?:(\w+)\s*\(\s*(?:(\d+)\s*,\s*)?(\w+)\s*\)|(\w+))\s*$")
_TIME = {"year", "month", "day", "hour", "identity"}
_PARAM = {"bucket", "truncate"}


@dataclass(frozen=True)
class PartitionField:
    source: str
    transform: str  # pyiceberg's transform string: identity, day, bucket[16], truncate[4]
    name: str


def parse_partition(expr: str) -> PartitionField:
    """Parse one ``partition_by`` entry. Raises :class:`ConfigError` naming the entry and the forms."""
    m = _EXPR.match(expr)
    forms = "column, year(col), month(col), day(col), hour(col), bucket(N, col), truncate(W, col)"
    if not m:
        raise ConfigError(f"target.partition_by: {expr!r} is not a partition expression; use one of: {forms}")
    func, param, col, bare = m.groups()
    if bare:
        return PartitionField(bare, "identity", bare)
    func = func.lower()
    if func in _TIME:
        if param:
            raise ConfigError(f"target.partition_by: {expr!r}: {func}() takes only a column; write {func}({col})")
        return PartitionField(col, func, col if func == "identity" else f"{col}_{func}")
    if func in _PARAM:
        if not param:
            raise ConfigError(f"target.partition_by: {expr!r}: {func} needs a width, e.g. {func}(16, {col})")
        if int(param) < 1:
            raise ConfigError(
                f"target.partition_by: {expr!r}: the {func} width must be a positive number, e.g. {func}(16, {col})"
            )
        return PartitionField(col, f"{func}[{param}]", f"{col}_{func}")
    raise ConfigError(f"target.partition_by: {expr!r}: unknown transform {func!r}; use one of: {forms}")
