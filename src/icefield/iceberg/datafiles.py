"""Writing Arrow data as Iceberg data files (Parquet with field ids and column statistics).

pyiceberg's writer splits a table into partitions by filtering it once per partition, which costs
O(rows x partitions): a merge touching 365 daily partitions spent most of its time there. Here only the
partition values and sort keys are sorted (so files have tight bounds), and each file's rows are
gathered in the thread that writes it, from only the record batches they fall in (``_Chunks``); rows
already in order are sliced, not gathered.

Files are encoded in parallel, one thread per file (pyiceberg's executor), but a batch smaller than the
target file size is one file, so one core. A batch that would be fewer files than there are cores is split into one
file per core, as long as each stays at least ``PARALLEL_FILE_BYTES`` (of Arrow memory): a 1M-row batch
lands in about 60% of the time, for one more file (compaction joins small files later).

Each file is written as pyiceberg 0.12 writes it (field ids, the table's Parquet properties, statistics
from the footer by pyiceberg's code), with one difference: dictionary encoding only for the columns where a sample
of the file's values repeats (``dictionary_columns``). Arrow dictionary-encodes every column until its
dictionary outgrows ``write.parquet.dict-size-bytes`` (2 MB in Iceberg): for a column of unique ids,
timestamps or amounts that is hashing and a dictionary thrown away. On the W1 orders table this cut the
encoding CPU by 45% and the files by 20%.
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from icefield.columns import internal, row_numbers
from icefield.errors import ConfigError

if TYPE_CHECKING:
    from pyiceberg.table import Table

# The smallest file (in Arrow bytes, about a third of that in Parquet) a batch is split into so that
# its files are encoded in parallel.
PARALLEL_FILE_BYTES = 24 << 20


def pack(data: pa.Table, target: int, slices: int = 1, batch_bytes: int | None = None, workers: int | None = None) -> Iterator[list[pa.RecordBatch]]:
    """The record batches of each file to write ``data`` as (zero-copy slices), cut by ``_row_ranges``
    (``slices`` partition slices of a batch of ``batch_bytes`` Arrow bytes)."""
    for lo, hi in _row_ranges(data.num_rows, data.nbytes, target, workers, slices, batch_bytes):
        yield data.slice(lo, hi - lo).to_batches()


def target_file_size(metadata: Any) -> int:
    """The table's ``write.target-file-size-bytes`` (pyiceberg's default when unset)."""
    from pyiceberg.table import TableProperties
    from pyiceberg.utils.properties import property_as_int

    size = property_as_int(metadata.properties, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT)
    return size or TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# The sample of a column's values that decides its encoding, and the share of distinct values in it up to
# which the column is dictionary-encoded.
DICTIONARY_SAMPLE = 8192
DICTIONARY_MAX_DISTINCT = 0.5


def dictionary_columns(data: pa.Table) -> list[str]:
    """The Parquet column paths of ``data`` worth dictionary encoding: the top-level columns whose evenly
    spaced sample of ``DICTIONARY_SAMPLE`` values has at most ``DICTIONARY_MAX_DISTINCT`` distinct ones,
    Arrow dictionary columns, and every leaf of a nested column (left to Arrow, as before)."""
    n = data.num_rows
    step = max(1, n // DICTIONARY_SAMPLE)
    sample = pc.multiply(row_numbers(min(n, DICTIONARY_SAMPLE)), step) if n else None
    paths: list[str] = []
    for f in data.schema:
        if pa.types.is_nested(f.type):
            paths.extend(_leaf_paths(f.name, f.type))
        elif pa.types.is_dictionary(f.type):
            paths.append(f.name)  # read dictionary-encoded: its dictionary is written as it is
        elif sample is not None and not pa.types.is_boolean(f.type):
            values = data.column(f.name).take(sample)
            if pc.count_distinct(values, mode="all").as_py() <= DICTIONARY_MAX_DISTINCT * len(values):
                paths.append(f.name)
    return paths


def _leaf_paths(prefix: str, t: pa.DataType) -> list[str]:
    """Parquet's dotted paths of the leaves under a column (lists and maps as Arrow writes them)."""
    if pa.types.is_struct(t):
        return [p for i in range(t.num_fields) for p in _leaf_paths(f"{prefix}.{t.field(i).name}", t.field(i).type)]
    if pa.types.is_map(t):
        return [*_leaf_paths(f"{prefix}.key_value.key", t.key_type), *_leaf_paths(f"{prefix}.key_value.value", t.item_type)]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _leaf_paths(f"{prefix}.list.element", t.value_type)
    return [prefix]


