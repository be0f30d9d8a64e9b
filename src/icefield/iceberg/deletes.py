"""Position delete files: merge-on-read for the ``merge`` mode.

A table whose property ``write.merge.mode`` is ``merge-on-read`` (Iceberg's own property, which Spark's
``MERGE INTO`` honours too) is merged without rewriting the files that hold changed keys: the rows a batch
replaces or deletes are marked in position delete files (Iceberg format v2: ``file_path``, ``pos``), and
new versions go to new data files. A merge then writes in proportion to the batch, not to the files it
touches.

Deletes are file-scoped, as Spark writes them by default (``write.delete.granularity=file``): one delete
file per data file, its ``file_path`` bounds equal, so readers match it to exactly one data file. A merge
that marks more rows of a data file that already has one writes a new delete file holding the old and
new positions and removes the old one in the same commit, so each data file has at most one delete file
and reads stay cheap between compactions.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from pyiceberg.table import Table

MERGE_MODE = "write.merge.mode"
MERGE_ON_READ = "merge-on-read"
PATH_FIELD_ID = 2147483546
POS_FIELD_ID = 2147483545

_SCHEMA = pa.schema(
    [
        pa.field("file_path", pa.string(), nullable=False, metadata={b"PARQUET:field_id": str(PATH_FIELD_ID).encode()}),
        pa.field("pos", pa.int64(), nullable=False, metadata={b"PARQUET:field_id": str(POS_FIELD_ID).encode()}),
    ]
)


def merge_on_read(table: Table) -> bool:
    """True when ``table`` asks for merge-on-read merges (``write.merge.mode: merge-on-read``)."""
    from icefield.errors import ConfigError

    mode = table.metadata.properties.get(MERGE_MODE, "copy-on-write")
    if mode not in ("copy-on-write", MERGE_ON_READ):
        raise ConfigError(f"table property {MERGE_MODE}={mode!r} is not a merge mode; use 'copy-on-write' or '{MERGE_ON_READ}'")
    if mode == MERGE_ON_READ and table.metadata.format_version != 2:
        raise ConfigError(
            f"table property {MERGE_MODE}={MERGE_ON_READ} needs Iceberg format version 2 (position delete files); "
            f"this table is version {table.metadata.format_version}: set format-version 2 on a new table, or use copy-on-write"
        )
    return mode == MERGE_ON_READ


def is_file_scoped(delete_file: Any) -> str | None:
    """The one data file path a position delete file refers to (its ``file_path`` bounds are equal), or None."""
    lower = (delete_file.lower_bounds or {}).get(PATH_FIELD_ID)
    upper = (delete_file.upper_bounds or {}).get(PATH_FIELD_ID)
    if lower is not None and lower == upper:
        try:
            return bytes(lower).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def scoped_deletes(task: Any) -> list[Any]:
    """The delete files of a scan task that refer to its data file only: they go when the file goes."""
    return [d for d in task.delete_files or () if is_file_scoped(d) == task.file.file_path]


def read_positions(table: Table, delete_file: Any) -> dict[str, pa.Array]:
    """The deleted positions of each data file path in a position delete file."""
    import pyarrow.parquet as pq

    with table.io.new_input(delete_file.file_path).open() as f:
        t = pq.read_table(f, columns=["file_path", "pos"])
    if t.num_rows == 0:
        return {}
    paths = t.column("file_path").combine_chunks()
    if isinstance(paths, pa.DictionaryArray):
        paths = paths.cast(pa.string())
    pos = t.column("pos").combine_chunks().cast(pa.int64())
    return {p: pos.filter(pc.equal(paths, p)) for p in pc.unique(paths).to_pylist()}


class DeleteCache:
    """Position delete files of one table, each read once (a partition-scoped one applies to many data
    files); safe to share between reading threads."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.lock = threading.Lock()
        self.read: dict[str, dict[str, pa.Array]] = {}

    def positions(self, delete_file: Any, data_path: str) -> pa.Array | None:
        """The int64 positions ``delete_file`` deletes in the data file at ``data_path`` (None: none)."""
        from pyiceberg.manifest import DataFileContent

        if delete_file.content == DataFileContent.EQUALITY_DELETES:
            raise NotImplementedError(
                f"data file {data_path} has equality delete file {delete_file.file_path}, which icefield cannot apply; "
                "compact the table with the engine that wrote it (Spark: rewrite_data_files) first"
            )
        with self.lock:
            got = self.read.get(delete_file.file_path)
        if got is None:
            got = read_positions(self.table, delete_file)
            with self.lock:
                self.read[delete_file.file_path] = got
        return got.get(data_path)


