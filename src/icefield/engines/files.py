"""Engines that write Iceberg data files in this process (the local engine): how a batch is staged.

Such an engine implements :meth:`FileEngine.merge` (its merge, hot path and all) and inherits
:meth:`FileEngine.stage`: an append writes the batch as data files (kept for the next attempt of the same batch:
they depend only on the table's schema and spec); an overwrite also removes the files of the partitions it
touches (:func:`_files_to_overwrite`); a merge stages the engine's :class:`MergePlan` (a truncate first
removes every file, :func:`_truncate_plan`). The files are added and removed with pyiceberg's snapshot
producers and icefield's conflict checks (:mod:`icefield.iceberg.producers`), in one transaction that the
writer commits with the batch's position. See ``docs/architecture.md``, section "Engines".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from icefield.columns import row_numbers
from icefield.config.window import Window
from icefield.engines.base import Engine, StagedWrite, WriteRequest
from icefield.errors import ConfigError
from icefield.iceberg.datafiles import write_data_files
from icefield.iceberg.planning import plan_files, refusing_equality_deletes
from icefield.iceberg.producers import merge_overwrite
from icefield.iceberg.schema import conform_to_table
from icefield.iceberg.versions import dedupe_latest, split_deletes

if TYPE_CHECKING:
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table

    from icefield.config.models import TargetConfig

WriteFiles = Callable[..., list[Any]]
"""``write_files(table, data, rows=None, segments=None)``: writes ``data`` (or the rows ``rows`` of it, an
index array, each of the ``segments`` of ``rows`` in files of its own) as data files of ``table``, sorted
by the target's keys within each partition or segment (callers need not sort); returns the uncommitted
DataFiles."""


@dataclass
class MergePlan:
    """The outcome of a merge, ready to stage: data files to remove, data files written (uncommitted),
    the conflict filter for the commit, and counts. A merge-on-read merge also adds position delete
    files (``add_deletes``), may replace older ones (``remove_deletes``), and names the data files its
    deletes refer to (``referenced``), which must still be in the table when it commits."""

    remove: list[Any] = field(default_factory=list)
    add: list[Any] = field(default_factory=list)
    add_deletes: list[Any] = field(default_factory=list)
    remove_deletes: list[Any] = field(default_factory=list)
    referenced: list[Any] = field(default_factory=list)
    conflict_filter: Any = None
    rows_written: int = 0
    rows_deleted: int = 0
    rows_updated: int = 0
    rows_inserted: int = 0
    rows_stale: int = 0
    files_scanned: int = 0
    files_read: int = 0
    bytes_read: int = 0
    tombstones: pa.Table | None = None


def data_file_writer(target: TargetConfig) -> WriteFiles:
    """The ``write_files`` of ``target``'s batches: Parquet data files of the table (not yet committed),
    sorted by the target's keys within each partition or segment."""

    def write_files(table: Table, data: pa.Table, rows: pa.Array | None = None, segments: list[int] | None = None) -> list[Any]:
        keys = [k for k in target.keys if k in data.column_names]
        return write_data_files(table, conform_to_table(table, data), sort_by=keys, rows=rows, segments=segments)

    return write_files


