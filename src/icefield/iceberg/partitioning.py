"""Whether partition fields (``region``, ``day(updated_at)``, ``bucket(16, id)``, ``truncate(4, sku)``) fit
the data they would partition.

The expressions are parsed and checked when the configuration loads (:mod:`icefield.config.partitions`);
what needs the table's schema, whether each transform fits its column, is checked here before a table is
created with them."""

from __future__ import annotations

import pyarrow as pa

from icefield.config.partitions import PartitionField
from icefield.errors import ConfigError, SchemaError

__all__ = ["check_partition_types"]

_TRANSFORMS = ("identity", "year", "month", "day", "hour", "bucket[16]", "truncate[16]")


def check_partition_types(table: str, fields: list[PartitionField], schema: pa.Schema) -> None:
    """Refuse, before a table is created, partition fields the table could never be written with: a
    column the data does not have (:class:`SchemaError`), a transform that does not apply to its column's
    type, or a field named like a column (:class:`ConfigError`, naming the column, its type and the
    transforms that do apply)."""
    from pyiceberg.io.pyarrow import _pyarrow_to_schema_without_ids
    from pyiceberg.transforms import parse_transform

    names = set(schema.names)
    for f in fields:
        if f.source not in names:
            raise SchemaError(
                f"table {table}: partition_by names column {f.source!r}, which the data does not "
                f"have (columns: {', '.join(schema.names)}); fix target.partition_by"
            )
    if not fields:
        return
    # The Iceberg types the table will get, as the writer converts the Arrow schema at creation.
    used = pa.schema([schema.field(n) for n in sorted({f.source for f in fields})])
    sources = _pyarrow_to_schema_without_ids(used, downcast_ns_timestamp_to_us=True)
    columns = {c.name: c.field_type for c in sources.fields}
    for f in fields:
        t = columns[f.source]
        if not parse_transform(f.transform).can_transform(t):
            fits = [s.split("[")[0] for s in _TRANSFORMS if parse_transform(s).can_transform(t)]
            raise ConfigError(
                f"table {table}: target.partition_by: {f.function}() cannot partition column {f.source!r} of type "
                f"{t}; for this column use one of: {', '.join(fits) or 'none (partition by another column)'}"
            )
        if f.name != f.source and f.name in names:
            raise ConfigError(
                f"table {table}: target.partition_by: the partition field {f.name!r} of {f.transform}({f.source}) "
                f"has the name of a column; rename the column or partition otherwise"
            )

