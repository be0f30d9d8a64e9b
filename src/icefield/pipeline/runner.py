"""Running a pipeline: source -> decode -> conform -> row checks -> quarantine -> one commit per batch."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from icefield import failpoints, process
from icefield.catalog import leases
from icefield.config.models import CDC_CONTROL_COLUMNS
from icefield.config.secrets import redact
from icefield.config.window import Window
from icefield.engines import get_engine
from icefield.errors import IcefieldError
from icefield.iceberg.datafiles import RECENT
from icefield.iceberg.history import read_position
from icefield.iceberg.tables import load_table, table_identifier
from icefield.ingest import SourceBatch, cursor_time, open_source
from icefield.ingest.ahead import read_ahead
from icefield.ingest.coerce import conform
from icefield.ingest.identity import source_ref
from icefield.observe.events import (
    BatchStarted,
    EventStream,
    MaintenanceDone,
    Observer,
    RunStarted,
    SchemaChanged,
    SourceLag,
    TableRef,
    now,
)
from icefield.pipeline.audit import Auditor
from icefield.pipeline.quarantine import QuarantinedRow, quarantine_table_name, write_quarantine
from icefield.pipeline.results import BatchResult, PendingBatch, RunResult, columns_of, emit_batch, reporting
from icefield.quality import check_rows
from icefield.write import TableWriter, batch_id_for

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from icefield.catalog.leases import Lease
    from icefield.config import PipelineConfig, Project
    from icefield.config.models import TargetConfig

log = logging.getLogger(__name__)

ProgressCallback = Callable[[BatchResult], None]


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def run_pipeline(
    project: Project,
    name: str,
    catalog: Catalog | None = None,
    run_id: str | None = None,
    on_batch: ProgressCallback | None = None,
    max_batches: int | None = None,
    follow: bool = False,
    stop: threading.Event | None = None,
    wait: float = 0.0,
    observers: Sequence[Observer] = (),
    window: Window | tuple[date, date] | None = None,
) -> RunResult:
    """Run the pipeline ``name`` until its source has nothing new. Returns the :class:`RunResult`.

    With ``window`` (a backfill, :mod:`icefield.config.window`; a :class:`~icefield.config.window.Window` or a
    ``(start, end)`` pair of datetimes or dates, as an Airflow data interval gives them) the run reads instead the rows whose
    ``window.column`` (the pipeline's ``window:`` block) lies in ``[window.start, window.end)``, whatever
    the pipeline's position, and replaces exactly those rows of the table: one batch and one commit per
    window of the pipeline's ``window.size``, each removing the stored rows of its window and adding the
    source's in one Iceberg commit (summary ``icefield.window``). The position of the regular run is
    neither read nor moved, so a regular run before, between or after backfills loses nothing. Raises
    :class:`ConfigError` when the pipeline declares no window, ``window`` is not aligned to its size, the
    column is not a date or timestamp of the source and table, or the engine cannot replace windows.

    Every batch is committed on its own, so a failure keeps the batches before it; the failing batch
    stays pending (its position is not committed) and the next run retries it. After each commit the
    source is told (:meth:`Source.acknowledge`). With ``follow`` a streaming source keeps waiting for
    new records (:meth:`Source.follow`) until ``stop`` is set (the batch in progress is committed first)
    or ``max_batches`` is reached. Raises
    :class:`IcefieldError` subclasses; the partial result is attached as ``error.result``.

    The run emits its events (:mod:`icefield.observe.events`) to the logging observer, then to each of
    ``observers``: run started, then per batch: batch started, schema changed, gates evaluated, held or
    published, batch committed (with every count); maintenance done; error; and always, last, run finished
    (also when the run fails). ``on_batch`` is called with each batch's result after its commit.

    One run at a time writes a table: the run first takes the lease of its target table
    (:mod:`icefield.catalog.leases`), waiting up to ``wait`` seconds while another run holds it, else
    :class:`~icefield.catalog.leases.LeaseHeldError` (a transient error: nothing was read or written).

    The run leaves the process's state as it is (the collector, the environment): a program that owns its
    process tunes it by running pipelines inside :func:`icefield.process.tuned`, as the CLI does.
    """
    from icefield.catalog import open_catalog

    pipe = project.pipeline(name)
    if window is not None and not isinstance(window, Window):
        window = _as_window(window)
    run_id = run_id or new_run_id()
    events = EventStream(run_id, pipe.name, observers)
    result = RunResult(
        pipeline=pipe.name,
        table=pipe.target.table,
        run_id=run_id,
        started_at=now(),
        source=source_ref(pipe, project.root),
        window=window.label if window is not None else None,
    )
    written: dict[str, int | None] = {}  # table -> the last snapshot this run committed to it
    in_flight = _InFlight()  # the batch being written (pending if the run fails)

    def pending(e: IcefieldError) -> str | None:
        if in_flight.batch_id is not None:
            result.pending = PendingBatch(in_flight.batch_id, redact(in_flight.key), in_flight.rows_in, redact(str(e)), type(e).__name__)
        return in_flight.batch_id

    def outputs() -> None:
        # The schema of each table at the snapshot the run last committed, for lineage's schema facet: one
        # catalog load per table written, at the end of the run, only when an observer wants it.
        schemas = events.wants_schemas
        result.outputs = [TableRef(t, snap, output_columns(catalog, t, snap) if schemas else ()) for t, snap in written.items()]

    with events.running():
        events.emit(RunStarted, table=pipe.target.table, source=result.source, description=pipe.description, checks=_check_kinds(pipe))
        with reporting(events, result, pending, outputs):
            catalog = catalog or open_catalog(project)
            _run(project, pipe, catalog, events, result, written, in_flight, on_batch, max_batches, follow, stop, wait, window)
    return result


@dataclass
class _InFlight:
    """The batch a run is writing: its id, source range and rows (``batch_id`` None between batches)."""

    batch_id: str | None = None
    key: str = ""
    rows_in: int = 0



def _run(
    project: Project,
    pipe: PipelineConfig,
    catalog: Catalog,
    events: EventStream,
    result: RunResult,
    written: dict[str, int | None],
    in_flight: _InFlight,
    on_batch: ProgressCallback | None,
    max_batches: int | None,
    follow: bool,
    stop: threading.Event | None,
    wait: float,
    window: Window | None = None,
) -> None:
    """The body of :func:`run_pipeline`: lease, source, batches; ``result`` filled as they commit."""
    run_id = result.run_id
    engine = get_engine(pipe.engine or project.config.engine, project)
    windows = _windows(project, pipe, engine, window, follow) if window is not None else None
    writer = TableWriter(catalog, pipe.target, pipe.name, engine)
    auditor = Auditor(project, catalog, engine, pipe, run_id, events)
    result.checks = auditor.checks
    batch_size = pipe.batch_size or project.config.batch_size
    lease = acquire_lease(catalog, pipe.target, run_id, f"pipeline {pipe.name}", wait)
    source = None
    ahead: Generator[SourceBatch, None, None] | None = None
    # A merging run keeps the data files it writes in memory: the next batch's copy-on-write merge reads
    # them back (most of them, when changes spread over the table) without decoding Parquet.
    keep_files = pipe.target.mode == "merge"
    if keep_files:
        RECENT.hold()
    try:
        source = open_source(pipe, project, batch_size, engine)
        if stop is not None:
            threading.Thread(
                target=_stop_when_set, args=(stop, source), name=f"stop-{pipe.name}", daemon=True
            ).start()
        # In a tuned process (icefield.process.tuned: the CLI, a worker), what exists now (modules, classes,
        # the catalog: ~150k objects) stays out of the garbage collector's full passes while the run goes
        # on: a stream of messages sets them off. Called directly, the run leaves the collector as it is.
        process.freeze()
        # A batch held on the audit branch is settled (published or still held) before anything new is read.
        table = auditor.resolve_held(writer.load())
        schema = table.schema().as_arrow() if table is not None else None
        if windows is not None:
            assert pipe.window is not None
            if table is not None:
                from icefield.engines.files import window_filter

                window_filter(table, pipe.window.column, windows[0].start, windows[0].end)  # the column is a date or timestamp
            # A backfill neither reads nor checks the position: it replaces rows by date, not by source range.
            batches = source.read_window(windows, pipe.window.column, schema)
        else:
            position = read_position(table, pipe.name)
            writer.base_position = position  # what this run continues from; each commit checks it is still there
            batches = source.follow(position, schema) if follow else source.read(position, schema)
        if project.config.read_ahead and not follow:  # following, a batch closes with the newest records
            # The reading thread logs with this run's ids (not a batch's: it reads the next one).
            batches = ahead = read_ahead(batches, source.stop, project.config.read_ahead, f"read-{pipe.name}")
        quiet_until = [0]  # maintenance: no look at the table before this batch number (after a no-op)
        n = 0
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            read_seconds = time.perf_counter() - waited
            # A window's batch replaces the window whatever an earlier backfill of it committed (the source may
            # have changed since): its id is this run's, so only this run's own retries find it done.
            batch_id = batch_id_for(pipe.name, batch.key if batch.window is None else f"{batch.key}#run={run_id}")
            if batch.window is not None and not batch.data.num_rows and not batch.rejected and writer.load() is None:
                continue  # nothing to remove and nothing to add: no table is created for an empty window
            in_flight.batch_id, in_flight.key, in_flight.rows_in = batch_id, batch.key, batch.rows_in
            try:
                with events.batch(batch_id):
                    res = _run_batch(
                        catalog,
                        engine,
                        writer,
                        pipe,
                        batch,
                        batch_id,
                        run_id,
                        auditor,
                        events,
                        written,
                        read_seconds,
                    )
            finally:
                if batch.frame is not None:  # rows the engine holds are freed whatever happened
                    engine.release(batch.frame)
            in_flight.batch_id = None
            result.batches.append(res)
            if batch.window is None:
                writer.base_position = batch.position
                source.acknowledge(batch.position)
                behind = source.lag(batch.position)
                if behind is not None or batch.change_time is not None:
                    events.emit(SourceLag, table=pipe.target.table, batch_id=batch_id, messages=behind or {}, change_time=batch.change_time)
            failpoints.hit("after-acknowledge")
            maintain(catalog, pipe, result, n, quiet_until, events)
            if on_batch is not None:
                on_batch(res)
            n += 1
            if max_batches is not None and n >= max_batches:
                break
    finally:
        lease.release()
        if keep_files:
            RECENT.release()
        if ahead is not None:
            ahead.close()  # joins the reading thread before the source is closed under it
        if source is not None:
            source.close()


def _check_kinds(pipe: PipelineConfig) -> tuple[str, ...]:
    """The kinds of ``pipe``'s row checks (each check is a mapping of one key: ``not_null``, ``range``...),
    once each, in order; ``filter`` rules drop rows rather than check them and are left out."""
    kinds = (next(iter(type(c).model_fields)) for c in pipe.checks)
    return tuple(dict.fromkeys(k for k in kinds if k != "filter"))


def output_columns(catalog: Catalog | None, table: str, snapshot_id: int | None) -> tuple[tuple[str, str], ...]:
    """``table``'s columns at ``snapshot_id`` for the run's outputs; () when the table cannot be loaded now (the
    run's result stands; only its lineage lacks a schema)."""
    if catalog is None:
        return ()
    try:
        return columns_of(load_table(catalog, table_identifier(table)), snapshot_id)
    except Exception as e:  # this runs as the run ends, maybe on its error: it must not replace that error
        log.warning("the schema of %s for the run's outputs: %s", table, e)
        return ()


def _as_window(pair: Any) -> Window:
    """``(start, end)`` as a :class:`Window`; :class:`ConfigError` naming the value when it is not one."""
    from icefield.errors import ConfigError

    try:
        start, end = pair
        return Window(start, end)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"window {pair!r} is not an interval (start, end) of dates or datetimes: {e}") from None


def _windows(project: Project, pipe: PipelineConfig, engine: Any, window: Window, follow: bool) -> list[Window]:
    """The windows of the pipeline's ``window.size`` a backfill of ``window`` replaces one by one; raises
    :class:`ConfigError` when the pipeline cannot be backfilled so (see :func:`run_pipeline`)."""
    from icefield.errors import ConfigError

    where = f"{project.root / 'pipelines'}/{pipe.name}.yaml"
    if pipe.window is None:
        raise ConfigError(
            f"{where}: pipeline {pipe.name} declares no window, so it cannot be backfilled by date; add e.g. "
            "window: {column: updated_at, size: 1d} (the date or timestamp column to cut on), or run it without a window"
        )
    if follow:
        raise ConfigError(f"pipeline {pipe.name}: a window backfill reads a fixed interval and ends; run it without --follow")
    if not engine.capabilities.replaces_windows:
        raise ConfigError(
            f"{where}: engine {engine.name!r} cannot replace a date window's rows in one commit; run the backfill with "
            "the local engine (engine: local in the pipeline file), or without a window"
        )
    try:
        return window.split(pipe.window.seconds)
    except ValueError as e:
        raise ConfigError(f"{where}: window.size {pipe.window.size}: {e}") from None


def acquire_lease(catalog: Catalog, target: TargetConfig, run_id: str, writer: str, wait: float) -> Lease:
    """The lease of ``target``'s table for this run (of a shared table: of this writer's share of it)."""
    key = f"{target.table}#{writer}" if target.shared else target.table
    return leases.acquire(catalog, key, run_id, writer, wait=wait)


def maintain(
    catalog: Catalog,
    pipe: PipelineConfig,
    result: RunResult,
    n: int,
    quiet_until: list[int],
    events: EventStream | None = None,
) -> None:
    """After batch ``n`` of a run: compact the target once ``compact_every`` commits landed since its last
    compaction, then archive old partitions, and (when one of them committed) expire old snapshots, delete
    orphan files and prune old tombstones, as ``target.maintenance`` asks. Never fails the run: a
    compaction that loses to a concurrent merge, or any other maintenance error, is logged and left for
    the next batch. Skipped while the table holds an audit batch (compacting main would stop its publish).
    A compaction that found nothing to do is not tried again for ``compact_every`` batches of the run."""
    from icefield.iceberg.history import ancestors, head_id, held_branches
    from icefield.iceberg.tables import load_existing
    from icefield.write.compact import SUMMARY_OPERATION, compact_table
    from icefield.write.expire import expire_table
    from icefield.write.orphans import remove_orphans
    from icefield.write.tombstones import OPERATION as TOMBSTONES
    from icefield.write.tombstones import prune_tombstones

    m = pipe.target.maintenance
    if m.compact_every is None or n < quiet_until[0]:
        return
    try:
        table = load_existing(catalog, pipe.target.table)
        if held_branches(table):
            return
        since = 0
        for snap in ancestors(table.metadata, head_id(table)):
            if snap.summary is not None and snap.summary[SUMMARY_OPERATION] == "compact":
                break
            since += 1
        if since < m.compact_every:
            return
        done = compact_table(catalog, pipe.target.table, sort_by=list(pipe.target.keys) or None)
        if done.snapshot_id is None:
            quiet_until[0] = n + m.compact_every
        else:
            result.compactions += 1
            if events is not None:
                events.emit(
                    MaintenanceDone,
                    table=pipe.target.table,
                    operation="compact",
                    snapshot_id=done.snapshot_id,
                    files_added=done.files_added,
                    files_removed=done.files_removed + done.delete_files_removed,
                )
        # Archiving is due with the compaction, whether or not that found files to rewrite: a table that
        # appends one file per partition per batch has nothing to compact, and still ages.
        archived = _archive(catalog, pipe, n, events) if m.archive_older_than is not None else None
        if done.snapshot_id is None and archived is None:
            return
        if m.expire_older_than is not None:
            gone = expire_table(
                catalog, pipe.target.table, older_than=m.expire_older_than, retain_last=m.retain_last
            )
            if events is not None:
                events.emit(
                    MaintenanceDone,
                    table=pipe.target.table,
                    operation="expire",
                    snapshot_id=None,
                    files_removed=gone.data_files_deleted,
                    snapshots_expired=gone.snapshots_expired,
                )
        if m.orphans_older_than is not None:
            orphans = remove_orphans(catalog, pipe.target.table, older_than=m.orphans_older_than)
            if events is not None:
                events.emit(
                    MaintenanceDone,
                    table=pipe.target.table,
                    operation="orphans",
                    snapshot_id=None,
                    files_removed=orphans.files_deleted,
                )
        if m.tombstones_older_than is not None:
            pruned = prune_tombstones(catalog, pipe.target.table, older_than=m.tombstones_older_than)
            if events is not None:
                events.emit(
                    MaintenanceDone,
                    table=pipe.target.table,
                    operation=TOMBSTONES,
                    snapshot_id=pruned.snapshot_id,
                    files_added=pruned.files_added,
                    files_removed=pruned.files_removed,
                    tombstones_removed=pruned.tombstones_removed,
                )
    except IcefieldError as e:
        log.warning("maintenance of %s after batch %d skipped: %s", pipe.target.table, n + 1, e)
    except Exception as e:  # a conflict with a concurrent writer, an I/O error: the data is safe either way
        log.warning("maintenance of %s after batch %d failed: %r; the next one retries", pipe.target.table, n + 1, e)


def _archive(catalog: Catalog, pipe: PipelineConfig, n: int, events: EventStream | None) -> int | None:
    """Archive the target's old partitions as ``target.maintenance`` asks (icefield.write.tiering); returns
    the archive's snapshot id (None: nothing was old). An icefield error (a table without a time partition
    field, a lost race) is logged and leaves the rest of the maintenance to run."""
    from icefield.write.tiering import OPERATION, archive_table

    m = pipe.target.maintenance
    assert m.archive_older_than is not None and m.archive_location is not None  # the config requires both
    try:
        moved = archive_table(
            catalog, pipe.target.table, older_than=m.archive_older_than, location=m.archive_location,
            sort_by=list(pipe.target.keys) or None,
        )
    except IcefieldError as e:
        log.warning("archive of %s after batch %d skipped: %s", pipe.target.table, n + 1, e)
        return None
    if events is not None and moved.snapshot_id is not None:
        events.emit(
            MaintenanceDone,
            table=pipe.target.table,
            operation=OPERATION,
            snapshot_id=moved.snapshot_id,
            files_added=moved.files_written,
            files_removed=moved.files_moved + moved.delete_files_removed,
            partitions_archived=moved.partitions,
            rows_archived=moved.rows,
        )
    return moved.snapshot_id


def _stop_when_set(stop: threading.Event, source: Any) -> None:
    stop.wait()
    source.stop()


def _run_batch(
    catalog: Catalog,
    engine: Any,
    writer: TableWriter,
    pipe: PipelineConfig,
    batch: SourceBatch,
    batch_id: str,
    run_id: str,
    auditor: Auditor,
    events: EventStream,
    written: dict[str, int | None],
    read_seconds: float,
) -> BatchResult:
    """Decide where each row of ``batch`` goes and commit it; emits the batch's events (inside the batch's
    logging context) and returns its result, from which the batch-committed event is built."""
    started = time.perf_counter()
    rows_in = batch.rows_in
    window = batch.window
    clock = _Stages(read_seconds)
    events.emit(BatchStarted, batch_id=batch_id, rows_in=rows_in)
    table = writer.load()
    if table is not None and (snap := _already(table, batch_id)) is not None:
        res = BatchResult(
            batch_id,
            rows_in,
            0,
            0,
            0,
            snapshot_id=snap,
            skipped=True,
            seconds=time.perf_counter() - started,
        )
        emit_batch(events, pipe.target.table, res)
        return res
    if table is not None:
        writer.check_position(table, batch_id)  # before its quarantined rows are written
        if window is not None and not batch.data.num_columns:
            batch.data = table.schema().as_arrow().empty_table()  # an empty window: its rows are removed

    quarantined = [QuarantinedRow(r.check, r.reason, r.raw, r.coords, r.raw_bytes) for r in batch.rejected]
    data = batch.data
    control = pipe.target.delete_column

    def schema_changed(changes: list[str]) -> None:
        events.emit(SchemaChanged, table=pipe.target.table, batch_id=batch_id, changes=tuple(changes))

    redecoded = False
    if batch.frame is not None:
        # The engine holds the rows: the table takes the batch's schema first, then the engine hands back
        # the rows a check or a type may refuse, decided below as every batch's rows are (decoded here again
        # first when the engine decoded them: then they may add columns).
        if table is None:
            table = writer.create(_table_schema(data.schema, control))
        if batch.redecode is None:
            table = writer.evolve(table, _table_schema(data.schema, control), open_schema=batch.open_schema, data=data, on_change=schema_changed)
        seen = len(batch.rejected)
        data = _split_frame(engine, pipe, batch, table, control)
        redecoded = batch.redecode is not None
        quarantined.extend(QuarantinedRow(r.check, r.reason, r.raw, r.coords, r.raw_bytes) for r in batch.rejected[seen:])
    if table is not None:
        if batch.frame is None or redecoded:
            table = writer.evolve(
                table,
                _table_schema(data.schema, control),
                open_schema=batch.open_schema,
                data=data,
                on_change=schema_changed,
            )
        data, bad = conform(data, table.schema().as_arrow())
        if control and control in batch.data.column_names and control not in data.column_names:
            data = data.append_column(control, batch.data.column(control))
        quarantined.extend(_take_bad(batch, data, {i: ("type", r) for i, r in bad.items()}))
        data = _drop(data, set(bad))
        batch = _reindexed(batch, data, set(bad))
    clock.lap("schema")
    checks = check_rows(data, pipe.checks)
    failed = dict(checks.bad)
    quarantined.extend(_take_bad(batch, data, failed))
    good = _drop(data, set(failed) | checks.filtered)
    clock.lap("checks")
    failpoints.hit("before-quarantine")
    qr = write_quarantine(catalog, engine, pipe.target.table, pipe.name, batch_id, run_id, quarantined)
    if qr is not None and qr.snapshot_id is not None and not qr.skipped:
        written[quarantine_table_name(pipe.target.table)] = qr.snapshot_id
    failpoints.hit("after-quarantine")
    clock.lap("quarantine")
    if table is None:
        table = writer.create(_table_schema(good.schema, control), rows=good.num_rows > 0)
    file_column = batch_file_column(pipe)
    replace = (file_column, batch.replace_file) if batch.replace_file and file_column else None
    if window is None:
        wr = auditor.commit(writer, good, batch_id, batch.position, replace, table, truncate_at=batch.truncate_at, frame=batch.frame)
    else:
        assert pipe.window is not None
        wr = auditor.commit(writer, good, batch_id, None, None, table, frame=batch.frame, window=(pipe.window.column, window.start, window.end))
    clock.lap("commit")
    if wr.snapshot_id is not None and not wr.skipped:
        written[pipe.target.table] = wr.snapshot_id
    res = BatchResult(
        batch_id=batch_id,
        rows_in=rows_in,
        rows_committed=good.num_rows + (batch.frame.rows if batch.frame is not None else 0),
        rows_quarantined=len(quarantined),
        rows_filtered=len(checks.filtered) + batch.filtered,
        rows_deleted=wr.rows_deleted,
        snapshot_id=wr.snapshot_id,
        skipped=wr.skipped,
        seconds=time.perf_counter() - started,
        replaced_file=batch.replace_file,
        failures_by_check=checks.failures_by_check,
        rows_updated=wr.rows_updated,
        rows_inserted=wr.rows_inserted,
        rows_stale=wr.rows_stale,
        window=window.label if window is not None else None,
        files_added=wr.files_added,
        files_removed=wr.files_removed,
        files_scanned=wr.files_scanned,
        files_read=wr.files_read,
        bytes_added=wr.bytes_added,
        bytes_removed=wr.bytes_removed,
        bytes_read=wr.bytes_read,
        stages=clock.stages,
        commit_conflicts=wr.commit_conflicts,
        cursor_time=cursor_time(batch.position) if window is None else None,
    )
    emit_batch(events, pipe.target.table, res)
    return res


def _split_frame(engine: Any, pipe: PipelineConfig, batch: SourceBatch, table: Any, control: str | None) -> pa.Table:
    """Ask the engine for the rows of ``batch.frame`` a row check (:func:`icefield.quality.frames.suspect_condition`)
    or the table's types may refuse; ``batch`` keeps the rest as its frame and those rows as its ``data``,
    which is returned."""
    from icefield.quality.frames import suspect_condition

    columns = table.schema().column_names
    if control and control in batch.data.column_names:
        columns = [*columns, control]
    suspect = suspect_condition(pipe.checks, columns, engine.capabilities.dialect)
    assert batch.frame is not None
    batch.frame, suspects = engine.split(batch.frame, table, suspect, columns)
    batch.data = suspects
    if batch.redecode is not None:
        batch.redecode(batch, suspects)
    return batch.data


class _Stages:
    """Seconds per stage of one batch, measured lap by lap (``read``: how long the run waited for it)."""

    def __init__(self, read_seconds: float) -> None:
        self.stages: dict[str, float] = {"read": read_seconds}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        t = time.perf_counter()
        self.stages[stage] = t - self._last
        self._last = t


def batch_file_column(pipe: PipelineConfig) -> str | None:
    return getattr(pipe.source, "file_column", None)


def _already(table: Any, batch_id: str) -> int | None:
    from icefield.iceberg.history import find_batch

    return find_batch(table, batch_id)


def _table_schema(schema: pa.Schema, control: str | None) -> pa.Schema:
    """``schema`` without the columns a batch carries to the writer only: the delete flag and a CDC
    source's unchanged-value and default columns."""
    drop = {control, *CDC_CONTROL_COLUMNS}
    return pa.schema([f for f in schema if f.name not in drop], metadata=schema.metadata)


def _take_bad(batch: SourceBatch, data: pa.Table, bad: dict[int, tuple[str, str]]) -> list[QuarantinedRow]:
    if not bad:
        return []
    idx = sorted(bad)
    described = batch.describe_rows(idx) if batch.data is data or batch.data.num_rows == data.num_rows else _describe(data, idx)
    return [QuarantinedRow(bad[i][0], bad[i][1], raw, coords) for i, (raw, coords) in zip(idx, described, strict=True)]


def _describe(data: pa.Table, idx: list[int]) -> list[tuple[str, str]]:
    import json

    rows = data.take(pa.array(idx, pa.int64())).to_pylist()
    return [(json.dumps(r, default=str), f"row {i}") for i, r in zip(idx, rows, strict=True)]


def _drop(data: pa.Table, drop: set[int]) -> pa.Table:
    if not drop:
        return data
    keep = [i for i in range(data.num_rows) if i not in drop]
    return data.take(pa.array(keep, pa.int64()))


def _reindexed(batch: SourceBatch, data: pa.Table, dropped: set[int]) -> SourceBatch:
    """The batch with ``dropped`` rows removed from its raw/coords lists so indices match ``data``."""
    if not dropped:
        batch.data = data
        return batch
    keep = [i for i in range(batch.data.num_rows) if i not in dropped]
    describe = batch.describe
    return SourceBatch(
        data=data,
        position=batch.position,
        key=batch.key,
        raw=[batch.raw[i] for i in keep] if batch.raw is not None else None,
        coords=[batch.coords[i] for i in keep] if batch.coords is not None else None,
        rejected=batch.rejected,
        replace_file=batch.replace_file,
        coord_label=batch.coord_label,
        coord_keys=batch.coord_keys,
        coord_offset=batch.coord_offset,
        filtered=batch.filtered,
        truncate_at=batch.truncate_at,
        open_schema=batch.open_schema,
        describe=(lambda idx: describe([keep[i] for i in idx])) if describe is not None else None,
    )