class RecentFiles:
    """The Arrow data of the data files this process wrote lately, by path, while a run that merges keeps
    it on (``hold``): a copy-on-write merge rewrites every file that holds a changed key, so a stream
    of batches reads back, batch after batch, the files the batch before wrote. Taken from here, they are
    not read and decoded again. Data files never change once written, and an entry serves only a file of
    the size it was written with. Holds at most ``limit`` bytes of Arrow memory, the least recently used
    out first; a file read to be rewritten is dropped (``forget``), and everything when the last run
    keeping it ends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._files: OrderedDict[str, tuple[int, pa.Table]] = OrderedDict()
        self._bytes = 0
        self._users = 0

    def hold(self) -> None:
        """Keep the files written from now on, until as many ``release`` calls."""
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if not self._users:
                self._files.clear()
                self._bytes = 0

    def put(self, path: str, size: int, data: pa.Table) -> None:
        nbytes = data.nbytes
        with self._lock:
            if not self._users or nbytes > self.limit:
                return
            self._drop(path)
            self._files[path] = (size, data)
            self._bytes += nbytes
            while self._bytes > self.limit:
                self._drop(next(iter(self._files)))

    def get(self, path: str, size: int) -> pa.Table | None:
        with self._lock:
            entry = self._files.get(path)
            if entry is None or entry[0] != size:
                return None
            self._files.move_to_end(path)
            return entry[1]

    def forget(self, path: str) -> None:
        with self._lock:
            self._drop(path)

    def _drop(self, path: str) -> None:
        entry = self._files.pop(path, None)
        if entry is not None:
            self._bytes -= entry[1].nbytes


# Files a merging run keeps in memory (Arrow bytes): W3's 1M-row table takes 70 MB.
RECENT = RecentFiles(512 << 20)


def _write_file(table: Table, tasks: Iterator[Any], data_location: str | None = None) -> list[Any]:
    """pyiceberg's ``write_file`` (0.12), with the dictionary encoding of ``dictionary_columns`` and the
    per-table work (schema, writer properties, statistics plan, config) done once instead of per file.
    ``data_location`` replaces the table's data folder (``write.data.path``) for these files."""
    from pyiceberg.io.fileformat import FileFormatFactory
    from pyiceberg.io.pyarrow import (
        _get_parquet_writer_kwargs,
        _to_requested_schema,
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_path_to_id_mapping,
        sanitize_column_names,
    )
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.table import DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE, TableProperties
    from pyiceberg.table.locations import load_location_provider
    from pyiceberg.typedef import Record
    from pyiceberg.utils.concurrent import ExecutorFactory
    from pyiceberg.utils.config import Config
    from pyiceberg.utils.properties import property_as_int

    meta = table.metadata
    props = meta.properties
    file_format = FileFormat(props.get(TableProperties.WRITE_FILE_FORMAT, TableProperties.WRITE_FILE_FORMAT_DEFAULT))
    if file_format != FileFormat.PARQUET:
        raise ConfigError(f"table property write.format.default={file_format.value!r}: icefield writes Parquet only; unset it")
    format_model = FileFormatFactory.get(file_format)
    # The location provider lays the files out (partition folders, object-store hashing) under the data
    # folder; another one (an archive tier) keeps that layout.
    layout = props if data_location is None else {**props, TableProperties.WRITE_DATA_PATH: data_location.rstrip("/")}
    locations = load_location_provider(table_location=meta.location, table_properties=layout)
    table_schema = meta.schema()
    file_schema = sanitize_column_names(table_schema)
    downcast = Config().get_bool(DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE) or False
    kwargs = _get_parquet_writer_kwargs(props)
    row_group = property_as_int(props, TableProperties.PARQUET_ROW_GROUP_LIMIT, TableProperties.PARQUET_ROW_GROUP_LIMIT_DEFAULT)
    stats_plan = compute_statistics_plan(file_schema, props)
    id_mapping = parquet_path_to_id_mapping(file_schema)

    def write(task: Any) -> Any:
        rows = task.record_batches.batches() if isinstance(task.record_batches, _Gather) else task.record_batches
        batches = [
            _to_requested_schema(
                requested_schema=file_schema, file_schema=task.schema, batch=b, downcast_ns_timestamp_to_us=downcast,
                include_field_ids=True, format_model=format_model,
            )
            for b in rows
        ]
        data = pa.Table.from_batches(batches)
        path = locations.new_data_location(
            data_file_name=task.generate_data_file_filename(format_model.file_extension()), partition_key=task.partition_key
        )
        out = table.io.new_output(path)
        options = {**kwargs, "use_dictionary": dictionary_columns(data)}
        if any(pa.types.is_dictionary(t) for t in data.schema.types):
            # Arrow would store the dictionary type in the file's Arrow schema, and pyarrow readers
            # (pyiceberg's scan) would then read this file's column as a dictionary and another's as
            # strings. Without it, every reader types the column by its Parquet type alone.
            options["store_schema"] = False
        with out.create(overwrite=True) as fos, pq.ParquetWriter(fos, schema=data.schema, store_decimal_as_integer=True, **options) as writer:
            writer.write(data, row_group_size=row_group)
        RECENT.put(path, len(out), data)
        stats = data_file_statistics_from_parquet_metadata(
            parquet_metadata=writer.writer.metadata, stats_columns=stats_plan, parquet_column_mapping=id_mapping
        )
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=file_format,
            partition=task.partition_key.partition if task.partition_key else Record(),
            file_size_in_bytes=len(out),
            sort_order_id=None,
            spec_id=meta.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **stats.to_serialized_dict(),
        )

    return list(ExecutorFactory.get_or_create().map(write, tasks))


