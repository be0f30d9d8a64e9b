"""Compaction: rewrite a table's small data files, and the files that have deletes, into fewer files.

Appends of small batches and merge-on-read merges leave many small files, and merge-on-read leaves a
position delete file beside every data file it touched; reads then open many files and apply deletes.
``compact_table`` rewrites them as Spark's ``rewrite_data_files`` does, in one ``replace`` snapshot that
changes no row:

- a data file is a candidate when it is smaller than ``MIN_FILE_RATIO`` of the target file size
  (``write.target-file-size-bytes``, on disk, or ``target_file_size``) or has delete files;
- a partition is rewritten when it has a file with deletes, or at least ``min_input_files`` small files;
  its candidates are bin-packed by size into groups of at most the target, and each group is read with
  its deletes applied (pyiceberg's reader), sorted by ``sort_by`` and written as files of about the
  target size (the current partition spec);
- the commit removes the rewritten data files and their file-scoped delete files and adds the new files.
  It fails, and is replanned, when a file it rewrites was removed meanwhile (a copy-on-write merge) or
  got new deletes (a merge-on-read merge): otherwise those changes would be lost. Appends meanwhile do
  not conflict.

Equality delete files (Flink) are not applied here: a table with them is refused, with the fix.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from icefield.errors import ConfigError, IntegrityError
from icefield.iceberg.commits import Retry, commit, commit_transaction
from icefield.iceberg.deletes import is_file_scoped
from icefield.iceberg.tables import load_existing
from icefield.write.expire import delete_paths

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

MIN_FILE_RATIO = 0.75
ATTEMPTS = 4
SUMMARY_OPERATION = "icefield.operation"

R = TypeVar("R")


@dataclass
class CompactionResult:
    """What a compaction did (or, with ``dry_run``, would do)."""

    table: str
    snapshot_id: int | None = None
    partitions: int = 0
    files_removed: int = 0
    delete_files_removed: int = 0
    files_added: int = 0
    rows: int = 0
    rows_purged: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    dry_run: bool = False


def compact_table(
    catalog: Catalog,
    table_name: str,
    *,
    target_file_size: int | None = None,
    min_input_files: int = 2,
    sort_by: list[str] | None = None,
    dry_run: bool = False,
) -> CompactionResult:
    """Compact ``table_name`` (see the module doc). ``sort_by`` orders the rows within each new file (the
    merge keys keep later merges pruning well). Returns what was done; a table with nothing to compact
    gets no snapshot."""
    from icefield.iceberg.datafiles import target_file_size as default_target

    if min_input_files < 1:
        raise ConfigError(f"min_input_files={min_input_files}: give 1 or more")
    started = time.perf_counter()

    def attempt(table: Table, written: list[Any]) -> CompactionResult:
        missing = [c for c in sort_by or [] if c not in table.schema().column_names]
        if missing:
            raise ConfigError(f"sort_by: {', '.join(missing)} not in table {table_name}; its columns: {', '.join(table.schema().column_names)}")
        target = target_file_size or default_target(table.metadata)
        groups = plan(table, target, min_input_files)
        result = CompactionResult(table=table_name, dry_run=dry_run)
        result.partitions = len({partition_of(t) for g in groups for t in g})
        result.files_removed = sum(len(g) for g in groups)
        result.bytes_before = sum(t.file.file_size_in_bytes for g in groups for t in g)
        if dry_run or not groups:
            result.seconds = time.perf_counter() - started
            return result
        written.extend(_rewrite(table, groups, target, sort_by or [], result))
        result.snapshot_id, result.delete_files_removed = replace_files(table, [t for g in groups for t in g], written, "compact")
        result.files_added = len(written)
        result.bytes_after = sum(f.file_size_in_bytes for f in written)
        result.seconds = time.perf_counter() - started
        log.info(
            "compacted %s: %d files (%d delete files) -> %d in %d partitions, %d rows, %d purged, snapshot %s",
            table_name, result.files_removed, result.delete_files_removed, result.files_added,
            result.partitions, result.rows, result.rows_purged, result.snapshot_id,
        )
        return result

    return rewrite_commit(
        catalog, table_name, f"compaction of {table_name}", attempt, advice="run it again when the table's merges are quieter"
    )


def rewrite_commit(
    catalog: Catalog, table_name: str, what: str, attempt: Callable[[Table, list[Any]], R], *, advice: str
) -> R:
    """Run ``attempt(table, written)`` on ``table_name`` freshly loaded until its commit lands (through
    :func:`icefield.iceberg.commits.commit`, at most ``ATTEMPTS`` attempts), and return what it returns.
    ``attempt`` adds each data file it writes to ``written`` and commits with :func:`replace_files`.
    After a conflict (nothing of the attempt landed) those files are deleted before the next attempt;
    past the last one, :class:`~icefield.errors.CommitConflictError` names ``what`` and ``advice``.
    The rewrites of compaction and of archiving (:mod:`icefield.write.tiering`) share it."""
    written: list[tuple[Table, list[Any]]] = []  # the files of the attempt in flight

    def run(table: Table) -> R:
        files: list[Any] = []
        written[:] = [(table, files)]
        return attempt(table, files)

    def forget() -> None:
        # Nothing landed: the files written for it are no one's.
        for table, files in written:
            _remove_files(table, files)
        written.clear()

    return commit(
        what,
        lambda: load_existing(catalog, table_name),
        run,
        retry=Retry(ATTEMPTS, delay=0.1),
        on_conflict=forget,
        advice=advice,
    )


def partition_of(task: Any) -> tuple[Any, ...]:
    """The partition of a scan task's data file: its spec id, then its partition values."""
    p = task.file.partition
    values = tuple(p[i] for i in range(len(p))) if p is not None else ()
    return (task.file.spec_id, *values)


