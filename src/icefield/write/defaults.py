"""Defaults of columns added in the source, given to the rows the table held before the column existed.

``ALTER TABLE ... ADD COLUMN c ... DEFAULT d`` gives every existing PostgreSQL row ``d`` without logging a
change for any of them, so no change event ever carries those values. The embedded schema of the events
after it does carry the default, and a ``debezium`` batch names the defaults of the columns its table
lacked in the struct column ``_cdc_defaults`` (:mod:`icefield.ingest.debezium_codec`).

:func:`backfill_defaults` gives them to the stored rows: when such a column is new to the table (in the
table's schema, but not in the schema its current snapshot was written with, so this is the batch that
added it), every data file is rewritten with the default in that column, in a commit of its own just
before the batch's. Repeating it is safe: once that commit landed the snapshot's schema has the column,
and nothing is done again, also not for a later ``ALTER COLUMN ... SET DEFAULT`` (which gives existing
PostgreSQL rows nothing either). The column ``_cdc_defaults`` itself never reaches the table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from icefield.config.models import CDC_DEFAULTS

if TYPE_CHECKING:
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

SUMMARY_OPERATION = "icefield.operation"
OPERATION = "backfill-defaults"

__all__ = ["backfill_defaults", "new_defaults"]


def new_defaults(table: Table, data: pa.Table) -> dict[str, pa.Scalar]:
    """The defaults ``data`` gives (column ``_cdc_defaults``) to columns the table's current snapshot was
    written without but its schema now has: what :func:`backfill_defaults` gives the stored rows."""
    snapshot = table.current_snapshot()
    if CDC_DEFAULTS not in data.column_names or snapshot is None or not data.num_rows:
        return {}
    given = data.column(CDC_DEFAULTS).combine_chunks()
    valid = given.drop_null() if given.null_count else given
    if not len(valid):
        return {}
    then = table.schemas().get(snapshot.schema_id) if snapshot.schema_id is not None else None
    before = set(then.column_names) if then is not None else set(table.schema().column_names)
    now = set(table.schema().column_names)
    row = valid[0]
    out: dict[str, pa.Scalar] = {}
    for k in range(valid.type.num_fields):
        name = valid.type.field(k).name
        value = row[name] if isinstance(row, pa.StructScalar) else None
        if value is not None and value.is_valid and name in now and name not in before:
            out[name] = value
    return out


def backfill_defaults(
    table: Table,
    data: pa.Table,
    write_files: Callable[[Table, pa.Table], list[Any]],
    snapshot_properties: dict[str, str],
) -> Table:
    """Give the table's rows the defaults of the columns new to it (:func:`new_defaults`) in one commit
    (every data file rewritten with ``write_files``, its delete files applied and dropped); returns the
    table as it is then (``table`` itself when there is nothing to do). A conflicting commit raises
    pyiceberg's ``CommitFailedException`` or ``ValidationException`` after removing the files it wrote,
    for the caller to retry."""
    from pyiceberg.exceptions import CommitFailedException, ValidationException
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    from icefield.iceberg.commits import commit_transaction
    from icefield.iceberg.planning import plan_files
    from icefield.iceberg.producers import merge_overwrite
    from icefield.write.expire import delete_paths

    defaults = new_defaults(table, data)
    if not defaults:
        return table
    tasks = plan_files(table, "fill the default of a new column in it")
    scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
    added: list[Any] = []
    rows = 0
    try:
        for task in tasks:
            stored = scan.to_table([task])
            for name, value in defaults.items():
                i = stored.schema.get_field_index(name)
                column = pa.repeat(value, stored.num_rows).cast(stored.schema.field(i).type)
                stored = stored.set_column(i, stored.schema.field(i), column)
            rows += stored.num_rows
            if stored.num_rows:
                added.extend(write_files(table, stored))
        deletes = {d.file_path: d for t in tasks for d in t.delete_files or ()}
        tx = table.transaction()
        properties = {**snapshot_properties, SUMMARY_OPERATION: OPERATION}
        with merge_overwrite(tx, properties, None, referenced=set()) as producer:
            for f in [*(t.file for t in tasks), *deletes.values()]:
                producer.delete_data_file(f)
            for f in added:
                producer.append_data_file(f)
        committed = commit_transaction(tx)
    except (CommitFailedException, ValidationException):
        delete_paths(table, [f.file_path for f in added])
        raise
    log.info(
        "%s: %d stored rows take the default of %s, added in the source (%d files rewritten)",
        ".".join(table.name()), rows, ", ".join(f"{n!r} ({v.as_py()!r})" for n, v in defaults.items()), len(tasks),
    )
    return committed