class FileEngine(Engine):
    """An engine that writes the data files itself, in this process, and stages them with pyiceberg."""

    def merge(
        self, table: Table, data: pa.Table, target: TargetConfig, write_files: WriteFiles, tombstones: Table | None = None,
        on_tombstones: Callable[[pa.Table], None] | None = None,
    ) -> MergePlan:
        """Merge ``data`` (already typed as the table) into ``table`` by ``target.keys``: write the new
        data files with ``write_files`` and return what the commit must remove and add. With
        ``target.keep_newest``, only strictly newer versions replace stored rows, and ``tombstones``
        (deleted keys with their version) stop older versions from resurrecting deleted keys; the
        batch's own deletes (the plan's ``tombstones``) are handed to ``on_tombstones`` as soon as they
        are known, so that the caller records them while the data files are written."""
        raise NotImplementedError

    def stage(self, table: Table, request: WriteRequest) -> StagedWrite:
        """Write the batch's files and stage them in one transaction of ``table`` (see the module doc)."""
        target, data = request.target, request.data
        write_files = data_file_writer(target)
        tx = table.transaction()
        added: list[Any] = []
        removed: list[Any] = []
        add_deletes: list[Any] = []
        remove_deletes: list[Any] = []
        referenced: list[Any] = []
        plan: MergePlan | None = None
        conflict = None
        if target.mode == "merge":
            if request.truncate:
                plan = _truncate_plan(table, data, target, write_files)
            elif request.on_tombstones is None:
                plan = self.merge(table, data, target, write_files)
            else:
                plan = self.merge(table, data, target, write_files, tombstones=request.tombstones, on_tombstones=request.on_tombstones)
            added, removed = plan.add, plan.remove
            add_deletes, remove_deletes, referenced = plan.add_deletes, plan.remove_deletes, plan.referenced
            conflict = plan.conflict_filter
        else:
            if data.num_rows:
                added = request.memo.setdefault("written", _Written()).files(table, lambda: write_files(table, data))
            if target.mode == "overwrite":
                removed = _files_to_overwrite(table, added, target, write_files)
            elif request.replace_file is not None and request.replace_file[0] in table.schema().as_arrow().names:
                # Copy-on-write delete of the rows the changed source file gave before; pyiceberg reads the
                # candidate files and rewrites those that also hold other rows (bounds alone can't tell).
                from pyiceberg.expressions import EqualTo

                column, value = request.replace_file
                if table.current_snapshot() is not None:
                    with refusing_equality_deletes(table, "replace a changed source file's rows in it"):
                        tx.delete(EqualTo(column, value), snapshot_properties=request.summary, branch=request.branch)  # type: ignore[call-arg,arg-type]
        window_deleted = 0
        if request.replace_window is not None and target.mode == "append" and table.current_snapshot() is not None:
            # One snapshot removes the window's stored rows and adds the batch's (see _window_plan).
            window_removed, rewritten, window_deleted, conflict = _window_plan(table, request, write_files)
            removed = [*removed, *window_removed]
            added = [*added, *rewritten]  # a copy: the batch's own files are kept for the next attempt
        changed = bool(added or removed or add_deletes or remove_deletes)
        if changed:
            if add_deletes or remove_deletes or removed:
                deltas = set(referenced) if add_deletes or remove_deletes else None
                producer_cm = merge_overwrite(tx, request.summary, conflict, branch=request.branch, referenced=deltas)
            else:
                producer_cm = tx.update_snapshot(snapshot_properties=request.summary, branch=request.branch).fast_append()
            with producer_cm as producer:
                for f in [*removed, *{d.file_path: d for d in remove_deletes}.values()]:
                    producer.delete_data_file(f)
                for f in [*added, *add_deletes]:
                    producer.append_data_file(f)
        staged = StagedWrite(tx, changed, rows_written=data.num_rows, files_added=len(added), files_removed=len(removed))
        if window_deleted:
            staged.rows_deleted = window_deleted
        if plan is not None:
            staged.rows_written, staged.rows_deleted = plan.rows_written, plan.rows_deleted
            staged.rows_updated, staged.rows_inserted, staged.rows_stale = plan.rows_updated, plan.rows_inserted, plan.rows_stale
            staged.files_scanned, staged.files_read, staged.bytes_read = plan.files_scanned, plan.files_read, plan.bytes_read
            staged.tombstones = plan.tombstones
        return staged