def deleted_positions(table: Table, tasks: list[Any]) -> pa.Table:
    """``(file_path, pos)`` of every row the scan tasks' position delete files remove (local paths
    without ``file://``, as DuckDB names the files it reads)."""
    from icefield.columns import constant

    cache = DeleteCache(table)
    paths: list[pa.Array] = []
    positions: list[pa.Array] = []
    for task in tasks:
        path = task.file.file_path
        for d in task.delete_files:
            pos = cache.positions(d, path)
            if pos is not None and len(pos):
                positions.append(pos)
                paths.append(constant(path.removeprefix("file://"), len(pos), pa.string()))
    if not positions:
        return pa.table({"file_path": pa.array([], pa.string()), "pos": pa.array([], pa.int64())})
    return pa.table({"file_path": pa.concat_arrays(paths), "pos": pa.concat_arrays(positions)})


def write_position_deletes(table: Table, deletes: list[tuple[Any, pa.Array]]) -> list[Any]:
    """Write one position delete file for each ``(data_file, positions)``; returns the uncommitted
    delete files (content ``POSITION_DELETES``, in the data file's partition and spec)."""
    import pyarrow.parquet as pq
    from pyiceberg.conversions import to_bytes
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.types import LongType

    from icefield.columns import constant

    location = table.location_provider()
    batch = uuid.uuid4()
    compression = table.metadata.properties.get("write.parquet.compression-codec", "zstd")

    def write(item: tuple[int, tuple[Any, pa.Array]]) -> Any:
        i, (data_file, positions) = item
        pos = pc.unique(positions.cast(pa.int64()))
        pos = pos.take(pc.sort_indices(pos))
        path = data_file.file_path
        rows = pa.table([constant(path, len(pos), pa.string()), pos], schema=_SCHEMA)
        out = location.new_data_location(f"{batch}-{i:05d}-deletes.parquet")
        stream = table.io.new_output(out).create(overwrite=True)
        with stream, pq.ParquetWriter(stream, _SCHEMA, compression="none" if compression == "uncompressed" else compression) as writer:
            writer.write_table(rows)
        size = len(table.io.new_input(out))
        raw_path = path.encode("utf-8")
        delete_file = DataFile.from_args(
            content=DataFileContent.POSITION_DELETES,
            file_path=out,
            file_format=FileFormat.PARQUET,
            partition=data_file.partition,
            record_count=len(pos),
            file_size_in_bytes=size,
            value_counts={PATH_FIELD_ID: len(pos), POS_FIELD_ID: len(pos)},
            null_value_counts={PATH_FIELD_ID: 0, POS_FIELD_ID: 0},
            lower_bounds={PATH_FIELD_ID: raw_path, POS_FIELD_ID: to_bytes(LongType(), pos[0].as_py())},
            upper_bounds={PATH_FIELD_ID: raw_path, POS_FIELD_ID: to_bytes(LongType(), pos[-1].as_py())},
            sort_order_id=None,
            equality_ids=None,
            key_metadata=None,
        )
        delete_file.spec_id = data_file.spec_id
        return delete_file

    items = [(i, d) for i, d in enumerate(deletes) if len(d[1])]
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(write, items))
