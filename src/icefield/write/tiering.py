"""Cold-data tiering: move a table's old partitions to a cheaper storage tier (an archive location).

A table partitioned by time keeps writing its recent partitions; its old ones are read rarely and can live
on cheaper storage (another bucket, an infrequent-access prefix, a local archive disk). ``archive_table``
rewrites the data files of the partitions older than ``older_than`` under the archive location, in one
``replace`` snapshot that changes no row; readers of the table see the same rows, wherever they live.

- **Which partitions are old.** The table's partition spec needs a time field: ``year``, ``month``,
  ``day`` or ``hour`` of a date or timestamp column, or ``identity`` on one. A partition is old when the
  *end* of its time range (the day after a ``day`` value, the next month of a ``month`` value, the value
  itself for an identity timestamp) is at or before ``now - older_than``; with several time fields, all of
  them must say so. Timestamps without a zone count as UTC. A file of a partition whose time value is
  null, or of an older spec without a time field, stays where it is. A table without a time field is
  refused with the fix.
- **Where the files go.** Under ``<location>/<namespace>/<table>/data/``, laid out as the table lays out its
  own data files (partition folders, object-store hashing), in the current partition spec, written through
  the table's file IO (an ``s3://`` location with the catalog's S3 properties; a local folder locally).
  Each old partition's files are read with their position deletes applied and packed into files of the
  table's target size; the commit removes them and their file-scoped delete files and adds the new files
  (compaction's machinery: :func:`icefield.write.compact.rewrite_commit`).
- **Idempotent.** Files already under the archive location are never moved again: a second run finds
  nothing and makes no snapshot. A later write into an old partition (a late row, a merge) lands in the
  table's own location and the next run moves it.
- **Concurrent writers.** The commit fails, and is replanned, when a file it moves was removed meanwhile
  (a copy-on-write merge) or got new deletes (a merge-on-read merge); appends do not conflict. The files
  of an attempt that lost, or that failed before its commit, are deleted.

The old files stay reachable from the snapshots before the archive's: they leave the hot tier when those
snapshots expire (``icefield expire``). A compaction rewrites into the table's own location: an archived
partition that got deletes and was compacted is moved again by the next archive run.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from icefield.config.ages import parse_age
from icefield.config.archive import archive_location
from icefield.errors import ConfigError
from icefield.iceberg.storage import path_key
from icefield.write.compact import pack, partition_of, replace_files, rewrite_commit, rewrite_group
from icefield.write.expire import delete_paths

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.partitioning import PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

__all__ = ["OPERATION", "ArchiveResult", "archive_table", "old_partition_end"]

OPERATION = "archive"
"""The ``icefield.operation`` of an archive's snapshot, and the operation of its ``MaintenanceDone`` event."""

PARTITION_FORMS = "day(<column>) (or year, month, hour) of a date or timestamp column, or the column itself"


@dataclass
class ArchiveResult:
    """What an archive did (or, with ``dry_run``, would do) to ``table``: ``files_moved`` data files of
    ``partitions`` old partitions (``bytes`` on the hot tier) rewritten as ``files_written`` files
    (``bytes_written``) under ``location`` (the table's archive data folder), with ``rows`` rows (a dry run
    counts the rows stored in the files, before their deletes) and ``delete_files_removed`` position delete
    files applied and removed; ``snapshot_id`` is the new ``replace`` snapshot (None: nothing was old, or
    ``dry_run``)."""

    table: str
    location: str = ""
    snapshot_id: int | None = None
    partitions: int = 0
    files_moved: int = 0
    files_written: int = 0
    delete_files_removed: int = 0
    rows: int = 0
    bytes: int = 0
    bytes_written: int = 0
    older_than_seconds: float = 0.0
    seconds: float = 0.0
    dry_run: bool = False