def window_filter(table: Table, column: str, start: datetime, end: datetime) -> BooleanExpression:
    """The Iceberg filter ``start <= column < end`` on ``table`` (``start`` and ``end`` UTC instants; a date
    column compares with their dates, a timestamp without time zone with their UTC wall-clock time). Raises
    :class:`ConfigError` when the table has no such column or it is not a date or a timestamp."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan
    from pyiceberg.expressions.literals import DateLiteral, TimestampLiteral
    from pyiceberg.types import DateType, TimestampType, TimestamptzType

    try:
        kind = table.schema().find_field(column).field_type
    except ValueError:
        raise ConfigError(
            f"table {'.'.join(table.name()[-2:])} has no column {column!r} to cut windows on (columns: "
            f"{', '.join(table.schema().column_names)}); fix window.column"
        ) from None
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    lo: Any
    hi: Any
    if isinstance(kind, DateType):
        if start.time() != datetime.min.time() or end.time() != datetime.min.time():
            raise ConfigError(
                f"column {column!r} of table {'.'.join(table.name()[-2:])} holds dates, and window {Window(start, end).label} "
                "cuts days; make window.size whole days (e.g. 1d)"
            )
        lo, hi = DateLiteral((start - epoch).days), DateLiteral((end - epoch).days)
    elif isinstance(kind, (TimestampType, TimestamptzType)):
        lo, hi = TimestampLiteral((start - epoch) // timedelta(microseconds=1)), TimestampLiteral((end - epoch) // timedelta(microseconds=1))
    else:
        raise ConfigError(
            f"column {column!r} of table {'.'.join(table.name()[-2:])} is {kind}, not a date or a timestamp: a window "
            "is cut on a date or timestamp column; fix window.column"
        )
    return And(GreaterThanOrEqual(column, lo), LessThan(column, hi))  # type: ignore[call-arg,arg-type]


def _window_plan(table: Table, request: WriteRequest, write_files: WriteFiles) -> tuple[list[Any], list[Any], int, BooleanExpression]:
    """What replacing ``request.replace_window`` removes from ``table``, copy-on-write: the data files whose
    column bounds lie wholly in the window go; a file that may hold rows on both sides is read (its deletes
    applied) and, when some of its rows are in the window, replaced by a file of its other rows. Returns the
    files to remove, the files written, the rows removed, and the window's filter (the commit's conflict
    filter: a concurrent commit that adds rows in the window fails the commit, which is then planned again)."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.expressions.visitors import ROWS_MUST_MATCH, _StrictMetricsEvaluator
    from pyiceberg.io.pyarrow import ArrowScan

    from icefield.iceberg.history import head_id

    assert request.replace_window is not None
    column, start, end = request.replace_window
    flt = window_filter(table, column, start, end)
    window = Window(start, end)
    schema = table.schema()
    strict = _StrictMetricsEvaluator(schema, flt).eval
    removed: list[Any] = []
    kept: list[pa.Table] = []
    deleted = 0
    for task in plan_files(table, "replace a window's rows in it", row_filter=flt, snapshot_id=head_id(table, request.branch)):
        if not task.delete_files and strict(task.file) == ROWS_MUST_MATCH:
            removed.append(task.file)
            deleted += task.file.record_count
            continue
        data = ArrowScan(table.metadata, table.io, schema, AlwaysTrue()).to_table([task])
        try:
            inside = window.mask(data.column(column))
        except ValueError as e:
            raise ConfigError(f"table {'.'.join(table.name()[-2:])}: column {column!r}: {e}; fix window.column") from None
        n = pc.sum(inside).as_py() or 0
        if not n:
            continue
        removed.append(task.file)
        deleted += n
        kept.append(data.filter(pc.invert(inside)))
    # Files of other writers (or pyiceberg versions) may read as string or large_string: one type for the rewrite.
    rewritten = write_files(table, pa.concat_tables(kept, promote_options="permissive")) if any(t.num_rows for t in kept) else []
    return removed, rewritten, deleted, flt


def _truncate_plan(table: Table, data: pa.Table, target: TargetConfig, write_files: WriteFiles) -> MergePlan:
    """A merge plan that removes every data file and writes the newest version of each key in
    ``data`` that is not a delete (the table as it is after a truncate and then ``data``)."""
    from pyiceberg.expressions import AlwaysTrue

    t = target
    batch = dedupe_latest(data, t.keys, t.order_columns)
    plan = MergePlan(conflict_filter=AlwaysTrue())
    batch, flag = split_deletes(batch, t.delete_column)
    if t.keep_newest and pc.any(flag).as_py():
        plan.tombstones = batch.filter(flag).select(t.keys + t.order_columns)
    batch = batch.filter(pc.invert(flag))
    if table.current_snapshot() is not None:
        tasks = plan_files(table, "truncate it")
        plan.remove = [task.file for task in tasks]
        plan.remove_deletes = [d for task in tasks for d in task.delete_files or ()]  # the commit drops repeats
    if batch.num_rows:
        plan.add = write_files(table, batch)  # sorted by key there
    plan.rows_written = plan.rows_inserted = batch.num_rows
    return plan


