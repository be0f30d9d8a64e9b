"""The ``local`` engine: DuckDB and Arrow in one process.

Merge (``docs/architecture.md``, "The write path", rule 3): dedupe the batch by key, prune data files with
the manifests (partition values, column bounds) and read only the candidates. Copy-on-write (the default) drops the rows whose key
the batch names and hands back the files to remove and the rows to write in one overwrite commit;
merge-on-read (``write.merge.mode: merge-on-read``, :mod:`icefield.iceberg.deletes`) reads only the key
columns and marks those rows in position delete files instead.
"""

from __future__ import annotations

import bisect
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from icefield.columns import constant, internal, row_numbers
from icefield.engines.base import EngineCapabilities
from icefield.engines.files import FileEngine, MergePlan, WriteFiles
from icefield.iceberg.deletes import (
    DeleteCache,
    merge_on_read,
    scoped_deletes,
    write_position_deletes,
)
from icefield.iceberg.planning import has_renames, plan_files
from icefield.iceberg.versions import dedupe_latest, newer_mask, split_deletes

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table

    from icefield.config.models import TargetConfig

log = logging.getLogger(__name__)

# Working columns (a batch row's delete flag; a stored row's file, position and row number; a pending
# version's order columns), in icefield's reserved namespace: no column of the data can be named so.
_DEL, _FILE, _POS, _ROW, _NEW = internal("del"), internal("file"), internal("pos"), internal("row"), internal("new_")

IN_LIST_LIMIT = 5_000


def conflict_filter(keys_table: pa.Table, keys: list[str], known: dict[str, pa.Array] | None = None) -> BooleanExpression | None:
    """An expression that holds for every row with one of the batch's keys (a superset for big batches):
    concurrently added files that may match it conflict with the merge. ``known`` holds the distinct
    values of key columns the caller has already found."""
    from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, In, LessThanOrEqual

    expr: BooleanExpression = AlwaysTrue()
    for k in keys:
        distinct = (known or {}).get(k)
        if distinct is None:
            distinct = pc.unique(keys_table.column(k).drop_null())
        if len(distinct) == 0:
            continue
        if len(distinct) <= IN_LIST_LIMIT:
            term: BooleanExpression = In(k, set(distinct.to_pylist()))  # type: ignore[call-arg,arg-type]
        else:
            mm = pc.min_max(distinct)
            term = And(GreaterThanOrEqual(k, mm["min"].as_py()), LessThanOrEqual(k, mm["max"].as_py()))  # type: ignore[call-arg,arg-type]
        expr = term if isinstance(expr, AlwaysTrue) else And(expr, term)
    return None if isinstance(expr, AlwaysTrue) else expr


class _Bounds:
    """Sorted distinct batch values of one key column, comparable with manifest bounds (``values``
    distinct already with ``distinct``)."""

    def __init__(self, field: Any, values: pa.ChunkedArray | pa.Array, distinct: bool = False) -> None:
        from pyiceberg.types import (
            DateType,
            IntegerType,
            LongType,
            StringType,
            TimestampType,
            TimestamptzType,
        )

        self.field = field
        self.usable = isinstance(field.field_type, (IntegerType, LongType, StringType, DateType, TimestampType, TimestamptzType))
        if not self.usable:
            self.values: list[Any] | Any = []
            return
        arr = values if distinct else pc.unique(values.drop_null())
        if isinstance(field.field_type, (DateType, TimestampType, TimestamptzType)):
            # Manifests keep days / microseconds since the epoch.
            arr = arr.cast(pa.int32() if isinstance(field.field_type, DateType) else pa.int64())
        if isinstance(field.field_type, StringType):
            self.values = sorted(arr.to_pylist())
        else:  # integers: sorted and searched by numpy
            self.values = np.sort(arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False))

    def span(self, lower: bytes | None, upper: bytes | None) -> tuple[int, int]:
        """``(i, j)``: the sorted values ``values[i:j]`` are the ones within the bounds (all of them
        when the bounds are unknown or of a type that cannot be compared)."""
        from pyiceberg.conversions import from_bytes

        if not self.usable or lower is None or upper is None:
            return 0, len(self.values) if self.usable else -1
        lo = from_bytes(self.field.field_type, lower)
        hi = from_bytes(self.field.field_type, upper)
        if isinstance(self.values, list):
            return bisect.bisect_left(self.values, lo), bisect.bisect_right(self.values, hi)
        return int(np.searchsorted(self.values, lo, "left")), int(np.searchsorted(self.values, hi, "right"))

    def may_hold_any(self, lower: bytes | None, upper: bytes | None) -> bool:
        if not self.usable:
            return True
        i, j = self.span(lower, upper)
        return j > i


