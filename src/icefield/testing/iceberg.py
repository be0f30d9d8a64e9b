"""Iceberg files other engines write and icefield does not, for tests: equality delete files (Flink's
upserts, Iceberg's Java ``RowDelta``)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from pyiceberg.table import Table


def add_equality_deletes(table: Table, column: str, values: list[Any]) -> Table:
    """Commit one equality delete file on ``column`` (it deletes the rows whose ``column`` is one of
    ``values``) in a ``delete`` snapshot, as Flink or Java's ``table.newRowDelta().addDeletes(...)``
    does: a Parquet file of that column (with its Iceberg field id), content ``EQUALITY_DELETES``,
    ``equality_ids`` the column's field id, in a delete manifest. ``table`` must be unpartitioned (the
    delete file is written in the empty partition). Returns the table as committed."""
    import pyarrow.parquet as pq
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.table.snapshots import Operation
    from pyiceberg.typedef import Record

    from icefield.iceberg.commits import commit_transaction
    from icefield.iceberg.producers import RowDelta

    if not table.spec().is_unpartitioned():
        raise ValueError(f"add_equality_deletes writes into unpartitioned tables only; {table.name()} is partitioned")
    field = table.schema().find_field(column)
    arrow_type = table.schema().as_arrow().field(column).type
    schema = pa.schema([pa.field(column, arrow_type, nullable=False, metadata={b"PARQUET:field_id": str(field.field_id).encode()})])
    path = table.location_provider().new_data_location(f"{uuid.uuid4()}-eq-deletes.parquet")
    with table.io.new_output(path).create(overwrite=True) as stream:
        pq.write_table(pa.table([pa.array(values, arrow_type)], schema=schema), stream)
    delete_file = DataFile.from_args(
        content=DataFileContent.EQUALITY_DELETES,
        file_path=path,
        file_format=FileFormat.PARQUET,
        partition=Record(),
        record_count=len(values),
        file_size_in_bytes=len(table.io.new_input(path)),
        equality_ids=[field.field_id],
        sort_order_id=None,
        key_metadata=None,
    )
    delete_file.spec_id = table.spec().spec_id
    tx = table.transaction()
    producer = RowDelta(operation=Operation.DELETE, transaction=tx, io=table.io, branch="main", snapshot_properties={})
    producer.referenced = set()
    with producer as p:
        p.append_data_file(delete_file)
    return commit_transaction(tx)
