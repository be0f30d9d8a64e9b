"""Partition expressions of ``target.partition_by``: ``region``, ``day(updated_at)``, ``bucket(16, id)``,
``truncate(4, sku)``.

They are parsed and checked when the configuration loads, before any table exists: a spec fixed at a
table's creation cannot be fixed later, so nothing that cannot work may reach it. Whether a transform fits
its column's type needs the schema; the writer checks it before it creates the table
(:func:`icefield.iceberg.partitioning.check_partition_types`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from icefield.errors import ConfigError

_EXPR = re.compile(r"^\s*(?:(\w+)\s*\(\s*(?:(\d+)\s*,\s*)?(\w+)\s*\)|(\w+))\s*$")
_TIME = {"year", "month", "day", "hour"}
_PARAM = {"bucket", "truncate"}
FORMS = "column, year(col), month(col), day(col), hour(col), bucket(N, col), truncate(W, col)"
MAX_PARAMETER = 2**31 - 1
"""Iceberg stores a bucket count or a truncate width as a 32-bit signed integer."""


@dataclass(frozen=True)
class PartitionField:
    source: str
    transform: str  # pyiceberg's transform string: identity, day, bucket[16], truncate[4]
    name: str

    @property
    def function(self) -> str:
        """The transform without its parameter: ``identity``, ``day``, ``bucket``..."""
        return self.transform.split("[", 1)[0]


def parse_partition(expr: str) -> PartitionField:
    """Parse one ``partition_by`` entry. Raises :class:`ConfigError` naming the entry and the forms."""
    m = _EXPR.match(expr)
    if not m:
        raise ConfigError(f"target.partition_by: {expr!r} is not a partition expression; use one of: {FORMS}")
    func, param, col, bare = m.groups()
    if bare:
        return PartitionField(bare, "identity", bare)
    func = func.lower()
    if func in _TIME or func == "identity":
        if param:
            raise ConfigError(f"target.partition_by: {expr!r}: {func}() takes only a column; write {func}({col})")
        return PartitionField(col, func, col if func == "identity" else f"{col}_{func}")
    if func in _PARAM:
        if not param:
            raise ConfigError(f"target.partition_by: {expr!r}: {func} needs a width, e.g. {func}(16, {col})")
        if not 1 <= int(param) <= MAX_PARAMETER:
            raise ConfigError(
                f"target.partition_by: {expr!r}: the {func} width must be a positive number of at most "
                f"{MAX_PARAMETER}, e.g. {func}(16, {col})"
            )
        return PartitionField(col, f"{func}[{int(param)}]", f"{col}_{func}")
    raise ConfigError(f"target.partition_by: {expr!r}: unknown transform {func!r}; use one of: {FORMS}")


def parse_partitions(exprs: list[str]) -> list[PartitionField]:
    """Parse a whole ``partition_by`` list: each entry (see :func:`parse_partition`), and refuse entries
    that cannot live in one spec: the same transform of a column twice, two fields of one name, or two
    time transforms (year, month, day, hour) of one column. Raises :class:`ConfigError`."""
    fields = [parse_partition(e) for e in exprs]
    seen: dict[tuple[str, str], str] = {}
    names: dict[str, str] = {}
    times: dict[str, str] = {}
    for expr, f in zip(exprs, fields, strict=True):
        if (f.source, f.transform) in seen:
            raise ConfigError(
                f"target.partition_by: {expr!r} repeats {seen[(f.source, f.transform)]!r}; list each partition once"
            )
        seen[(f.source, f.transform)] = expr
        if f.name in names:
            raise ConfigError(
                f"target.partition_by: {expr!r} and {names[f.name]!r} both make a partition field named {f.name!r}; "
                "keep one of them"
            )
        names[f.name] = expr
        if f.function in _TIME:
            if f.source in times:
                raise ConfigError(
                    f"target.partition_by: {expr!r} and {times[f.source]!r} are two time partitions of column "
                    f"{f.source!r}; keep the finer one only"
                )
            times[f.source] = expr
    return fields