def prune_by_key_bounds(tasks: list[Any], schema: Any, keys_table: pa.Table, keys: list[str], first: _Bounds | None = None) -> list[Any]:
    """The tasks whose data file may hold one of the keys, judged by the per-column lower and upper
    bounds in the manifests (string bounds are truncated prefixes, still conservative). ``first`` is the
    bounds of the first key column when the caller has them."""
    bounds = [first if i == 0 and first is not None else _Bounds(schema.find_field(k), keys_table.column(k)) for i, k in enumerate(keys)]
    out = []
    for task in tasks:
        f = task.file
        lowers, uppers = f.lower_bounds or {}, f.upper_bounds or {}
        if all(b.may_hold_any(lowers.get(b.field.field_id), uppers.get(b.field.field_id)) for b in bounds):
            out.append(task)
    return out


class LocalEngine(FileEngine):
    name = "local"
    capabilities = EngineCapabilities(supports_merge=True, supports_sql=True, distributed=False, replaces_windows=True)
    # Merge-on-read and the tombstone check read candidate files in groups of about this many Parquet
    # bytes, which bounds their memory by the files they read, never by the table (copy-on-write streams
    # file by file, ``_rewrite``).
    group_bytes: int = 256 << 20

    def merge(
        self, table: Table, data: pa.Table, target: TargetConfig, write_files: WriteFiles, tombstones: Table | None = None,
        on_tombstones: Callable[[pa.Table], None] | None = None,
    ) -> MergePlan:
        """Copy-on-write merge of ``data`` into ``table`` by ``target.keys`` (``docs/architecture.md``, "The
        write path", rule 3).

        Only files whose key bounds may hold a batch key are read; a file that really holds one is
        rewritten with the matching rows replaced by their new versions (so files keep tight key
        ranges, ``_rewrite``), and new keys go to new files sorted by key. Returns the files to remove
        and the files written (not yet committed).

        With ``target.keep_newest`` a stored row is replaced or deleted only by a strictly newer
        version (by ``target.order_by``, stored in the table); older versions are dropped and counted
        in ``rows_stale``. ``tombstones`` is the table of deleted keys with the version that deleted
        them: a new key whose version is not newer than its tombstone is dropped too, so a late
        older event never resurrects a deleted row. The plan's ``tombstones`` are the batch's deletes
        for the caller to record, handed to ``on_tombstones`` too before any file is read or written.
        """
        if data.num_rows == 0:  # nothing to merge (a batch of Debezium tombstones may not even have the keys)
            return MergePlan(conflict_filter=None)
        keys = list(target.keys)
        order = target.order_columns
        batch = dedupe_latest(_as_table_types(table, data), keys, order)
        batch, flag = split_deletes(batch, target.delete_column)
        # The batch's distinct first keys, sorted, serve the conflict filter, the pruning and the probe.
        probe = _Probe(table.schema(), keys[0], batch.column(keys[0]))
        plan = MergePlan(conflict_filter=conflict_filter(batch.select(keys), keys, {keys[0]: probe.values}))
        if batch.num_rows == 0:
            return plan
        newest = target.keep_newest and bool(order) and all(c in batch.column_names for c in order)
        if newest and pc.any(flag).as_py():
            plan.tombstones = batch.filter(flag).select(keys + order)
            if on_tombstones is not None:
                on_tombstones(plan.tombstones)
        pending = batch.append_column(_DEL, flag)
        updated: pa.Table | None = None  # merge-on-read: new versions of stored keys, written with the inserts
        if table.current_snapshot() is not None:
            tasks = plan_files(table, "merge into it")
            candidates = prune_by_key_bounds(tasks, table.schema(), batch.select(keys), keys, probe.bounds)
            plan.files_scanned = len(tasks)
            log.debug("merge into %s: %d of %d files may hold the %d keys", target.table, len(candidates), len(tasks), batch.num_rows)
            if merge_on_read(table):
                pending, updated = self._mark(table, candidates, pending, plan, keys, order, newest)
            else:
                pending = self._rewrite(table, candidates, pending, plan, keys, order, newest, write_files, probe)
        remaining = pending.filter(pc.invert(pending.column(_DEL))).drop([_DEL])
        if newest and tombstones is not None and remaining.num_rows:
            remaining, dropped = _drop_tombstoned(tombstones, remaining, keys, order, self.group_bytes)
            plan.rows_stale += dropped
        plan.rows_inserted = remaining.num_rows
        if updated is not None and updated.num_rows:
            remaining = pa.concat_tables([remaining, updated.select(remaining.column_names).cast(remaining.schema)])
        if remaining.num_rows:
            plan.add.extend(write_files(table, remaining))  # sorted by key there
            plan.rows_written += remaining.num_rows
        return plan

    def _rewrite(
        self, table: Table, candidates: list[Any], pending: pa.Table, plan: MergePlan, keys: list[str], order: list[str], newest: bool,
        write_files: WriteFiles, probe: _Probe,
    ) -> pa.Table:
        """Copy-on-write: rewrite each candidate file that holds a ``pending`` key without the rows the
        batch replaces or deletes, and with the new versions of its keys, sorted by key (so files keep
        tight key ranges and later merges prune well). Returns the batch rows still pending (new keys).

        The work is streamed: files are read and probed for the batch keys a few ahead, in parallel
        (``_Probe.positions``: a binary search in a file sorted by key), claimed one by one in key order
        (``_claim``, on the probed rows only), and the rewritten rows are written in batches of about one
        target file per core while the next files are read. Memory is bounded by the files in flight,
        never by the table; a file that holds no batch key is read but not rewritten."""
        from collections import deque

        from icefield.iceberg.datafiles import RECENT, cores, sort_indices, target_file_size
        from icefield.iceberg.schema import narrow_type

        direct = not has_renames(table)
        # Files are read with strings as they are stored (32-bit offsets): widening them to the schema's
        # large_string copies every value, and gathers run slower on them.
        schema = pa.schema([f.with_type(narrow_type(f.type)) for f in table.schema().as_arrow()])
        claim_columns = list(dict.fromkeys([*keys, *(c for c in order if c in schema.names)]))
        workers = cores()
        flush_bytes = target_file_size(table.metadata) * workers

        # Columns read decoded whatever their encoding: those the claim compares and partitions are cut by.
        plain = {*claim_columns, *(table.schema().find_field(f.source_id).name for f in table.spec().fields)}

        def load(task: Any) -> tuple[pa.Table, pa.Array]:
            data = _read_file(table, task, direct, schema, plain)
            return data, probe.positions(data.column(keys[0]), task.file)

        def write(pieces: list[tuple[pa.Table, pa.Array]]) -> list[Any]:
            # Each piece is one file's survivors (in the file's order) and its new versions, put in key
            # order (cheap when the file was sorted) and written to files of its own.
            offset, count, parts, segments = 0, 0, [], []
            first = pieces[0][0].schema
            # A column one file stored dictionary-encoded and another not is cast to the first's type.
            pieces = [(d if d.schema == first else d.cast(first), r) for d, r in pieces]
            for data, rows in pieces:
                by_key = sort_indices(data.select(keys).take(rows), keys)
                parts.append(pc.add(rows if by_key is None else rows.take(by_key), offset))
                segments.append(count)
                offset, count = offset + data.num_rows, count + len(rows)
            return write_files(table, pa.concat_tables([d for d, _ in pieces]), rows=pa.concat_arrays(parts), segments=segments)

        tasks = iter(_in_key_order(candidates, keys[0], table.schema()))
        reads: deque[tuple[Any, Any]] = deque()
        writes: list[Any] = []
        pieces: list[tuple[pa.Table, pa.Array]] = []
        claimed: list[pa.Table] = []  # keys claimed by files already rewritten
        size = 0
        with ThreadPoolExecutor(max_workers=workers) as readers, ThreadPoolExecutor(max_workers=1) as writer:
            try:
                while True:
                    while len(reads) <= workers and (task := next(tasks, None)) is not None:
                        reads.append((task, readers.submit(load, task)))
                    if not reads:  # every candidate is read even once no key is pending: a key held twice goes everywhere
                        break
                    task, future = reads.popleft()
                    existing, found = future.result()
                    plan.files_read += 1
                    plan.bytes_read += task.file.file_size_in_bytes
                    if not len(found):
                        continue
                    probed = _as_table_types(table, existing.select(claim_columns).take(found))
                    # Only the batch rows whose first key this file holds take part (matching the whole
                    # batch against each file would hash every pending key once per file).
                    near = pc.fill_null(pc.is_in(pending.column(keys[0]), value_set=pc.unique(probed.column(keys[0]).combine_chunks())), False)
                    mine = pending.filter(near)
                    hit, rest, ups = _claim(probed, mine, plan, keys, order, newest)
                    if rest is not mine:  # rows were claimed, or dropped as stale
                        pending = pa.concat_tables([pending.filter(pc.invert(near)), rest])
                    missed = row_numbers(len(found)) if hit is None else pc.indices_nonzero(pc.invert(hit))
                    gone = found.slice(0, 0) if hit is None else found.filter(hit)
                    if claimed and len(missed):
                        # A key an earlier file held too (appended twice) got its new version there: the
                        # batch's version replaces every stored copy.
                        again = _key_mask(probed.select(keys).take(missed), pa.concat_tables(claimed), keys)
                        gone = pa.concat_arrays([gone, found.take(missed).filter(again)])
                    if hit is not None:
                        claimed.append(probed.filter(hit).select(keys))
                    if not len(gone):
                        continue
                    kept = np.ones(existing.num_rows, bool)
                    kept[gone.to_numpy()] = False
                    rows = pa.array(np.concatenate([np.flatnonzero(kept), np.arange(existing.num_rows, existing.num_rows + ups.num_rows)]).astype(np.int64))
                    if ups.num_rows:
                        existing = pa.concat_tables([existing, ups.select(existing.column_names).cast(existing.schema)])
                    plan.remove.append(task.file)
                    RECENT.forget(task.file.file_path)
                    plan.remove_deletes.extend(scoped_deletes(task))
                    plan.rows_written += len(rows)
                    if len(rows):
                        pieces.append((existing, rows))
                        size += existing.nbytes * len(rows) // max(1, existing.num_rows)
                    if size >= flush_bytes:
                        writes.append(writer.submit(write, pieces))
                        pieces, size = [], 0
                        if len(writes) >= 2:
                            writes[-2].result()  # at most one batch waits while another is written
                if pieces:
                    writes.append(writer.submit(write, pieces))
                for w in writes:
                    plan.add.extend(w.result())
            finally:
                for _, future in reads:
                    future.cancel()
        return pending

    def _mark(
        self, table: Table, candidates: list[Any], pending: pa.Table, plan: MergePlan, keys: list[str], order: list[str], newest: bool
    ) -> tuple[pa.Table, pa.Table]:
        """Merge-on-read: mark the stored rows ``pending`` replaces or deletes in position delete files
        (``plan.add_deletes``) instead of rewriting their files. Only the key and order columns of the
        candidate files are read, without the rows earlier deletes removed. Returns the batch rows whose
        key is not stored (still pending) and the new versions of stored keys (to write as new rows)."""
        updates: list[pa.Table] = []
        marks: list[tuple[Any, pa.Array]] = []
        cache = DeleteCache(table)
        for group in _groups(candidates, keys[0], table.schema(), self.group_bytes):
            if pending.num_rows == 0:
                break
            # Only rows whose first key the batch holds are kept, in the reading threads; each file is
            # probed with the batch keys within its own key bounds.
            existing, earlier = _read_keys(table, group, keys + order, cache, _Probe(table.schema(), keys[0], pending.column(keys[0])))
            plan.files_read += len(group)
            plan.bytes_read += sum(t.file.file_size_in_bytes for t in group)
            hit, pending, ups = _claim(existing, pending, plan, keys, order, newest)
            if hit is None:
                continue
            matched = existing.filter(hit)
            updates.append(ups)
            files = matched.column(_FILE)
            for i in pc.unique(files).to_pylist():
                positions = matched.column(_POS).filter(pc.equal(files, i)).combine_chunks()
                old_files, old_positions = earlier.get(i, ([], None))
                if old_positions is not None:
                    positions = pa.concat_arrays([old_positions, positions])
                marks.append((group[i].file, positions))
                plan.remove_deletes.extend(old_files)
                plan.referenced.append(group[i].file)
        plan.add_deletes = write_position_deletes(table, marks)
        return pending, pa.concat_tables(updates) if updates else pending.drop([_DEL]).slice(0, 0)