def plan(table: Table, target: int, min_input_files: int = 2) -> list[list[Any]]:
    """The groups of scan tasks to rewrite together (each at most ``target`` bytes of data files, one
    partition each), per the rules of the module doc."""
    from icefield.iceberg.planning import plan_files

    if table.current_snapshot() is None:
        return []
    small = MIN_FILE_RATIO * target
    by_partition: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for task in plan_files(table, "compact it"):
        if task.delete_files or task.file.file_size_in_bytes < small:
            by_partition[partition_of(task)].append(task)
    groups: list[list[Any]] = []
    for tasks in by_partition.values():
        with_deletes = any(t.delete_files for t in tasks)
        if not with_deletes and len(tasks) < max(min_input_files, 2):
            continue  # one small file alone gains nothing
        groups.extend(pack(tasks, target))
    # A lone file without deletes left at the end of a partition's packing rewrites to itself: drop it.
    return [g for g in groups if len(g) > 1 or g[0].delete_files]


def pack(tasks: list[Any], target: int) -> list[list[Any]]:
    """``tasks`` (of one partition) in groups of at most ``target`` bytes of data files (a larger file is a
    group alone), in the order of their paths."""
    groups: list[list[Any]] = []
    group: list[Any] = []
    size = 0
    for t in sorted(tasks, key=lambda t: t.file.file_path):
        if group and size + t.file.file_size_in_bytes > target:
            groups.append(group)
            group, size = [], 0
        group.append(t)
        size += t.file.file_size_in_bytes
    if group:
        groups.append(group)
    return groups


OVERLAP_BYTES = 128 << 20  # groups up to this many bytes of data files are rewritten two at a time


def _rewrite(table: Table, groups: list[list[Any]], target: int, sort_by: list[str], result: CompactionResult) -> list[Any]:
    """Read each group with its deletes applied, and write it as new data files (not committed).

    Writing a group's Parquet files runs on one core; when the groups are small (each at most
    ``OVERLAP_BYTES`` of data files), two are rewritten at once so one is read while the other is written.
    If a group fails, the files of every group are deleted once all have stopped, and its error raised."""
    from concurrent.futures import ThreadPoolExecutor

    from icefield import failpoints
    from icefield.iceberg.datafiles import cores

    def one(group: list[Any]) -> tuple[list[Any], int]:
        failpoints.hit("rewrite-before-group")
        return rewrite_group(table, group, target, sort_by, table_name=result.table, what="compaction")

    small = all(sum(t.file.file_size_in_bytes for t in g) <= OVERLAP_BYTES for g in groups)
    workers = 2 if small and len(groups) > 1 and cores() > 1 else 1
    added: list[Any] = []
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, g) for g in groups] if workers > 1 else []
        for i, group in enumerate(groups):
            try:
                files, rows = futures[i].result() if futures else one(group)
            except BaseException as e:  # the others finish first: their files must be deleted too
                error = error or e
                if not futures:
                    break
                for f in futures[i + 1 :]:
                    f.cancel()  # not started: nothing to wait for
                continue
            result.rows += rows
            result.rows_purged += sum(t.file.record_count for t in group) - rows
            added.extend(files)
    if error is not None:
        _remove_files(table, added)
        raise error
    return added


