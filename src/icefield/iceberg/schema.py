"""Arrow data conformed to an Iceberg table's schema, as its data files are written."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from pyiceberg.table import Table

__all__ = ["conform_to_table", "narrow_type"]


def conform_to_table(table: Table, data: pa.Table) -> pa.Table:
    """Select and order ``data``'s columns as the table's schema (missing columns become nulls).
    Strings and binaries keep their offset width (``string`` where the schema says ``large_string``) and
    their dictionary encoding: they are written alike, and converting them copies every value."""
    target = table.schema().as_arrow()
    cols, fields = [], []
    for f in target:
        if f.name in data.column_names:
            col = data.column(f.name)
            stored = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
            if col.type != f.type and narrow_type(stored) != narrow_type(f.type):
                col = col.cast(f.type)
            cols.append(col)
            fields.append(f.with_type(col.type))
        else:
            cols.append(pa.nulls(data.num_rows, type=f.type))
            fields.append(f)
    return pa.table(cols, schema=pa.schema(fields, metadata=target.metadata))


def narrow_type(t: pa.DataType) -> pa.DataType:
    """``t`` with 32-bit offsets where it has 64-bit ones (``large_string`` -> ``string``, ``large_binary`` ->
    ``binary``; other types as they are)."""
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    return t