def _groups(tasks: list[Any], first_key: str, schema: Any, limit: int) -> list[list[Any]]:
    """Split ``tasks`` into groups of at most ``limit`` Parquet bytes, in order of the files' lower
    bound on the first key so each group covers a narrow key range."""
    groups: list[list[Any]] = []
    size = 0
    for task in _in_key_order(tasks, first_key, schema):
        if not groups or size + task.file.file_size_in_bytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(task)
        size += task.file.file_size_in_bytes
    return groups


def _in_key_order(tasks: list[Any], first_key: str, schema: Any) -> list[Any]:
    """``tasks`` by their file's lower bound on the first key (files without one last)."""
    from pyiceberg.conversions import from_bytes

    fid = schema.find_field(first_key).field_id
    ftype = schema.find_field(first_key).field_type

    def lower(task: Any) -> tuple[int, Any]:
        raw = (task.file.lower_bounds or {}).get(fid)
        return (0, from_bytes(ftype, raw)) if raw is not None else (1, None)

    try:
        return sorted(tasks, key=lower)
    except TypeError:
        return list(tasks)


def _read_group(table: Table, tasks: list[Any], direct: bool) -> pa.Table:
    """Read ``tasks`` in parallel into one table typed as the table's schema, with an ``_FILE`` column
    giving each row's index in ``tasks``."""
    schema = table.schema().as_arrow()

    def read(i: int) -> pa.Table:
        t = _read_file(table, tasks[i], direct, schema)
        return t.append_column(_FILE, constant(i, t.num_rows, pa.int32()))

    workers = max(1, min(len(tasks), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(read, range(len(tasks))))
    return pa.concat_tables(parts) if parts else pa.table({})


def _read_file(table: Table, task: Any, direct: bool, schema: pa.Schema, plain: set[str] | None = None) -> pa.Table:
    """The live rows of ``task``'s file, typed as ``schema`` (the table's). Files without delete files are
    read straight with pyarrow when no column was ever renamed (columns added later read as nulls), or
    taken from memory when this process wrote them during a merging run (``RECENT``); others go
    through pyiceberg's scan.

    With ``plain`` (the columns to decode whatever their encoding), a string or binary column stored
    dictionary-encoded is read as an Arrow dictionary instead of decoded (``_stored_as_dictionary``):
    decoding, gathering and encoding again a column of a few distinct values costs a copy of every value
    each time; its dictionary is written back as it is."""
    import pyarrow.parquet as pq
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    from icefield.iceberg.datafiles import RECENT

    path = task.file.file_path
    plain_file = direct and not task.delete_files
    # A file this process wrote is taken as it was written while a merging run keeps it (RECENT).
    raw = RECENT.get(path, task.file.file_size_in_bytes) if plain_file else None
    if raw is None and plain_file and path.startswith(("file://", "/")):
        local = path.removeprefix("file://")
        meta = pq.read_metadata(local)
        keep = _stored_as_dictionary(meta, schema, plain) if plain is not None else []
        raw = pq.ParquetFile(local, metadata=meta, read_dictionary=keep or None).read()
    elif raw is None and plain_file:
        # An object store's file, through the table's FileIO (one open: the footer, then the columns).
        with table.io.new_input(path).open() as f:
            meta = pq.read_metadata(f)
            keep = _stored_as_dictionary(meta, schema, plain) if plain is not None else []
            raw = pq.ParquetFile(f, metadata=meta, read_dictionary=keep or None).read()
    elif raw is None:
        t = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue()).to_table([task])
        return t.cast(schema) if t.schema != schema else t
    cols = []
    for f in schema:
        if f.name not in raw.column_names:
            cols.append(pa.nulls(raw.num_rows, f.type))
            continue
        col = raw.column(f.name)
        if pa.types.is_dictionary(col.type) and (plain is None or f.name in plain):
            col = col.cast(col.type.value_type)
        if col.type != f.type and not (pa.types.is_dictionary(col.type) and col.type.value_type == f.type):
            col = col.cast(f.type)
        cols.append(col)
    return pa.table(cols, names=schema.names)