def write_data_files(
    table: Table,
    data: pa.Table,
    sort_by: list[str] | None = None,
    target_bytes: int | None = None,
    split: bool = True,
    rows: pa.Array | None = None,
    segments: list[int] | None = None,
    data_location: str | None = None,
) -> list[Any]:
    """Write ``data`` (typed as the table's schema) as data files of ``table``'s current spec, sorted by
    ``sort_by`` within each partition. ``rows`` (indices) writes only those rows of ``data``, gathered
    once in the sorted order (a merge passes its stored rows and the new versions without copying the
    survivors first). ``target_bytes`` (Arrow bytes) overrides the table's target file size;
    ``split=False`` keeps a batch smaller than the target in one file instead of one per core (a
    compaction). ``segments`` (with ``rows``, unpartitioned tables) are the increasing offsets in ``rows``,
    from 0, where a segment starts that the caller has put in order: each segment is written to files of its own and
    rows are not sorted across segments (a merge rewrites each stored file into its own, keeping its key
    range). ``data_location`` (a folder or prefix URI, written through ``table.io``) replaces the table's
data folder (an archive tier). Returns the uncommitted DataFiles."""
    from pyiceberg.io.pyarrow import pyarrow_to_schema
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
    from pyiceberg.table import WriteTask

    if data.num_rows == 0 or (rows is not None and len(rows) == 0):
        return []
    meta = table.metadata
    spec, schema = meta.spec(), meta.schema()
    target = target_bytes or target_file_size(meta)
    workers = None if split else 1
    # Typed by the values of dictionary columns (Iceberg has no dictionary type; pyiceberg warns on each).
    plain = pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in data.schema])
    task_schema = pyarrow_to_schema(plain, name_mapping=schema.name_mapping, format_version=meta.format_version)
    write_uuid, counter = uuid.uuid4(), itertools.count(0)
    order = [(c, "ascending") for c in sort_by or []]

    if spec.is_unpartitioned():
        columns = [c for c, _ in order]
        if rows is None:
            indices = sort_indices(data, columns) if order else None
        elif segments:
            indices = rows.cast(pa.int64())
        else:
            rows = rows.cast(pa.int64())
            by_key = sort_indices(data.select(columns).take(rows), columns) if order else None
            indices = rows if by_key is None else rows.take(by_key)
        if indices is None:
            tasks: Iterator[Any] = (
                WriteTask(write_uuid=write_uuid, task_id=next(counter), record_batches=batches, schema=task_schema)
                for batches in pack(data, target, workers=workers)
            )
        else:
            chunks = _Chunks(data)
            row_bytes = data.nbytes / max(1, data.num_rows)
            total = int(row_bytes * len(indices))
            starts = segments or [0]
            ranges = [
                (start + lo, start + hi)
                for start, end in zip(starts, [*starts[1:], len(indices)], strict=True)
                for lo, hi in _row_ranges(end - start, int(row_bytes * (end - start)), target, workers, slices=len(starts), total=total)
            ]
            tasks = (
                WriteTask(write_uuid=write_uuid, task_id=next(counter), record_batches=_Gather(chunks, indices.slice(lo, hi - lo)), schema=task_schema)  # type: ignore[arg-type]
                for lo, hi in ranges
            )
        return _write_file(table, tasks, data_location)

    # Partitioned: the partition values and sort keys of the rows are sorted (a small table), then each
    # file's rows are gathered in its writing thread, as above.
    selected = rows.cast(pa.int64()) if rows is not None else None

    def column(name: str) -> Any:
        col = data.column(name)
        return col.take(selected) if selected is not None else col

    part_names = [internal(f"part_{i}") for i in range(len(spec.fields))]
    keyed: dict[str, Any] = {}
    for field, name in zip(spec.fields, part_names, strict=True):
        source = schema.find_field(field.source_id)
        keyed[name] = field.transform.pyarrow_transform(source.field_type)(column(source.name))
    for c, _ in order:
        keyed[c] = column(c)
    keys = pa.table(keyed)
    by_part = pc.sort_indices(keys, [(n, "ascending", "at_start") for n in part_names] + [(c, "ascending", "at_end") for c, _ in order])
    parts = keys.select(part_names).take(by_part)
    starts = _run_starts(parts, part_names)
    bounds = list(zip(starts, [*starts[1:], parts.num_rows], strict=True))
    firsts = parts.take(pa.array(starts, pa.int64())).to_pylist()
    final = by_part if selected is None else selected.take(by_part)
    chunks = _Chunks(data)
    row_bytes = data.nbytes / max(1, data.num_rows)
    total = int(row_bytes * len(final))

    def partition_tasks() -> Iterator[Any]:
        for (lo, hi), values in zip(bounds, firsts, strict=True):
            key = PartitionKey(
                field_values=[PartitionFieldValue(field=f, value=values[n]) for f, n in zip(spec.fields, part_names, strict=True)],
                partition_spec=spec,
                schema=schema,
            )
            for a, b in _row_ranges(hi - lo, int(row_bytes * (hi - lo)), target, workers, slices=len(bounds), total=total):
                gather = _Gather(chunks, final.slice(lo + a, b - a))
                yield WriteTask(write_uuid=write_uuid, task_id=next(counter), record_batches=gather, partition_key=key, schema=task_schema)  # type: ignore[arg-type]

    return _write_file(table, partition_tasks(), data_location)