def _files_to_overwrite(table: Table, added: list[Any], target: TargetConfig, write_files: WriteFiles) -> list[Any]:
    """The data files an overwrite of ``added`` (the batch's files, just written) replaces: every file
    with ``overwrite: table`` or an unpartitioned table, else those in the partitions of the current
    spec the batch touches.

    A file written under an older spec (another engine evolved the spec) is matched on the partition
    fields both specs share (same source column, same transform): if its values there differ from every
    touched partition's it holds none of their rows and stays. Otherwise it goes, and when its rows do
    not all fall in touched partitions (the new spec cuts finer), the rows of untouched ones are written
    again into files of the current spec, which are appended to ``added``: no row outside the batch's
    partitions is lost. Raises :class:`ConfigError` for a table with equality delete files."""
    if table.current_snapshot() is None:
        return []
    spec = table.spec()
    tasks = plan_files(table, "overwrite it")
    if target.overwrite == "table" or spec.is_unpartitioned():
        return [t.file for t in tasks]
    # Files just written carry no spec id yet: they are written with the current spec.
    touched = {_record_key(f.partition) for f in added}
    removed: list[Any] = []
    mixed: list[Any] = []
    for task in tasks:
        f = task.file
        if f.spec_id == spec.spec_id:
            if _record_key(f.partition) in touched:
                removed.append(f)
            continue
        shared = _shared_fields(table.specs()[f.spec_id], spec)
        if tuple(f.partition[i] for i, _ in shared) not in {tuple(p[j] for _, j in shared) for p in touched}:
            continue
        if len(shared) == len(spec.fields):  # all its rows are in one touched partition
            removed.append(f)
        else:  # the current spec may cut its rows into several partitions: look at them
            mixed.append(task)
    kept: list[pa.Table] = []
    for task in mixed:
        outside = _rows_outside(table, task, touched)
        if outside is not None:
            removed.append(task.file)
            kept.append(outside)
    if any(t.num_rows for t in kept):
        added.extend(write_files(table, pa.concat_tables(kept)))
    return removed


def _shared_fields(old: Any, new: Any) -> list[tuple[int, int]]:
    """``(index in old, index in new)`` of the partition fields of two specs with the same source column
    and transform (their partition values are comparable)."""
    index = {(f.source_id, str(f.transform)): j for j, f in enumerate(new.fields)}
    return [(i, index[(f.source_id, str(f.transform))]) for i, f in enumerate(old.fields) if (f.source_id, str(f.transform)) in index]


def _rows_outside(table: Table, task: Any, touched: set[tuple[Any, ...]]) -> pa.Table | None:
    """The rows of the scan ``task``'s file (its deletes applied) whose partition in the table's current
    spec is not in ``touched``; None when no row is in a touched partition (the file stays as it is)."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey

    spec, schema = table.spec(), table.schema()
    data = ArrowScan(table.metadata, table.io, schema, AlwaysTrue()).to_table([task])
    if not data.num_rows:
        return None
    names = [f"__part_{i}" for i in range(len(spec.fields))]
    parts = {}
    for spec_field, name in zip(spec.fields, names, strict=True):
        source = schema.find_field(spec_field.source_id)
        parts[name] = spec_field.transform.pyarrow_transform(source.field_type)(data.column(source.name))
    rows = row_numbers(data.num_rows)
    # Each distinct partition (nulls included) with its rows, then the partition as the writer records it.
    groups = pa.table({**parts, "__row": rows}).group_by(names, use_threads=False).aggregate([("__row", "list")])
    lists = groups.column("__row_list").combine_chunks()
    inside: list[pa.Array] = []
    for i, values in enumerate(groups.select(names).to_pylist()):
        fields = [PartitionFieldValue(field=f, value=values[n]) for f, n in zip(spec.fields, names, strict=True)]
        if _record_key(PartitionKey(field_values=fields, partition_spec=spec, schema=schema).partition) in touched:
            inside.append(lists[i].values)
    if not inside:
        return None
    mask = pc.is_in(rows, value_set=pa.concat_arrays(inside))
    return data.filter(pc.invert(mask))


class _Written:
    """The data files one attempt of an append or overwrite wrote, for the next attempt of the same batch:
    they depend only on the table's schema and partition spec, and a failed commit never deletes them."""

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._files: list[Any] = []

    def files(self, table: Table, write: Any) -> list[Any]:
        key = (table.metadata.current_schema_id, table.metadata.default_spec_id)
        if key != self._key:
            self._files, self._key = write(), key
        return self._files


def _record_key(record: Any) -> tuple[Any, ...]:
    return tuple(record[i] for i in range(len(record))) if record is not None else ()