def _stored_as_dictionary(metadata: Any, schema: pa.Schema, plain: set[str]) -> list[str]:
    """The top-level string and binary columns of ``schema`` (but ``plain``) that every row group of a
    Parquet file stores dictionary-encoded: a dictionary page, and fewer than 4 bytes a value before
    compression (a plain-encoded value takes at least its 4-byte length)."""
    wanted = {f.name for f in schema if f.name not in plain and (pa.types.is_string(f.type) or pa.types.is_binary(f.type))}
    if not wanted or metadata.num_row_groups == 0:
        return []
    found: dict[str, bool] = {}
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            name = chunk.path_in_schema
            if name in wanted:
                ok = chunk.has_dictionary_page and chunk.total_uncompressed_size < 4 * max(1, chunk.num_values)
                found[name] = found.get(name, True) and ok
    return [n for n, ok in found.items() if ok]


def _claim(
    existing: pa.Table, pending: pa.Table, plan: MergePlan, keys: list[str], order: list[str], newest: bool
) -> tuple[pa.Array | None, pa.Table, pa.Table]:
    """Match the ``pending`` batch rows (with their ``_DEL`` flag) against ``existing`` stored rows.

    Returns the mask of the stored rows to replace or delete (None when there are none), the batch rows
    still pending (those that matched here, and with ``newest`` those older than the stored version,
    are taken out) and the new versions of the matched keys. Counts go to ``plan``."""
    hit = _key_mask(existing, pending.select(keys), keys)
    if not pc.any(hit).as_py():
        return None, pending, pending.slice(0, 0)
    if newest:
        hit, stale = _split_newer(existing, hit, pending, keys, order)
        if stale.num_rows:
            stale_mask = _key_mask(pending, stale, keys)
            plan.rows_stale += pc.sum(stale_mask).as_py() or 0
            pending = pending.filter(pc.invert(stale_mask))
        if not pc.any(hit).as_py():
            return None, pending, pending.slice(0, 0)
    mine_mask = _key_mask(pending, existing.filter(hit).select(keys), keys)
    mine = pending.filter(mine_mask)
    is_del = mine.column(_DEL)
    plan.rows_deleted += pc.sum(is_del).as_py() or 0
    ups = mine.filter(pc.invert(is_del)).drop([_DEL])
    plan.rows_updated += ups.num_rows
    return hit, pending.filter(pc.invert(mine_mask)), ups