def sort_indices(data: pa.Table, columns: list[str]) -> pa.Array | None:
    """The row order that sorts ``data`` by ``columns`` (ascending, nulls last, stable), or None when the
    rows are in order already. Cheap when they nearly are: a merge's rewrite is the surviving rows of
    files sorted by key, then the new versions of a few keys. With one integer or temporal key without
    nulls, the sorted prefix keeps its order and the short rest is sorted and merged into it by binary
    search instead of sorting every row."""
    import numpy as np

    n = data.num_rows
    if n < 2:
        return None
    key = data.column(columns[0])
    if len(columns) == 1 and key.null_count == 0 and (pa.types.is_integer(key.type) or pa.types.is_temporal(key.type)):
        values = key.combine_chunks().to_numpy(zero_copy_only=False)
        if values.dtype.kind in "mM":
            values = values.view(np.int64)
        descents = np.flatnonzero(values[1:] < values[:-1])
        if descents.size == 0:
            return None
        head = int(descents[0]) + 1
        if n - head <= n // 4:
            tail = head + np.argsort(values[head:], kind="stable")
            at = np.searchsorted(values[:head], values[tail], side="right") + np.arange(tail.size)
            indices = np.empty(n, np.int64)
            placed = np.zeros(n, bool)
            placed[at] = True
            indices[at] = tail
            indices[~placed] = np.arange(head)
            return pa.array(indices)
    return pc.sort_indices(data, [(c, "ascending", "at_end") for c in columns])


