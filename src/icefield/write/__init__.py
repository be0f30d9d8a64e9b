"""The writer: one Iceberg commit per batch, with the source position inside it (DESIGN.md rules 1-2).

Every commit carries the snapshot summary entries ``icefield.pipeline``, ``icefield.batch-id`` and
``icefield.run-id``, and sets the table property ``icefield.state.<pipeline>`` to the source position
after the batch, in the same atomic metadata swap as the data. A batch id already in the table's history
is skipped. A commit whose outcome is unknown is resolved by reloading the table and looking for the
batch id, never by deleting files.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from icefield import failpoints
from icefield.catalog import table_identifier
from icefield.config.models import CDC_CONTROL_COLUMNS
from icefield.config.ownership import QUARANTINE_SUFFIX as QUARANTINE_SUFFIX
from icefield.config.ownership import TOMBSTONE_SUFFIX as TOMBSTONE_SUFFIX
from icefield.config.partitions import parse_partitions
from icefield.errors import BranchMovedError, CommitConflictError, ConfigError, SchemaError, TransientError
from icefield.iceberg.commits import commit_transaction
from icefield.iceberg.datafiles import write_data_files
from icefield.iceberg.history import (
    STATE_PREFIX,
    SUMMARY_BATCH_ID,
    SUMMARY_PIPELINE,
    SUMMARY_RUN_ID,
    find_batch,
    read_position,
)
from icefield.iceberg.partitioning import check_partition_types
from icefield.iceberg.planning import plan_files, refusing_equality_deletes
from icefield.iceberg.producers import merge_overwrite
from icefield.iceberg.schema import conform_to_table
from icefield.iceberg.versions import dedupe_latest, newer_than, split_deletes
from icefield.write.unchanged import fill_unchanged

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from icefield.config.models import TargetConfig
    from icefield.engines.base import Engine, MergePlan

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


class TableWriter:
    """Writes batches of one pipeline into one Iceberg table."""

    def __init__(self, catalog: Catalog, target: TargetConfig, pipeline: str, engine: Engine) -> None:
        self.catalog = catalog
        self.target = target
        self.pipeline = pipeline
        self.engine = engine
        self.identifier = table_identifier(target.table)
        self.base_position: Any = _UNCHECKED
        """The source position this run continues from (what the table held when the run read it, then each
        batch's position). When set, a commit first checks that the table still holds it: another run of
        the pipeline that moved it meanwhile fails the commit with :class:`PositionMovedError`."""

    # ------------------------------------------------------------------ table lifecycle

    def load(self) -> Table | None:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            return None

    def create(self, schema: pa.Schema, rows: bool = True) -> Table:
        """Create the target table for ``schema`` with the configured partition spec and properties.
        ``rows`` False: the batch has no row (all quarantined, filtered, or only Debezium tombstones), so its
        schema may lack the merge keys, which later batches add."""
        from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError

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
        namespace = self.identifier[:-1]
        self.catalog.create_namespace_if_not_exists(namespace)
        props = {**DEFAULT_TABLE_PROPERTIES, **self.target.properties}
        try:
            tx = self.catalog.create_table_transaction(self.identifier, schema=_nullable(schema), properties=props)
            if fields:
                with tx.update_spec() as spec:
                    for f in fields:
                        spec.add_field(f.source, f.transform, f.name)
            return commit_transaction(tx)
        except (TableAlreadyExistsError, CommitFailedException) as e:
            # Another run created it first (SQL catalogs say "Table already exists" either way): use theirs.
            table = self.load()
            if table is None:
                raise CommitConflictError(f"creating table {self.target.table} failed: {e}; rerun") from e
            return table

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

    def evolve(self, table: Table, schema: pa.Schema, open_schema: bool = False, data: pa.Table | None = None) -> Table:
        """Bring the table's schema to what rows of ``schema`` need, as the target's contract allows.

        The differences are classified (:func:`icefield.write.contracts.classify`); if the contract
        refuses one, :class:`SchemaError` is raised before anything is written. Accepted new columns are
        added (optional) and accepted promotions applied in one schema commit; a dropped column accepted
        by ``evolve`` stays in the table (made optional if it was required) and the batch's rows get nulls.
        ``open_schema``: see :func:`classify`. ``data`` holds the batch's rows when the caller has them: a
        required column (another engine's ``NOT NULL``) then stays required unless a row really has a null
        in it; without it the Arrow field's nullability decides. A merge key or an identifier field of the
        table never becomes optional: a batch with a null there is refused. A change Iceberg itself refuses
        is a :class:`SchemaError` too. Returns the (refreshed) table.
        """
        from icefield.write.contracts import DROPPED, NEW_COLUMN, NOW_OPTIONAL, PROMOTION

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
        try:
            with table.update_schema() as upd:
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
        return table.refresh()

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
        Raises :class:`CommitConflictError` when conflicts outlast the retries,
        :class:`TransientError` when the outcome stays unknown and :class:`BranchMovedError` when
        ``branch`` is not at ``main``'s head.
        """
        from pyiceberg.exceptions import (
            CommitFailedException,
            CommitStateUnknownException,
            ValidationException,
        )
        from sqlalchemy.exc import DBAPIError

        unknown_outcome = (OSError, TransientError, CommitStateUnknownException, DBAPIError)
        started = time.perf_counter()
        delay = 0.05
        written = _Written()
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            if attempt > 1 or table is None:
                table = self.load()
            if table is None:
                control = {self.target.delete_column, *CDC_CONTROL_COLUMNS}
                schema = pa.schema([f for f in data.schema if f.name not in control])
                table = self.create(schema, rows=data.num_rows > 0)
            done = find_batch(table, batch_id, ref=branch or "main")
            if done is not None:
                return WriteResult(self.target.table, batch_id, 0, 0, 0, 0, done, True, time.perf_counter() - started)
            self.check_position(table, batch_id)
            try:
                return self._commit_once(table, data, batch_id, position, run_id, replace_file, started, truncate_at, branch, written)
            except (CommitFailedException, ValidationException) as e:
                # Nothing landed (pyiceberg guarantees it for these two): check again and replan on the new
                # snapshot (the data files of an append are written once and kept for the next attempt).
                log.info("commit of batch %s to %s conflicted (attempt %d): %s", batch_id, self.target.table, attempt, e)
                if time.perf_counter() - started > COMMIT_SECONDS:
                    break
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 1.0)
            except BranchMovedError:
                raise  # nothing was written: the caller cuts the branch again
            except unknown_outcome as e:
                # Unknown outcome: the swap may or may not have landed. Look, never delete.
                table = self.load()
                if table is not None and (snap := find_batch(table, batch_id, ref=branch or "main")) is not None:
                    log.warning("commit of batch %s reported %r but landed as snapshot %s", batch_id, e, snap)
                    return WriteResult(self.target.table, batch_id, data.num_rows, 0, 0, 0, snap, False, time.perf_counter() - started)
                raise TransientError(f"commit of batch {batch_id} to {self.target.table} failed: {e}; it stays pending, rerun to retry") from e
        raise CommitConflictError(
            f"batch {batch_id} could not be committed to {self.target.table}: every attempt in "
            f"{time.perf_counter() - started:.0f} s met concurrent commits; rerun, or give each writer its own table"
        )

    def check_position(self, table: Table, batch_id: str) -> None:
        """Raise :class:`PositionMovedError` when ``table`` no longer holds :attr:`base_position` for this
        pipeline (nothing to check until it is set)."""
        if self.base_position is _UNCHECKED:
            return
        current = read_position(table, self.pipeline)
        if _canonical(current) != _canonical(self.base_position):
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
        written: _Written | None = None,
    ) -> WriteResult:
        from icefield.iceberg.history import MAIN, SUMMARY_POSITION, head_id

        summary = {SUMMARY_PIPELINE: self.pipeline, SUMMARY_BATCH_ID: batch_id, SUMMARY_RUN_ID: run_id}
        if branch is not None and head_id(table, branch) != head_id(table):
            raise BranchMovedError(
                f"branch {branch!r} of {self.target.table} is at snapshot {head_id(table, branch)}, main at "
                f"{head_id(table)}: cut it again before writing"
            )
        encoded = json.dumps(position, sort_keys=True, separators=(",", ":")) if position is not None else None
        if self.target.mode == "merge":
            table = self._backfill_defaults(table, data, run_id, branch)
        tx = table.transaction()
        mode = self.target.mode
        added: list[Any] = []
        removed: list[Any] = []
        add_deletes: list[Any] = []
        remove_deletes: list[Any] = []
        referenced: list[Any] = []
        rows_deleted = 0
        rows_written = data.num_rows
        conflict = None
        if mode == "merge":
            graves = self.tombstone_writer()
            data, rows_stale = self._after_truncation(table, data, truncate_at)
            # Unchanged TOAST values of a CDC batch take the row's previous value (not a stored one past a truncate).
            data = fill_unchanged(table, data, self.target, stored=truncate_at is None)
            if truncate_at is not None:
                tx.set_properties({TRUNCATED_AT: json.dumps(truncate_at)})
                plan = self._truncate_plan(table, data)
                self._record_tombstones(graves, plan.tombstones, batch_id, run_id)
            else:
                plan = self._merge(table, data, graves, batch_id, run_id)
            plan.rows_stale += rows_stale
            added, removed, rows_deleted = plan.add, plan.remove, plan.rows_deleted
            add_deletes, remove_deletes, referenced = plan.add_deletes, plan.remove_deletes, plan.referenced
            rows_written, conflict = plan.rows_written, plan.conflict_filter
        else:
            if data.num_rows:
                added = (written or _Written()).files(table, lambda: self.write_files(table, data))
            if mode == "overwrite":
                removed = self._files_to_overwrite(table, added)
            elif replace_file is not None and replace_file[0] in table.schema().as_arrow().names:
                # Copy-on-write delete of the rows the changed source file gave before; pyiceberg reads the
                # candidate files and rewrites those that also hold other rows (bounds alone can't tell).
                from pyiceberg.expressions import EqualTo

                if table.current_snapshot() is not None:
                    with refusing_equality_deletes(table, "replace a changed source file's rows in it"):
                        tx.delete(EqualTo(replace_file[0], replace_file[1]), snapshot_properties=summary, branch=branch or MAIN)  # type: ignore[call-arg,arg-type]
        changed = bool(added or removed or add_deletes or remove_deletes)
        if encoded is not None:
            if branch is not None and changed:
                # Audited: main's position moves only when the publish moves main's data.
                summary[SUMMARY_POSITION] = encoded
            else:
                tx.set_properties({STATE_PREFIX + self.pipeline: encoded})
        failpoints.hit("after-data-files")
        if changed:
            if add_deletes or remove_deletes or removed:
                deltas = set(referenced) if add_deletes or remove_deletes else None
                producer_cm = merge_overwrite(tx, summary, conflict, branch=branch or MAIN, referenced=deltas)
            else:
                producer_cm = tx.update_snapshot(snapshot_properties=summary, branch=branch or MAIN).fast_append()
            with producer_cm as producer:
                for f in [*removed, *{d.file_path: d for d in remove_deletes}.values()]:
                    producer.delete_data_file(f)
                for f in [*added, *add_deletes]:
                    producer.append_data_file(f)
        elif encoded is not None:
            # A position alone makes no snapshot, so nothing else would notice a commit to main since the
            # table was loaded (and checked): require main unmoved, as a data commit does.
            from pyiceberg.table.update import AssertRefSnapshotId

            tx._requirements += (AssertRefSnapshotId(snapshot_id=head_id(table), ref=MAIN),)  # type: ignore[call-arg]
        failpoints.hit("before-commit")
        committed = commit_transaction(tx)
        failpoints.hit("after-commit")
        snap = (committed.snapshot_by_name(branch) if branch else committed.current_snapshot()) if changed else None
        return WriteResult(
            self.target.table,
            batch_id,
            rows_written,
            rows_deleted,
            len(added),
            len(removed),
            snap.snapshot_id if snap else None,
            False,
            time.perf_counter() - started,
        )

    def _backfill_defaults(self, table: Table, data: pa.Table, run_id: str, branch: str | None) -> Table:
        """The table after the stored rows got the defaults of columns the batch added (a CDC source's
        ``ALTER TABLE ... ADD COLUMN ... DEFAULT``, :mod:`icefield.write.defaults`), in a commit of its own."""
        from icefield.write.defaults import backfill_defaults, new_defaults

        if branch is not None:
            if new_defaults(table, data):
                log.warning("%s: audited batches do not give stored rows the defaults of added columns; they read NULL", self.target.table)
            return table
        return backfill_defaults(table, data, self.write_files, {SUMMARY_PIPELINE: self.pipeline, SUMMARY_RUN_ID: run_id})

    def _merge(self, table: Table, data: pa.Table, graves: TableWriter | None, batch_id: str, run_id: str) -> MergePlan:
        """The engine's merge plan, the batch's deletes recorded in the tombstone table meanwhile (in a
        thread of their own, as soon as the engine knows them) and before the plan is returned; a failed
        merge raises its own error once the recording ended."""
        if graves is None:
            return self.engine.merge(table, data, self.target, self.write_files)
        recording: list[Future[None]] = []

        def record(tombstones: pa.Table) -> None:
            run = contextvars.copy_context().run
            recording.append(pool.submit(run, self._record_tombstones, graves, tombstones, batch_id, run_id))

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tombstones") as pool:
            plan = self.engine.merge(table, data, self.target, self.write_files, tombstones=graves.load(), on_tombstones=record)
            for future in recording:
                future.result()
        if not recording:  # an engine that did not hand them over
            self._record_tombstones(graves, plan.tombstones, batch_id, run_id)
        return plan

    @staticmethod
    def _record_tombstones(graves: TableWriter | None, tombstones: pa.Table | None, batch_id: str, run_id: str) -> None:
        """Record a batch's deletes (keys and version) in the tombstone table. Before the data commit: a
        tombstone that lands first only blocks versions older than a delete this batch applies on its
        rerun; the reverse order could resurrect a row."""
        if graves is not None and tombstones is not None and tombstones.num_rows:
            graves.commit(tombstones, f"{batch_id}#tombstones", None, run_id)

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

    def _truncate_plan(self, table: Table, data: pa.Table) -> MergePlan:
        """A merge plan that removes every data file and writes the newest version of each key in
        ``data`` that is not a delete (the table as it is after a truncate and then ``data``)."""
        from pyiceberg.expressions import AlwaysTrue

        from icefield.engines.base import MergePlan

        t = self.target
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
            plan.add = self.write_files(table, batch)  # sorted by key there
        plan.rows_written = plan.rows_inserted = batch.num_rows
        return plan

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
        keys = [k for k in self.target.keys if k in data.column_names]
        return write_data_files(table, conform_to_table(table, data), sort_by=keys, rows=rows, segments=segments)

    def _files_to_overwrite(self, table: Table, added: list[Any]) -> list[Any]:
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
        if self.target.overwrite == "table" or spec.is_unpartitioned():
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
            added.extend(self.write_files(table, pa.concat_tables(kept)))
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

    from icefield.columns import row_numbers

    spec, schema = table.spec(), table.schema()
    data = ArrowScan(table.metadata, table.io, schema, AlwaysTrue()).to_table([task])
    if not data.num_rows:
        return None
    names = [f"__part_{i}" for i in range(len(spec.fields))]
    parts = {}
    for field, name in zip(spec.fields, names, strict=True):
        source = schema.find_field(field.source_id)
        parts[name] = field.transform.pyarrow_transform(source.field_type)(data.column(source.name))
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


def _canonical(position: Any) -> str:
    return json.dumps(position, sort_keys=True, separators=(",", ":"))


def _record_key(record: Any) -> tuple[Any, ...]:
    return tuple(record[i] for i in range(len(record))) if record is not None else ()


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
