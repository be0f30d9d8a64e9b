"""Writing Arrow data as Iceberg data files (Parquet with field ids and column statistics).

pyiceberg's writer splits a table into partitions by filtering it once per partition, which costs
O(rows x partitions): a merge touching 365 daily partitions spent most of its time there. Here the rows
are sorted once by partition (then by the given sort columns, so files have tight bounds) and each
partition is a zero-copy slice. File writing, bin-packing to the target size and statistics remain
pyiceberg's (pinned 0.12.0).

pyiceberg encodes its files in parallel, one thread per file, but a batch smaller than the target file
size is one file, so one core. A batch that would be fewer files than there are cores is split into one
file per core, as long as each stays at least ``PARALLEL_FILE_BYTES`` (of Arrow memory): a 1M-row batch
lands in about 60% of the time, for one more file (compaction joins small files later).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from pyiceberg.table import Table

# The smallest file (in Arrow bytes, about a third of that in Parquet) a batch is split into so that
# its files are encoded in parallel.
PARALLEL_FILE_BYTES = 24 << 20


def pack(data: pa.Table, target: int, slices: int = 1, batch_bytes: int | None = None, workers: int | None = None) -> Iterator[list[pa.RecordBatch]]:
    """The record batches of each file to write ``data`` as: bins of the table's ``target`` size, or,
    when that would leave cores idle (fewer files than ``workers`` for a batch of ``batch_bytes`` Arrow
    bytes in ``slices`` partition slices), equal row ranges of at least ``PARALLEL_FILE_BYTES``."""
    from pyiceberg.io.pyarrow import bin_pack_arrow_table

    workers = workers or _cores()
    total = data.nbytes if batch_bytes is None else batch_bytes
    if slices >= workers and data.nbytes <= target:
        yield data.to_batches()  # one of many small partition slices: one file, no packing
        return
    if slices >= workers or total >= target * workers or data.num_rows < 2:
        yield from bin_pack_arrow_table(data, target)  # type: ignore[arg-type]
        return
    share = max(-(-total // workers), PARALLEL_FILE_BYTES)
    files = max(1, min(data.num_rows, round(data.nbytes / share)))
    step = -(-data.num_rows // files)
    for start in range(0, data.num_rows, step):
        yield data.slice(start, step).to_batches()


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def write_data_files(table: Table, data: pa.Table, sort_by: list[str] | None = None) -> list[Any]:
    """Write ``data`` (typed as the table's schema) as data files of ``table``'s current spec, sorted by
    ``sort_by`` within each partition. Returns the uncommitted DataFiles."""
    from pyiceberg.io.pyarrow import pyarrow_to_schema, write_file
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
    from pyiceberg.table import TableProperties, WriteTask
    from pyiceberg.utils.properties import property_as_int

    if data.num_rows == 0:
        return []
    meta = table.metadata
    spec, schema = meta.spec(), meta.schema()
    target = (
        property_as_int(meta.properties, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT)
        or TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT
    )
    task_schema = pyarrow_to_schema(data.schema, name_mapping=schema.name_mapping, format_version=meta.format_version)
    write_uuid, counter = uuid.uuid4(), itertools.count(0)
    order = [(c, "ascending") for c in sort_by or []]

    if spec.is_unpartitioned():
        if order:
            data = data.sort_by(order)
        tasks: Iterator[Any] = (
            WriteTask(write_uuid=write_uuid, task_id=next(counter), record_batches=batches, schema=task_schema)
            for batches in pack(data, target)
        )
        return list(write_file(io=table.io, table_metadata=meta, tasks=tasks))

    part_names = [f"__part_{i}" for i in range(len(spec.fields))]
    keyed = data
    for field, name in zip(spec.fields, part_names, strict=True):
        source = schema.find_field(field.source_id)
        column = data.column(schema.find_column_name(field.source_id))
        keyed = keyed.append_column(name, field.transform.pyarrow_transform(source.field_type)(column))
    keyed = keyed.sort_by([(n, "ascending", "at_start") for n in part_names] + order)
    starts = _run_starts(keyed, part_names)
    bounds = list(zip(starts, [*starts[1:], keyed.num_rows], strict=True))
    firsts = keyed.select(part_names).take(pa.array(starts, pa.int64())).to_pylist()
    body = keyed.drop(part_names)

    def partition_tasks() -> Iterator[Any]:
        for (lo, hi), values in zip(bounds, firsts, strict=True):
            key = PartitionKey(
                field_values=[PartitionFieldValue(field=f, value=values[n]) for f, n in zip(spec.fields, part_names, strict=True)],
                partition_spec=spec,
                schema=schema,
            )
            for batches in pack(body.slice(lo, hi - lo), target, slices=len(bounds), batch_bytes=body.nbytes):
                yield WriteTask(write_uuid=write_uuid, task_id=next(counter), record_batches=batches, partition_key=key, schema=task_schema)

    return list(write_file(io=table.io, table_metadata=meta, tasks=partition_tasks()))


def _run_starts(table: pa.Table, columns: list[str]) -> list[int]:
    """Row indices where the (sorted) values of ``columns`` change, starting with 0."""
    n = table.num_rows
    if n <= 1:
        return [0] if n else []
    change: pa.Array | None = None
    for name in columns:
        col = table.column(name).combine_chunks()
        a, b = col.slice(1), col.slice(0, n - 1)
        differs = pc.fill_null(pc.not_equal(a, b), False)
        # null -> value or value -> null is a change too
        differs = pc.or_(differs, pc.xor(pc.is_null(a), pc.is_null(b)))
        change = differs if change is None else pc.or_(change, differs)
    assert change is not None
    return [0, *(i + 1 for i in pc.indices_nonzero(change).to_pylist())]