class _Chunks:
    """A table's record batches (zero-copy) and where each starts, for gathers that touch a few of them."""

    def __init__(self, rows: pa.Table) -> None:
        import numpy as np

        self.schema = rows.schema
        self.batches = rows.to_batches()
        self.starts = np.cumsum([0] + [b.num_rows for b in self.batches])

    def take(self, indices: pa.Array) -> pa.Table:
        """The rows ``indices``, in that order, gathered from only the batches they fall in (joined first:
        a gather across chunks is slower than the copy), never from the whole table."""
        import numpy as np

        idx = indices.to_numpy().astype(np.int64, copy=False)
        if len(self.batches) == 1:
            used, local = np.zeros(1, np.int64), idx
        else:
            which = np.searchsorted(self.starts, idx, side="right") - 1
            used = np.flatnonzero(np.bincount(which, minlength=len(self.batches)))
            sizes = self.starts[used + 1] - self.starts[used]
            shift = np.zeros(len(self.batches), np.int64)  # from a row's index in the table to its index in ``part``
            shift[used] = np.concatenate([[0], np.cumsum(sizes)[:-1]]) - self.starts[used]
            local = idx if len(used) == len(self.batches) else idx + shift[which]
        part = pa.Table.from_batches([self.batches[c] for c in used], schema=self.schema)
        if len(used) > 1:
            # A gather across chunks finds each row's chunk by search: joining them first (a copy at memory
            # speed) and gathering from one is about twice as fast.
            part = part.combine_chunks()
        return part.take(pa.array(local))


class _Gather:
    """The rows of one file to write, gathered in sorted order by the writing thread (so the files of a
    batch are gathered in parallel, and the sorted copy is never whole in memory)."""

    def __init__(self, source: _Chunks, indices: pa.Array) -> None:
        self.source, self.indices = source, indices

    def batches(self) -> list[pa.RecordBatch]:
        return self.source.take(self.indices).to_batches()


def _row_ranges(n: int, size: int, target: int, workers: int | None, slices: int = 1, total: int | None = None) -> list[tuple[int, int]]:
    """Row ranges for the files of ``n`` rows of ``size`` Arrow bytes, cut as ``pack`` cuts them: one file
    for a small slice of many (``slices`` partitions of a batch of ``total`` bytes), files of about
    ``target`` bytes, or one per core when that would leave cores idle."""
    workers = workers or cores()
    total = size if total is None else total
    if n < 2 or (slices >= workers and size <= target):
        files = 1
    elif slices >= workers or total >= target * workers:
        files = -(-size // target)
    else:
        files = max(1, min(n, round(size / max(-(-total // workers), PARALLEL_FILE_BYTES))))
    step = -(-n // files)
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


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