def rewrite_group(
    table: Table,
    group: list[Any],
    target: int,
    sort_by: list[str],
    *,
    table_name: str,
    what: str,
    written: Sequence[Any] = (),
    data_location: str | None = None,
) -> tuple[list[Any], int]:
    """Read the data files of ``group`` (scan tasks) with their deletes applied and write the rows as new
    data files of ``table``'s current spec, of about ``target`` bytes on disk, sorted by ``sort_by``, under
    ``data_location`` (default: the table's data folder). Returns the new files (not committed) and the
    rows read. Raises :class:`~icefield.errors.IntegrityError` (naming ``what`` of ``table_name``) when the
    files written hold another number of rows than was read; its files and those of ``written`` (the
    caller's earlier groups) are then deleted."""
    from icefield.iceberg.datafiles import write_data_files
    from icefield.iceberg.schema import conform_to_table

    data = read_group(table, group)
    rows = data.num_rows
    if not rows:
        return [], 0
    # Files of about ``target`` bytes on disk: the Arrow size to cut at, by this group's own ratio.
    arrow_target = max(1, int(target * data.nbytes / max(1, sum(t.file.file_size_in_bytes for t in group))))
    files = write_data_files(
        table, conform_to_table(table, data), sort_by=sort_by, target_bytes=arrow_target, split=False, data_location=data_location
    )
    del data
    stored = sum(f.record_count for f in files)
    if stored != rows:  # never commit a rewrite that lost or gained a row
        _remove_files(table, [*written, *files])
        raise IntegrityError(
            f"{what} of {table_name}: read {rows} rows, wrote {stored}; nothing was committed and the "
            f"table is as it was. Report it with the output of `icefield show --json {table_name}`"
        )
    return files, rows


PROJECT_BYTES = 64 << 20  # Arrow bytes of raw rows projected onto the table's schema at once