def archive_table(
    catalog: Catalog,
    table_name: str,
    *,
    older_than: str | int | float,
    location: str,
    now: float | None = None,
    sort_by: list[str] | None = None,
    dry_run: bool = False,
) -> ArchiveResult:
    """Move ``table_name``'s partitions older than ``older_than`` (an age: ``180d``) as of ``now`` (seconds
    since the epoch; default: the current time) under ``location`` (``s3://bucket/prefix``, ``file://`` URI
    or absolute folder), in one ``replace`` snapshot (see the module doc); ``sort_by`` orders the rows
    within each new file. With ``dry_run`` only count. Raises :class:`~icefield.errors.ConfigError` for an
    unknown table, a bad age or location, or a table without a time partition field;
    :class:`~icefield.errors.CommitConflictError` when concurrent merges kept winning."""
    from icefield.iceberg.datafiles import target_file_size

    age = parse_age(older_than)
    root = archive_location(location)
    started = time.perf_counter()
    cutoff = (time.time() if now is None else now) - age

    def attempt(table: Table, written: list[Any]) -> ArchiveResult:
        data_location = _table_folder(table, table_name, root) + "/data"
        _time_fields_or_refuse(table, table_name)
        missing = [c for c in sort_by or [] if c not in table.schema().column_names]
        if missing:
            raise ConfigError(f"sort_by: {', '.join(missing)} not in table {table_name}; its columns: {', '.join(table.schema().column_names)}")
        tasks = plan(table, cutoff, root)
        result = ArchiveResult(table=table_name, location=data_location, older_than_seconds=age, dry_run=dry_run)
        by_partition: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
        for t in tasks:
            by_partition[partition_of(t)].append(t)
        result.partitions = len(by_partition)
        result.files_moved = len(tasks)
        result.bytes = sum(t.file.file_size_in_bytes for t in tasks)
        if dry_run or not tasks:
            result.rows = sum(t.file.record_count for t in tasks)
            result.seconds = time.perf_counter() - started
            return result
        target = target_file_size(table.metadata)
        try:
            for group in (g for part in by_partition.values() for g in pack(part, target)):
                files, rows = rewrite_group(
                    table, group, target, sort_by or [], table_name=table_name, what="archive", written=written, data_location=data_location
                )
                written.extend(files)
                result.rows += rows
        except BaseException:
            # Nothing was committed: the files written so far are no one's, and orphan cleanup never
            # looks outside the table's own location.
            delete_paths(table, [f.file_path for f in written])
            written.clear()
            raise
        result.snapshot_id, result.delete_files_removed = replace_files(table, tasks, written, OPERATION)
        result.files_written = len(written)
        result.bytes_written = sum(f.file_size_in_bytes for f in written)
        result.seconds = time.perf_counter() - started
        log.info(
            "archived %s: %d files (%d delete files, %d bytes) of %d partitions older than %.0f s -> %d files under %s, "
            "%d rows, snapshot %s",
            table_name, result.files_moved, result.delete_files_removed, result.bytes, result.partitions, age,
            result.files_written, data_location, result.rows, result.snapshot_id,
        )
        return result

    return rewrite_commit(
        catalog, table_name, f"archive of {table_name}", attempt, advice="run it again when the table's merges are quieter"
    )


def plan(table: Table, cutoff: float, root: str) -> list[Any]:
    """The scan tasks of ``table``'s data files to move: those of partitions whose time range ended at or
    before ``cutoff`` (seconds since the epoch), not already under ``root``."""
    from icefield.iceberg.planning import plan_files

    if table.current_snapshot() is None:
        return []
    prefix = path_key(root).rstrip("/") + "/"
    specs = table.metadata.specs()
    schema = table.schema()
    out = []
    for task in plan_files(table, "archive it"):
        if path_key(task.file.file_path).startswith(prefix):
            continue
        end = old_partition_end(specs[task.file.spec_id], schema, task.file.partition)
        if end is not None and end <= cutoff:
            out.append(task)
    return out


