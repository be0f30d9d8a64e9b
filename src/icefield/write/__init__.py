"""The writer: one Iceberg commit per batch, with the source position inside it (``docs/architecture.md``,
"The write path", rules 1-2).

Every commit carries the snapshot summary entries ``icefield.pipeline``, ``icefield.batch-id`` and
``icefield.run-id``, and sets the table property ``icefield.state.<pipeline>`` to the source position
after the batch, in the same atomic metadata swap as the data. A batch id already in the table's history
is skipped. A commit whose outcome is unknown is resolved by reloading the table and looking for the
batch id, never by deleting files.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from icefield import failpoints
from icefield.config.models import CDC_CONTROL_COLUMNS
from icefield.config.ownership import QUARANTINE_SUFFIX as QUARANTINE_SUFFIX
from icefield.config.ownership import TOMBSTONE_SUFFIX as TOMBSTONE_SUFFIX
from icefield.config.ownership import TOMBSTONED_AT
from icefield.config.partitions import parse_partitions
from icefield.config.window import SUMMARY_WINDOW, SUMMARY_WINDOW_COLUMN, Window
from icefield.engines.base import Frame, StagedWrite, WriteRequest
from icefield.engines.files import data_file_writer
from icefield.errors import BranchMovedError, ConfigError, SchemaError, TransientError
from icefield.iceberg.commits import Retry, batch_landed, commit, commit_transaction
from icefield.iceberg.history import (
    MAIN,
    STATE_PREFIX,
    SUMMARY_BATCH_ID,
    SUMMARY_PIPELINE,
    SUMMARY_POSITION,
    SUMMARY_RUN_ID,
    encode_position,
    find_batch,
    head_id,
    read_position,
)
from icefield.iceberg.partitioning import check_partition_types
from icefield.iceberg.tables import ensure_namespace, load_table, table_identifier
from icefield.iceberg.versions import newer_than, split_deletes
from icefield.write.unchanged import fill_unchanged

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from icefield.config.models import TargetConfig
    from icefield.engines.base import Engine

log = logging.getLogger(__name__)

TRUNCATED_AT = "icefield.truncated-at"

DEFAULT_TABLE_PROPERTIES = {
    "write.parquet.compression-codec": "zstd",
}
COMMIT_ATTEMPTS = 40
COMMIT_SECONDS = 300.0
"""A commit that keeps losing to concurrent commits gives up after this many attempts or seconds."""


class PositionMovedError(TransientError):
    """The source position of a pipeline moved in its table while a batch was read: another run of the
    pipeline committed meanwhile. The batch is not written (it may overlap what that run wrote)."""


_UNCHECKED: Any = object()


def batch_id_for(pipeline: str, key: str) -> str:
    """The deterministic id of a batch: the same pipeline and source range give the same id."""
    return hashlib.sha256(f"{pipeline}\x00{key}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class WriteResult:
    """What one commit did. ``skipped`` is True when the batch id was already in the table."""

    table: str
    batch_id: str
    rows_written: int
    rows_deleted: int
    files_added: int
    files_removed: int
    snapshot_id: int | None
    skipped: bool
    seconds: float
    rows_updated: int = 0
    rows_inserted: int = 0
    rows_stale: int = 0
    """Versions a merge dropped as not newer than the stored one (``keep_newest``)."""
    files_scanned: int = 0
    """Data files a merge planned over (the table's), of which it read ``files_read``."""
    files_read: int = 0
    bytes_read: int = 0
    bytes_added: int = 0
    """Bytes of the files the commit added (data and delete files), from its snapshot's summary."""
    bytes_removed: int = 0
    commit_conflicts: int = 0
    """Attempts of this commit that met a concurrent commit and were planned again (0: the first landed)."""


class TableWriter:
    """Writes batches of one pipeline into one Iceberg table."""

    def __init__(self, catalog: Catalog, target: TargetConfig, pipeline: str, engine: Engine) -> None:
        self.catalog = catalog
        self.target = target
        self.pipeline = pipeline
        self.engine = engine
        self.identifier = table_identifier(target.table)
        if target.mode == "merge" and not engine.capabilities.supports_merge:
            raise ConfigError(f"table {target.table}: target.mode merge needs an engine that merges; engine {engine.name!r} does not")
        self.base_position: Any = _UNCHECKED
        """The source position this run continues from (what the table held when the run read it, then each
        batch's position). When set, a commit first checks that the table still holds it: another run of
        the pipeline that moved it meanwhile fails the commit with :class:`PositionMovedError`."""

    # ------------------------------------------------------------------ table lifecycle

    def load(self) -> Table | None:
        """The target table as the catalog has it now, or None when there is none yet (raises
        :class:`TransientError` when the object store is unreachable)."""
        return load_table(self.catalog, self.identifier)

    def create(self, schema: pa.Schema, rows: bool = True) -> Table:
        """Create the target table for ``schema`` with the configured partition spec and properties, and
        return it as loaded (the table another run created meanwhile, if one did). ``rows`` False: the batch
        has no row (all quarantined, filtered, or only Debezium tombstones), so its schema may lack the merge
        keys, which later batches add."""
        from pyiceberg.exceptions import TableAlreadyExistsError

        # Nothing that could never be written is created: a table's keys and partition spec cannot be
        # fixed once it exists.
        fields = parse_partitions(self.target.partition_by)
        check_partition_types(self.target.table, fields, schema)
        missing = [k for k in self.target.keys if k not in schema.names]
        if missing and self.target.mode == "merge" and rows:
            raise ConfigError(
                f"table {self.target.table}: target.keys names {', '.join(map(repr, missing))}, which the data does "
                f"not have (columns: {', '.join(schema.names)}); fix target.keys"
            )
        props = {**DEFAULT_TABLE_PROPERTIES, **self.target.properties}

        def attempt(existing: Table | None) -> Table:
            if existing is not None:  # another run created it first: use theirs
                return existing
            ensure_namespace(self.catalog, self.identifier[:-1])
            try:
                tx = self.catalog.create_table_transaction(self.identifier, schema=_nullable(schema), properties=props)
                if fields:
                    with tx.update_spec() as spec:
                        for f in fields:
                            spec.add_field(f.source, f.transform, f.name)
                commit_transaction(tx)
            except TableAlreadyExistsError:
                pass  # created meanwhile (SQL catalogs may say so with CommitFailedException too: a replan)
            # Loaded, not the staged table the creation returns (which cannot be refreshed): engines and
            # the commit path reload the tables they are given.
            return self._existing()

        return commit(
            f"creating table {self.target.table}", self.load, attempt, landed=lambda t: t, retry=Retry(COMMIT_ATTEMPTS, COMMIT_SECONDS)
        )

    def schema_changes(self, table: Table, schema: pa.Schema, open_schema: bool = False, data: pa.Table | None = None) -> list[Any]:
        """The schema changes rows of ``schema`` (and ``data``, their values, when known) ask of ``table``
        (:func:`icefield.write.contracts.classify`), once the target's contract accepted them all: raises
        :class:`SchemaError` otherwise. A merge key or an identifier field of the table is protected (see
        :meth:`evolve`). Changes nothing."""
        from icefield.write.contracts import classify, enforce, null_columns

        current = table.schema()
        nulls = None
        if data is not None:
            rows, deletes = split_deletes(data, self.target.delete_column)
            nulls = null_columns(rows)
            # A delete's row is never written: its nulls count only once a required column has some (rare,
            # and the filter copies the batch).
            if any(_required(current, c) for c in nulls) and pc.any(deletes).as_py():
                nulls = null_columns(rows.filter(pc.invert(deletes)))
        changes = classify(current, schema, open_schema=open_schema, nulls=nulls)
        if changes:
            identifiers = sorted(current.identifier_field_names())
            enforce(changes, self.target.contract, self.target.table, self.pipeline, protected=[*self.target.keys, *identifiers])
        return changes

    def evolve(
        self,
        table: Table,
        schema: pa.Schema,
        open_schema: bool = False,
        data: pa.Table | None = None,
        on_change: Callable[[list[str]], None] | None = None,
    ) -> Table:
        """Bring the table's schema to what rows of ``schema`` need, as the target's contract allows.

        The differences are classified (:func:`icefield.write.contracts.classify`); if the contract
        refuses one, :class:`SchemaError` is raised before anything is written. Accepted new columns are
        added (optional) and accepted promotions applied in one schema commit; a dropped column accepted
        by ``evolve`` stays in the table (made optional if it was required) and the batch's rows get nulls.
        ``open_schema``: see :func:`classify`. ``data`` holds the batch's rows when the caller has them: a
        required column (another engine's ``NOT NULL``) then stays required unless a row really has a null
        in it; without it the Arrow field's nullability decides. A merge key or an identifier field of the
        table never becomes optional: a batch with a null there is refused. A change Iceberg itself refuses
        is a :class:`SchemaError` too. Returns the (refreshed) table. ``on_change`` is called with the changes
        (described) once the schema change committed.
        """
        from icefield.write.contracts import DROPPED, NEW_COLUMN, NOW_OPTIONAL, PROMOTION

        def attempt(table: Table) -> Table:
            changes = self.schema_changes(table, schema, open_schema, data)
            if not changes:
                return table
            current_schema = table.schema()
            identifiers = sorted(current_schema.identifier_field_names())
            grown = {c.column.split(".")[0] for c in changes if c.change in (NEW_COLUMN, PROMOTION)}
            dropped = [c.column for c in changes if c.change == DROPPED]
            if dropped:
                log.warning("batch of %s lacks columns %s; the table keeps them and the rows get nulls", self.target.table, dropped)
            # A required column the rows leave null (or lack) becomes optional; no other column changes nullability.
            relaxed = [c.column for c in changes if c.change == NOW_OPTIONAL or (c.change == DROPPED and _required(current_schema, c.column))]
            if not grown and not relaxed:
                return table
            log.info("schema of %s: %s", self.target.table, "; ".join(c.describe() for c in changes if c.change != DROPPED))
            current = current_schema.as_arrow()
            # New columns, nested ones too, are optional (existing rows have no value); existing ones keep
            # the table's nullability. union_by_name never drops a column.
            fields = [_like_table(f, current.field(f.name) if f.name in current.names else None) for f in schema if f.name in grown]
            tx = table.transaction()
            try:
                with tx.update_schema() as upd:
                    if fields:
                        upd.union_by_name(pa.schema(fields))
                    for path in relaxed:
                        upd.make_column_optional(path)
            except ValueError as e:  # pyiceberg's own checks (a pydantic ValidationError is one)
                ids = f"; its identifier fields ({', '.join(identifiers)}) and the structs holding them must stay required" if identifiers else ""
                reason = " ".join(str(e).split("For further information")[0].split())
                raise SchemaError(
                    f"table {self.target.table}: Iceberg refused the schema change ({'; '.join(c.describe() for c in changes)}): "
                    f"{reason}{ids}. Nothing was written and the batch stays pending: fix the source, or the table's schema "
                    "with the engine that owns it, and rerun"
                ) from e
            committed = commit_transaction(tx)
            if on_change is not None:
                on_change([c.describe() for c in changes if c.change != DROPPED or c.column in relaxed])
            return committed

        return commit(f"the schema change of {self.target.table}", self._existing, attempt, table=table, retry=Retry(COMMIT_ATTEMPTS, COMMIT_SECONDS))

    def _existing(self) -> Table:
        """The target table as the catalog has it now; :class:`ConfigError` when it was dropped."""
        table = self.load()
        if table is None:
            raise ConfigError(f"table {self.target.table} was dropped while this run wrote it; rerun")
        return table

    # ------------------------------------------------------------------ commits

    def commit(
        self,
        data: pa.Table,
        batch_id: str,
        position: dict[str, Any] | None,
        run_id: str,
        replace_file: tuple[str, str] | None = None,
        table: Table | None = None,
        truncate_at: list[Any] | None = None,
        branch: str | None = None,
        frame: Frame | None = None,
        window: tuple[str, datetime, datetime] | None = None,
    ) -> WriteResult:
        """Write ``data`` in one commit with ``position`` and ``batch_id``; retried on conflicts.

        ``replace_file`` is ``(column, value)``: rows whose column equals value are replaced (a source file
        that changed). ``table`` is the table as the caller just loaded it (saves a reload on the first
        attempt; retries always reload). ``truncate_at`` (merge mode) empties the table in the same commit
        before ``data`` is applied, and records the version so older rows never land later.
        ``branch`` writes the commit on that branch instead of ``main``
        (write-audit-publish): the branch must be at ``main``'s head (see
        :func:`~icefield.write.branches.cut_branch`), the position goes into the snapshot summary
        (``icefield.position``) for the publish to apply, and the batch id is looked up in the branch's
        history; ``WriteResult.snapshot_id`` is then the branch's new head. A batch that changes no data
        sets its position on the table directly (there is nothing to audit).
        ``frame`` holds more rows of the batch, held by the engine that read them
        (:class:`~icefield.engines.base.Frame`): staged with ``data``.
        ``window`` is ``(column, start, end)`` (a window backfill, :mod:`icefield.config.window`): the stored
        rows with ``start <= column < end`` are removed in the same commit (``position`` is then None: a
        backfill leaves the pipeline's position where it is), and the snapshot summary names the window
        (``icefield.window``, ``icefield.window-column``).
        Raises :class:`CommitConflictError` when conflicts outlast the retries,
        :class:`TransientError` when the outcome stays unknown and :class:`BranchMovedError` when
        ``branch`` is not at ``main``'s head.
        """
        started = time.perf_counter()
        ref = branch or MAIN
        memo: dict[str, Any] = {}  # the engine's own, across the attempts of this batch

        def attempt(table: Table | None) -> WriteResult:
            if table is None:
                control = {self.target.delete_column, *CDC_CONTROL_COLUMNS}
                schema = pa.schema([f for f in data.schema if f.name not in control])
                table = self.create(schema, rows=data.num_rows > 0)
            done = find_batch(table, batch_id, ref=ref)
            if done is not None:
                return WriteResult(self.target.table, batch_id, 0, 0, 0, 0, done, True, time.perf_counter() - started)
            self.check_position(table, batch_id)
            return self._commit_once(table, data, batch_id, position, run_id, replace_file, started, truncate_at, branch, memo, frame, window)

        def landed(snapshot_id: int) -> WriteResult:
            rows = data.num_rows + (frame.rows if frame is not None else 0)
            return WriteResult(self.target.table, batch_id, rows, 0, 0, 0, snapshot_id, False, time.perf_counter() - started)

        first: Any = table  # a table, or None: the table does not exist yet (as self.load says)
        conflicts = 0

        def conflicted() -> None:
            nonlocal conflicts
            conflicts += 1

        result = commit(
            f"batch {batch_id} of {self.target.table}",
            self.load,
            attempt,
            table=first,
            landed=batch_landed(batch_id, landed, ref),
            retry=Retry(COMMIT_ATTEMPTS, COMMIT_SECONDS),
            on_conflict=conflicted,
            advice="rerun to retry",
        )
        return dataclasses.replace(result, commit_conflicts=conflicts) if conflicts else result

    def check_position(self, table: Table, batch_id: str) -> None:
        """Raise :class:`PositionMovedError` when ``table`` no longer holds :attr:`base_position` for this
        pipeline (nothing to check until it is set)."""
        if self.base_position is _UNCHECKED:
            return
        current = read_position(table, self.pipeline)
        if encode_position(current) != encode_position(self.base_position):
            raise PositionMovedError(
                f"the position of pipeline {self.pipeline} in {self.target.table} moved while this run read batch "
                f"{batch_id}: another run of {self.pipeline} committed meanwhile. This run stops without writing "
                "the batch; rerun to continue from the new position"
            )

    def _commit_once(
        self,
        table: Table,
        data: pa.Table,
        batch_id: str,
        position: dict[str, Any] | None,
        run_id: str,
        replace_file: tuple[str, str] | None,
        started: float,
        truncate_at: list[Any] | None = None,
        branch: str | None = None,
        memo: dict[str, Any] | None = None,
        frame: Frame | None = None,
        window: tuple[str, datetime, datetime] | None = None,
    ) -> WriteResult:
        """One attempt of :meth:`commit` on ``table`` as loaded: the engine stages the batch as one
        transaction (:meth:`~icefield.engines.base.Engine.stage`), the position goes into it, and it is
        committed."""
        summary = {SUMMARY_PIPELINE: self.pipeline, SUMMARY_BATCH_ID: batch_id, SUMMARY_RUN_ID: run_id}
        if window is not None:
            if not self.engine.capabilities.replaces_windows:
                raise ConfigError(
                    f"table {self.target.table}: engine {self.engine.name!r} cannot replace a date window's rows; run the "
                    "backfill with the local engine (engine: local in the pipeline file)"
                )
            summary[SUMMARY_WINDOW], summary[SUMMARY_WINDOW_COLUMN] = Window(window[1], window[2]).label, window[0]
        if branch is not None and head_id(table, branch) != head_id(table):
            raise BranchMovedError(
                f"branch {branch!r} of {self.target.table} is at snapshot {head_id(table, branch)}, main at "
                f"{head_id(table)}: cut it again before writing"
            )
        encoded = encode_position(position) if position is not None else None
        if branch is not None and encoded is not None:
            # Audited: main's position moves only when the publish moves main's data (a batch that changes
            # no data makes no snapshot, and sets the position on main below).
            summary[SUMMARY_POSITION] = encoded
        rows_stale = 0
        graves = None
        if self.target.mode == "merge":
            table = self._backfill_defaults(table, data, run_id, branch)
            graves = self.tombstone_writer()
            data, rows_stale = self._after_truncation(table, data, truncate_at)
            # Unchanged TOAST values of a CDC batch take the row's previous value (not a stored one past a truncate).
            data = fill_unchanged(table, data, self.target, stored=truncate_at is None)
        request = WriteRequest(
            data, self.target, summary, branch or MAIN, replace_file, truncate=truncate_at is not None, memo=memo if memo is not None else {},
            frame=frame, replace_window=window,
        )
        staged = self._stage(table, request, graves, batch_id, run_id)
        tx = staged.transaction
        if truncate_at is not None:
            tx.set_properties({TRUNCATED_AT: json.dumps(truncate_at)})
        if encoded is not None and (branch is None or not staged.changed):
            tx.set_properties({STATE_PREFIX + self.pipeline: encoded})
        failpoints.hit("after-data-files")
        if not staged.changed and encoded is not None:
            # A position alone makes no snapshot, so nothing else would notice a commit to main since the
            # table was loaded (and checked): require main unmoved, as a data commit does.
            from pyiceberg.table.update import AssertRefSnapshotId

            tx._requirements += (AssertRefSnapshotId(snapshot_id=head_id(table), ref=MAIN),)  # type: ignore[call-arg]
        failpoints.hit("before-commit")
        committed = commit_transaction(tx)
        failpoints.hit("after-commit")
        snap = (committed.snapshot_by_name(branch) if branch else committed.current_snapshot()) if staged.changed else None
        return WriteResult(
            self.target.table,
            batch_id,
            staged.rows_written,
            staged.rows_deleted,
            staged.files_added,
            staged.files_removed,
            snap.snapshot_id if snap else None,
            False,
            time.perf_counter() - started,
            rows_updated=staged.rows_updated,
            rows_inserted=staged.rows_inserted,
            rows_stale=staged.rows_stale + rows_stale,
            files_scanned=staged.files_scanned,
            files_read=staged.files_read,
            bytes_read=staged.bytes_read,
            bytes_added=_summary_int(snap, "added-files-size"),
            bytes_removed=_summary_int(snap, "removed-files-size"),
        )

    def _stage(self, table: Table, request: WriteRequest, graves: TableWriter | None, batch_id: str, run_id: str) -> StagedWrite:
        """The engine's staged batch, its deletes recorded in the tombstone table (``graves``) meanwhile, in a
        thread of their own as soon as the engine hands them over, and in any case before this returns: a
        failed stage raises its own error once the recording ended."""
        if graves is None:
            return self.engine.stage(table, request)
        recording: list[Future[None]] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tombstones") as pool:

            def record(tombstones: pa.Table) -> None:
                run = contextvars.copy_context().run
                recording.append(pool.submit(run, self._record_tombstones, graves, tombstones, batch_id, run_id))

            if not request.truncate:
                request.tombstones, request.on_tombstones = graves.load(), record
            staged = self.engine.stage(table, request)
            for future in recording:
                future.result()
        if not recording:  # a truncate, or an engine that did not hand them over
            self._record_tombstones(graves, staged.tombstones, batch_id, run_id)
        return staged

    def _backfill_defaults(self, table: Table, data: pa.Table, run_id: str, branch: str | None) -> Table:
        """The table after the stored rows got the defaults of columns the batch added (a CDC source's
        ``ALTER TABLE ... ADD COLUMN ... DEFAULT``, :mod:`icefield.write.defaults`), in a commit of its own."""
        from icefield.write.defaults import backfill_defaults, new_defaults

        if branch is not None:
            if new_defaults(table, data):
                log.warning("%s: audited batches do not give stored rows the defaults of added columns; they read NULL", self.target.table)
            return table
        return backfill_defaults(table, data, self.write_files, {SUMMARY_PIPELINE: self.pipeline, SUMMARY_RUN_ID: run_id})

    @staticmethod
    def _record_tombstones(graves: TableWriter | None, tombstones: pa.Table | None, batch_id: str, run_id: str) -> None:
        """Record a batch's deletes (keys and version) in the tombstone table. Before the data commit: a
        tombstone that lands first only blocks versions older than a delete this batch applies on its
        rerun; the reverse order could resurrect a row. Each is stamped with the time it is recorded
        (:data:`~icefield.config.ownership.TOMBSTONED_AT`), which the tombstone horizon counts from
        (:mod:`icefield.write.tombstones`); a key deleted again at a newer version gets a new stamp."""
        if graves is not None and tombstones is not None and tombstones.num_rows:
            stamped = _stamped(tombstones)
            table = graves.load()
            if table is not None and TOMBSTONED_AT not in table.schema().column_names:
                graves.evolve(table, stamped.schema)  # a tombstone table from before the stamp: it gains the column
            graves.commit(stamped, f"{batch_id}#tombstones", None, run_id, table=table)

    def _after_truncation(self, table: Table, data: pa.Table, truncate_at: list[Any] | None) -> tuple[pa.Table, int]:
        """``data`` without the versions a truncate erased (not newer than the last truncate, or than
        ``truncate_at``); returns the rows kept and the count dropped."""
        order = self.target.order_columns
        raw = table.metadata.properties.get(TRUNCATED_AT)
        version = truncate_at if truncate_at is not None else (json.loads(raw) if raw else None)
        if not self.target.keep_newest or version is None or not data.num_rows or not all(c in data.column_names for c in order):
            return data, 0
        keep = newer_than(data, order, version)
        kept = data.filter(keep)
        return kept, data.num_rows - kept.num_rows

    def tombstone_writer(self) -> TableWriter | None:
        """The writer of ``<table>__tombstones`` (deleted keys and the version that deleted them), kept for
        ``keep_newest`` merges with deletes; None for other targets."""
        t = self.target
        if t.mode != "merge" or not t.keep_newest or not t.delete_column:
            return None
        from icefield.config.models import TargetConfig

        target = TargetConfig(table=t.table + TOMBSTONE_SUFFIX, mode="merge", keys=t.keys, order_by=t.order_by, keep_newest=True)
        return TableWriter(self.catalog, target, self.pipeline, self.engine)

    def write_files(self, table: Table, data: pa.Table, rows: pa.Array | None = None, segments: list[int] | None = None) -> list[Any]:
        """Write ``data`` (or its rows ``rows``, in ``segments`` of their own files) as Parquet data files
        of ``table`` (not yet committed), sorted by the target's keys within each partition or segment.
        Returns the DataFiles."""
        return data_file_writer(self.target)(table, data, rows, segments)

def _stamped(tombstones: pa.Table) -> pa.Table:
    """``tombstones`` with the column :data:`TOMBSTONED_AT` set to now (UTC, microseconds)."""
    if TOMBSTONED_AT in tombstones.column_names:
        tombstones = tombstones.drop_columns([TOMBSTONED_AT])
    now = pa.scalar(int(time.time() * 1_000_000), pa.timestamp("us", tz="UTC"))
    return tombstones.append_column(TOMBSTONED_AT, pa.repeat(now, tombstones.num_rows))


def _like_table(f: pa.Field, existing: pa.Field | None) -> pa.Field:
    """``f`` as the schema update should take it: a field the table lacks (at any depth) is optional, a
    field it has keeps the table's nullability (only an explicit change relaxes one)."""
    if existing is None:
        return f.with_nullable(True).with_type(_all_optional(f.type))
    t, old = f.type, existing.type
    if pa.types.is_struct(t) and pa.types.is_struct(old):
        t = pa.struct([_like_table(c, old.field(c.name) if old.get_field_index(c.name) >= 0 else None) for c in t])
    elif pa.types.is_map(t) and pa.types.is_map(old):
        t = pa.map_(_like_table(t.key_field, old.key_field), _like_table(t.item_field, old.item_field))
    elif pa.types.is_large_list(t) and (pa.types.is_list(old) or pa.types.is_large_list(old)):
        t = pa.large_list(_like_table(t.value_field, old.value_field))
    elif pa.types.is_list(t) and (pa.types.is_list(old) or pa.types.is_large_list(old)):
        t = pa.list_(_like_table(t.value_field, old.value_field))
    return f.with_type(t).with_nullable(existing.nullable)


def _required(schema: Any, path: str) -> bool:
    try:
        return bool(schema.find_field(path).required)
    except ValueError:
        return False


def _all_optional(t: pa.DataType) -> pa.DataType:
    if pa.types.is_struct(t):
        return pa.struct([c.with_nullable(True).with_type(_all_optional(c.type)) for c in t])
    return t


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


def _summary_int(snap: Any, key: str) -> int:
    """The integer ``key`` of a snapshot's summary (0 without a snapshot or the key)."""
    if snap is None or snap.summary is None:
        return 0
    value = (
        snap.summary.additional_properties.get(key)
        if hasattr(snap.summary, "additional_properties")
        else None
    )
    return int(value) if value else 0