class _Probe:
    """The distinct values of a key column, sorted, sliced to a data file's key bounds for ``is_in``
    (which builds its hash set on every call: a file is probed with its share of the batch only)."""

    def __init__(self, schema: Any, column: str, values: pa.ChunkedArray) -> None:
        self.column = column
        distinct = pc.unique(values.combine_chunks().drop_null())
        self.values = distinct.take(pc.sort_indices(distinct))
        self.bounds = _Bounds(schema.find_field(column), self.values, distinct=True)

    def within(self, data_file: Any) -> pa.Array:
        fid = self.bounds.field.field_id
        i, j = self.bounds.span((data_file.lower_bounds or {}).get(fid), (data_file.upper_bounds or {}).get(fid))
        return self.values if j < 0 else self.values.slice(i, max(0, j - i))

    def positions(self, column: pa.ChunkedArray, data_file: Any) -> pa.Array:
        """The positions (ascending, int64) of the rows of ``column`` (a data file's key column) that
        hold one of the values. A column of integers or times without nulls that is sorted, as a merge
        writes its files, is searched by binary search for each value (a few microseconds per value
        instead of a hash probe of every row); any other is probed with ``is_in``."""
        values = self.within(data_file)
        if not len(values) or not len(column):
            return pa.array([], pa.int64())
        if values.type != column.type:
            values = values.cast(column.type)  # large_string values for a string column
        t = column.type
        if column.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_temporal(t)):
            stored, wanted = _int64s(column.combine_chunks()), _int64s(values)
            if stored is not None and wanted is not None and not (stored[1:] < stored[:-1]).any():
                lo = np.searchsorted(stored, wanted, side="left")
                hi = np.searchsorted(stored, wanted, side="right")
                count = hi - lo
                if not len(count) or count.max() <= 1:
                    return pa.array(lo[count == 1].astype(np.int64))
                start = np.repeat(lo, count)
                step = np.arange(len(start)) - np.repeat(np.cumsum(count) - count, count)
                return pa.array(np.sort(start + step).astype(np.int64))
        mask = pc.fill_null(pc.is_in(column, value_set=values), False)
        return pc.indices_nonzero(mask).cast(pa.int64())