def read_group(table: Table, group: list[Any]) -> pa.Table:
    """The live rows of the data files of ``group`` (scan tasks, in their order) with their position
    deletes applied, as the table's current schema: what pyiceberg's ``ArrowScan(...).to_table(group)``
    returns, read faster when the files are many and small.

    pyiceberg's scan opens each file through a dataset scanner and maps the file's schema onto the
    table's (field ids, or the name mapping) for each file and each batch, in Python: about 3 ms a file,
    most of the time when a compaction reads thousands of small files. Here each Parquet file is read
    whole with pyarrow in parallel, its deletes applied, and pyiceberg's own mapping (the same functions
    its scan calls) is computed once per distinct file schema and applied to runs of files that share
    it. Files whose projection needs more (a column filled from the partition values) or that are not
    Parquet make the whole group go through pyiceberg's scan."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import (
        ArrowScan,
        _combine_positional_deletes,
        _get_column_projection_values,
        _read_all_delete_files,
        _to_requested_schema,
        pyarrow_to_schema,
    )
    from pyiceberg.manifest import FileFormat
    from pyiceberg.schema import Schema, prune_columns
    from pyiceberg.utils.concurrent import ExecutorFactory

    scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
    if not group or any(t.file.file_format != FileFormat.PARQUET for t in group):
        return scan.to_table(group)
    metadata = table.metadata
    schema = metadata.schema()
    name_mapping = metadata.name_mapping()
    flag = scan._downcast_ns_timestamp_to_us
    downcast = flag if flag is not None else metadata.format_version <= 2
    field_ids = scan._projected_field_ids
    projections: dict[str, tuple[Schema, Schema]] = {}  # a file's Arrow schema (with field metadata) -> (its schema, the part read)

    def projection(task: Any, physical: pa.Schema) -> Schema | None:
        """The file's columns to read, as pyiceberg's scan prunes them; None when they need the partition
        values of the file (a column missing from it that the spec fills)."""
        key = physical.to_string(show_field_metadata=True, show_schema_metadata=False, truncate_metadata=False)
        if key not in projections:
            file_schema = pyarrow_to_schema(physical, name_mapping, downcast_ns_timestamp_to_us=downcast, format_version=metadata.format_version)
            projections[key] = (file_schema, prune_columns(file_schema, field_ids, select_full_types=False))
        file_schema, pruned = projections[key]
        if _get_column_projection_values(task.file, schema, schema, metadata.specs().get(task.file.spec_id), file_schema.field_ids):
            return None
        return pruned

    deletes = _read_all_delete_files(table.io, group)

    def read(task: Any) -> tuple[Schema, pa.Table] | None:
        with table.io.new_input(task.file.file_path).open() as fin:
            parquet = pq.ParquetFile(fin)
            projected = projection(task, parquet.schema_arrow)
            if projected is None:
                return None
            raw = parquet.read(columns=[c.name for c in projected.columns], use_threads=False)  # files run in parallel
        positions = deletes.get(task.file.file_path)
        if positions:
            raw = raw.take(_combine_positional_deletes(positions, 0, raw.num_rows))
        return projected, raw

    parts = list(ExecutorFactory.get_or_create().map(read, group))
    if any(p is None for p in parts):
        return scan.to_table(group)
    out: list[pa.Table] = []
    run: list[pa.Table] = []
    run_schema: Schema | None = None

    def flush() -> None:
        # One projection per run of files with the same schema (within PROJECT_BYTES): pyiceberg's
        # mapping is Python work per call, not per row.
        if run and run_schema is not None:
            for batch in pa.concat_tables(run).combine_chunks().to_batches():
                out.append(pa.Table.from_batches([_to_requested_schema(
                    schema, run_schema, batch, downcast_ns_timestamp_to_us=downcast, allow_timestamp_tz_mismatch=True
                )]))
        run.clear()

    size = 0
    for part in parts:
        assert part is not None
        projected, raw = part
        if not raw.num_rows:
            continue
        if projected is not run_schema or size + raw.nbytes > PROJECT_BYTES:
            flush()
            run_schema, size = projected, 0
        run.append(raw)
        size += raw.nbytes
    flush()
    if not out:
        return scan.to_table([])
    return pa.concat_tables(out, promote_options="permissive")


def replace_files(table: Table, tasks: list[Any], added: list[Any], operation: str) -> tuple[int | None, int]:
    """Commit one ``replace`` snapshot of ``table`` (summary ``icefield.operation``: ``operation``) that
    removes the data files of ``tasks`` and their file-scoped delete files and adds ``added``. It fails
    (a conflict: replan) when one of those data files was removed or got new deletes since ``table`` was
    loaded. Returns the new snapshot's id and the number of delete files removed."""
    from pyiceberg.table.snapshots import Operation

    from icefield import failpoints
    from icefield.iceberg.producers import Rewrite

    removed = [t.file for t in tasks]
    deletes = {d.file_path: d for t in tasks for d in t.delete_files or () if is_file_scoped(d) == t.file.file_path}
    failpoints.hit("rewrite-before-commit")
    tx = table.transaction()
    producer = Rewrite(
        operation=Operation.REPLACE,
        transaction=tx,
        io=table.io,
        branch="main",
        snapshot_properties={SUMMARY_OPERATION: operation},
    )
    producer.referenced = set()
    with producer as p:
        for f in [*removed, *deletes.values()]:
            p.delete_data_file(f)
        for f in added:
            p.append_data_file(f)
    committed = commit_transaction(tx)
    snap = committed.current_snapshot()
    return (snap.snapshot_id if snap else None), len(deletes)


def _remove_files(table: Table, files: list[Any]) -> None:
    delete_paths(table, [f.file_path for f in files])