def old_partition_end(spec: PartitionSpec, schema: Schema, partition: Any) -> float | None:
    """When the time range of ``partition`` (a partition of ``spec``) ends, in seconds since the epoch: the
    earliest end of its time fields (a later one is not all old yet). None when ``spec`` has no time field
    or one of its time values is null."""
    ends = []
    for i, field in enumerate(spec.fields):
        kind = _time_kind(field, schema)
        if kind is None:
            continue
        value = partition[i] if partition is not None and i < len(partition) else None
        if value is None:
            return None
        ends.append(_end(kind, value))
    return min(ends) if ends else None


def _time_fields_or_refuse(table: Table, table_name: str) -> None:
    spec, schema = table.spec(), table.schema()
    if not any(_time_kind(f, schema) is not None for f in spec.fields):
        fields = ", ".join(f"{f.transform}({_source_name(schema, f.source_id)})" for f in spec.fields) or "unpartitioned"
        raise ConfigError(
            f"archive of {table_name}: its partition spec ({fields}) has no time field, so no partition can be older than "
            f"an age; archiving needs one partitioned by {PARTITION_FORMS}. Create the table with such a "
            "target.partition_by (e.g. ['day(created_at)']) or add the field with Spark's "
            f"ALTER TABLE {table_name} ADD PARTITION FIELD days(created_at), and rewrite the table's old data once"
        )


def _source_name(schema: Schema, source_id: int) -> str:
    try:
        return schema.find_field(source_id).name
    except ValueError:
        return f"field {source_id}"


def _time_kind(field: Any, schema: Schema) -> str | None:
    """What a partition field's value counts: ``year``, ``month``, ``day``, ``hour`` (since 1970), ``date``
    (days), ``micros`` or ``nanos`` (a timestamp); None when it is no time field."""
    from pyiceberg.transforms import (
        DayTransform,
        HourTransform,
        IdentityTransform,
        MonthTransform,
        YearTransform,
    )
    from pyiceberg.types import (
        DateType,
        TimestampNanoType,
        TimestampType,
        TimestamptzNanoType,
        TimestamptzType,
    )

    try:
        source = schema.find_field(field.source_id).field_type
    except ValueError:
        return None  # the column was dropped: its old partitions cannot be aged
    if not isinstance(source, (DateType, TimestampType, TimestamptzType, TimestampNanoType, TimestamptzNanoType)):
        return None
    transform = field.transform
    for cls, kind in ((YearTransform, "year"), (MonthTransform, "month"), (DayTransform, "day"), (HourTransform, "hour")):
        if isinstance(transform, cls):
            return kind
    if isinstance(transform, IdentityTransform):
        if isinstance(source, DateType):
            return "date"
        return "nanos" if isinstance(source, (TimestampNanoType, TimestamptzNanoType)) else "micros"
    return None


def _end(kind: str, value: Any) -> float:
    """The end (seconds since the epoch) of the time range a partition value of ``kind`` stands for."""
    if isinstance(value, dt.datetime):  # a reader that gave an identity timestamp as a datetime
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(value, dt.date):  # a reader that gave a day or date value as a date
        value = (value - dt.date(1970, 1, 1)).days
    n = int(value)
    if kind == "year":
        return calendar.timegm((1970 + n + 1, 1, 1, 0, 0, 0))
    if kind == "month":
        year, month = divmod(n + 1, 12)
        return calendar.timegm((1970 + year, month + 1, 1, 0, 0, 0))
    if kind in ("day", "date"):
        return (n + 1) * 86400.0
    if kind == "hour":
        return (n + 1) * 3600.0
    return n / (1e9 if kind == "nanos" else 1e6)


def _table_folder(table: Table, table_name: str, root: str) -> str:
    """``<root>/<namespace>/<table>``; refuses a root that holds the table's own location (every file of the
    table would count as archived already)."""
    namespace, _, name = table_name.rpartition(".")
    own = path_key(table.metadata.location).rstrip("/") + "/"
    if own.startswith(path_key(root).rstrip("/") + "/"):
        raise ConfigError(
            f"archive of {table_name}: the archive location {root} holds the table's own location "
            f"({table.metadata.location}), so its files would count as archived already; give a location outside "
            "the warehouse (another bucket or folder)"
        )
    return f"{root}/{namespace.replace('.', '/')}/{name}"