def _int64s(values: pa.Array) -> Any:
    """The values of an integer or temporal array as a numpy int64 array (None when they do not fit)."""
    if pa.types.is_unsigned_integer(values.type) and values.type.bit_width == 64:
        return None
    if pa.types.is_integer(values.type):
        return values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    storage = {32: pa.int32(), 64: pa.int64()}.get(values.type.bit_width)
    if storage is None:
        return None
    return values.view(storage).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _read_keys(
    table: Table, tasks: list[Any], columns: list[str], cache: DeleteCache, probe: _Probe
) -> tuple[pa.Table, dict[int, tuple[list[Any], pa.Array | None]]]:
    """The ``columns`` of the live rows of ``tasks`` whose key column holds one of the ``probe``'s
    values (read and probed in parallel, columns matched by field id), with ``_FILE`` (the task's
    index) and ``_POS`` (the row's position in its file).
    Also returns, per task index, its file-scoped delete files and the positions they delete (to carry
    into a new one)."""
    import pyarrow.parquet as pq

    schema = table.schema()
    wanted = [schema.find_field(c) for c in columns]
    types = {f.name: f.type for f in schema.as_arrow()}
    earlier: dict[int, tuple[list[Any], pa.Array | None]] = {}

    def read(i: int) -> pa.Table:
        task = tasks[i]
        path = task.file.file_path
        with table.io.new_input(path).open() as f:
            pf = pq.ParquetFile(f)
            by_id = {
                int(fld.metadata[b"PARQUET:field_id"]): fld.name
                for fld in pf.schema_arrow
                if fld.metadata and b"PARQUET:field_id" in fld.metadata
            }
            names = {w.name: by_id.get(w.field_id, w.name if not by_id else None) for w in wanted}
            raw = pf.read(columns=[n for n in names.values() if n is not None and n in pf.schema_arrow.names])
        cols = [
            raw.column(n).cast(types[c]) if n is not None and n in raw.column_names else pa.nulls(raw.num_rows, types[c])
            for c, n in names.items()
        ]
        t = pa.table(cols, names=list(names))
        mask = pc.fill_null(pc.is_in(t.column(probe.column), value_set=probe.within(task.file)), False)
        t = t.filter(mask)
        pos = pc.indices_nonzero(mask).cast(pa.int64())
        dead = [p for d in task.delete_files or () if (p := cache.positions(d, path)) is not None]
        if scoped := scoped_deletes(task):
            mine = [p for d in scoped if (p := cache.positions(d, path)) is not None]
            earlier[i] = (scoped, pa.concat_arrays(mine) if mine else None)
        if dead:
            live = pc.invert(pc.is_in(pos, value_set=pa.concat_arrays(dead)))
            t, pos = t.filter(live), pos.filter(live)
        return t.append_column(_FILE, constant(i, t.num_rows, pa.int32())).append_column(_POS, pos)

    workers = max(1, min(len(tasks), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(read, range(len(tasks))))
    return pa.concat_tables(parts), earlier


def _key_mask(existing: pa.Table, batch_keys: pa.Table, keys: list[str]) -> pa.Array:
    """True for the rows of ``existing`` whose key is in ``batch_keys`` (one array, not chunked)."""
    if len(keys) == 1:
        k = keys[0]
        return pc.fill_null(pc.is_in(existing.column(k).combine_chunks(), value_set=batch_keys.column(k).combine_chunks()), False)
    idx = existing.select(keys).append_column(_ROW, row_numbers(existing.num_rows))
    matched = idx.join(batch_keys, keys=keys, join_type="left semi", use_threads=False).column(_ROW)
    mask = constant(False, existing.num_rows, pa.bool_())
    if len(matched):
        mask = pc.is_in(row_numbers(existing.num_rows), value_set=matched.combine_chunks())
    return mask


def _as_table_types(table: Table, data: pa.Table) -> pa.Table:
    """``data`` with the Arrow types the table's files read back as (e.g. large_string), so joins
    between the batch and existing rows never meet two spellings of one type."""
    types = {f.name: f.type for f in table.schema().as_arrow()}
    fields = [pa.field(f.name, types.get(f.name, f.type)) for f in data.schema]
    schema = pa.schema(fields)
    return data if schema == data.schema else data.cast(schema)


def _split_newer(
    existing: pa.Table, hit: pa.Array, pending: pa.Table, keys: list[str], order: list[str]
) -> tuple[pa.Array, pa.Table]:
    """Split the rows of ``existing`` that ``hit`` marks into those the pending version is newer than
    (returned as a mask over ``existing``) and the keys whose pending version is not newer."""
    rows = row_numbers(existing.num_rows)
    old = existing.select(keys + order).append_column(_ROW, rows).filter(hit)
    joined, newer = _versions(old, pending, keys, order)
    replace_rows = joined.column(_ROW).filter(newer)
    stale = joined.filter(pc.invert(newer)).select(keys)
    mask = pc.is_in(rows, value_set=replace_rows.combine_chunks())
    return mask, stale


def _versions(old: pa.Table, new: pa.Table, keys: list[str], order: list[str]) -> tuple[pa.Table, pa.Array]:
    """``old`` joined with the rows of ``new`` that have its keys (their order columns as ``_NEW + name``),
    and the mask of the joined rows whose ``new`` version is strictly newer."""
    renamed = new.select(keys + order).rename_columns(keys + [_NEW + c for c in order])
    joined = old.join(renamed, keys=keys, join_type="inner", use_threads=False)
    return joined, newer_mask([joined.column(_NEW + c) for c in order], [joined.column(c) for c in order])


def _drop_tombstoned(tombstones: Table, rows: pa.Table, keys: list[str], order: list[str], group_bytes: int) -> tuple[pa.Table, int]:
    """``rows`` without those whose key has a tombstone at least as new; returns them and the count dropped."""
    if tombstones.current_snapshot() is None:
        return rows, 0
    tasks = prune_by_key_bounds(plan_files(tombstones, "merge with it"), tombstones.schema(), rows.select(keys), keys)
    direct = not has_renames(tombstones)
    stale_keys: list[pa.Table] = []
    for group in _groups(tasks, keys[0], tombstones.schema(), group_bytes):
        dead = _read_group(tombstones, group, direct).select(keys + order)
        joined, newer = _versions(dead, rows, keys, order)
        stale_keys.append(joined.filter(pc.invert(newer)).select(keys))
    if not stale_keys:
        return rows, 0
    stale = pa.concat_tables(stale_keys)
    if not stale.num_rows:
        return rows, 0
    mask = _key_mask(rows, stale.cast(rows.select(keys).schema), keys)
    return rows.filter(pc.invert(mask)), pc.sum(mask).as_py() or 0
