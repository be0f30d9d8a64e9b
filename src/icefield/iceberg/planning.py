"""Planning the files of an Iceberg table, for every part of icefield that reads one.

pyiceberg 0.12 cannot apply equality delete files (Flink and Iceberg's Java API write them): planning a
scan of a table that has one raises a bare ``ValueError``. Everything that plans or reads a table's
files (the merge, the writer's overwrite and truncate, compaction, the DuckDB views of ``icefield sql``
and the gates, quarantine replay) goes through :func:`plan_files` or :func:`read_arrow`, which turn it
into one :class:`~icefield.errors.ConfigError` naming the table and the fix. This module sits under the
engines and the writer (it imports neither), so both can use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from icefield.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.table import Table


def table_name(table: Table) -> str:
    """``namespace.table`` of a loaded table."""
    return ".".join(table.name())


def equality_deletes_message(table: Table, action: str) -> str:
    """The refusal of a table with equality delete files: what cannot be done and the Spark calls that
    fold the deletes into the data files and drop them (Iceberg's dangling-delete removal skips an
    unpartitioned table, whose folded delete files go at its next commit: a second rewrite)."""
    name = table_name(table)
    catalog = getattr(getattr(table, "catalog", None), "name", None) or "<catalog>"
    qualified = f"{catalog}.{name}"
    calls = [
        f"CALL {catalog}.system.rewrite_data_files(table => '{qualified}', options => map('delete-file-threshold', '1', "
        "'use-starting-sequence-number', 'false', 'remove-dangling-deletes', 'true'))"
    ]
    if len(table.specs()) == 1 and table.spec().is_unpartitioned():
        calls.append(f"CALL {catalog}.system.rewrite_data_files(table => '{qualified}', options => map('rewrite-all', 'true'))")
    return (
        f"table {name} has equality delete files (written by Flink or Iceberg's Java API), which icefield cannot "
        f"apply, so it cannot {action}; fold them into the data files with Spark, then rerun: {'; '.join(calls)}"
    )


@contextmanager
def refusing_equality_deletes(table: Table, action: str) -> Iterator[None]:
    """Run the block; pyiceberg's refusal of equality delete files inside it becomes a
    :class:`ConfigError` (exit 2) naming ``table``, ``action`` (what was being done, e.g. ``"merge into
    it"``) and the fix. Other errors pass unchanged."""
    try:
        yield
    except (ValueError, NotImplementedError) as e:
        if "equality delete" not in str(e).lower():
            raise
        raise ConfigError(equality_deletes_message(table, action)) from e


def plan_files(table: Table, action: str, **scan: Any) -> list[Any]:
    """The scan tasks of ``table.scan(**scan)`` (data files with their delete files); raises
    :class:`ConfigError` when the table has equality delete files (see :func:`refusing_equality_deletes`)."""
    with refusing_equality_deletes(table, action):
        return list(table.scan(**scan).plan_files())


def read_arrow(table: Table, action: str, **scan: Any) -> pa.Table:
    """``table.scan(**scan).to_arrow()`` (deletes applied); raises :class:`ConfigError` when the table has
    equality delete files."""
    with refusing_equality_deletes(table, action):
        return table.scan(**scan).to_arrow()


def has_renames(table: Table) -> bool:
    """True if Parquet columns cannot be matched by name, so that reads must map them by field id: a
    field id ever had two names, or a name two field ids (dropped and re-added), or a name is stored
    under another one (pyiceberg writes a name that is not a valid Avro name, such as ``order-amount``,
    as ``order_x2Damount``)."""
    from pyiceberg.schema import index_name_by_id, sanitize_column_names

    names: dict[int, str] = {}
    ids: dict[str, int] = {}
    for schema in table.metadata.schemas:
        if index_name_by_id(sanitize_column_names(schema)) != index_name_by_id(schema):
            return True
        for f in schema.fields:
            if names.setdefault(f.field_id, f.name) != f.name or ids.setdefault(f.name, f.field_id) != f.field_id:
                return True
    return False
