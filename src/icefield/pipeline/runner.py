"""Running a pipeline: source -> decode -> conform -> row checks -> quarantine -> one commit per batch."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from icefield import failpoints, process
from icefield.catalog import leases
from icefield.config.models import CDC_CONTROL_COLUMNS
from icefield.config.secrets import redact
from icefield.engines import get_engine
from icefield.errors import GateFailedError, IcefieldError
from icefield.iceberg.datafiles import RECENT
from icefield.iceberg.history import read_position
from icefield.ingest import SourceBatch, open_source
from icefield.ingest.ahead import read_ahead
from icefield.ingest.coerce import conform
from icefield.pipeline.audit import Auditor
from icefield.pipeline.quarantine import QuarantinedRow, write_quarantine
from icefield.pipeline.results import BatchResult, PendingBatch, RunResult
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
) -> RunResult:
    """Run the pipeline ``name`` until its source has nothing new. Returns the :class:`RunResult`.

    Every batch is committed on its own, so a failure keeps the batches before it; the failing batch
    stays pending (its position is not committed) and the next run retries it. After each commit the
    source is told (:meth:`Source.acknowledge`). With ``follow`` a streaming source keeps waiting for
    new records (:meth:`Source.follow`) until ``stop`` is set (the batch in progress is committed first)
    or ``max_batches`` is reached. Raises
    :class:`IcefieldError` subclasses; the partial result is attached as ``error.result``.

    One run at a time writes a table: the run first takes the lease of its target table
    (:mod:`icefield.catalog.leases`), waiting up to ``wait`` seconds while another run holds it, else
    :class:`~icefield.catalog.leases.LeaseHeldError` (a transient error: nothing was read or written).

    The run leaves the process's state as it is (the collector, the environment): a program that owns its
    process tunes it by running pipelines inside :func:`icefield.process.tuned`, as the CLI does.
    """
    from icefield.catalog import open_catalog

    pipe = project.pipeline(name)
    catalog = catalog or open_catalog(project)
    run_id = run_id or new_run_id()
    engine = get_engine(project.config.engine)
    writer = TableWriter(catalog, pipe.target, pipe.name, engine)
    auditor = Auditor(project, catalog, engine, pipe, run_id)
    result = RunResult(pipeline=pipe.name, table=pipe.target.table, run_id=run_id, checks=auditor.checks)
    started = time.perf_counter()
    batch_size = pipe.batch_size or project.config.batch_size
    source = open_source(pipe, project, batch_size)
    log.info("run %s of pipeline %s started", run_id, pipe.name)
    if stop is not None:
        threading.Thread(target=_stop_when_set, args=(stop, source), name=f"stop-{pipe.name}", daemon=True).start()
    in_flight: SourceBatch | None = None
    ahead: Generator[SourceBatch, None, None] | None = None
    lease = acquire_lease(catalog, pipe.target, run_id, f"pipeline {pipe.name}", wait)
    # In a tuned process (icefield.process.tuned: the CLI, a worker), what exists now (modules, classes, the
    # catalog: ~150k objects) stays out of the garbage collector's full passes while the run goes on: a
    # stream of messages sets them off. Called directly, the run leaves the collector as it is.
    process.freeze()
    # A merging run keeps the data files it writes in memory: the next batch's copy-on-write merge reads
    # them back (most of them, when changes spread over the table) without decoding Parquet.
    keep_files = pipe.target.mode == "merge"
    if keep_files:
        RECENT.hold()
    try:
        # A batch held on the audit branch is settled (published or still held) before anything new is read.
        table = auditor.resolve_held(writer.load())
        position = read_position(table, pipe.name)
        writer.base_position = position  # what this run continues from; each commit checks it is still there
        schema = table.schema().as_arrow() if table is not None else None
        batches = source.follow(position, schema) if follow else source.read(position, schema)
        if project.config.read_ahead and not follow:  # following, a batch closes with the newest records
            batches = ahead = read_ahead(batches, source.stop, project.config.read_ahead, f"read-{pipe.name}")
        quiet_until = [0]  # maintenance: no look at the table before this batch number (after a no-op)
        for n, batch in enumerate(batches):
            in_flight = batch
            res = _run_batch(catalog, engine, writer, pipe, batch, run_id, auditor)
            in_flight = None
            writer.base_position = batch.position
            result.batches.append(res)
            source.acknowledge(batch.position)
            failpoints.hit("after-acknowledge")
            maintain(catalog, pipe, result, n, quiet_until)
            if on_batch is not None:
                on_batch(res)
            if max_batches is not None and n + 1 >= max_batches:
                break
    except IcefieldError as e:
        result.status = "held" if isinstance(e, GateFailedError) else "failed"
        result.error = redact(str(e))
        if in_flight is not None:
            result.pending = PendingBatch(
                batch_id_for(pipe.name, in_flight.key), redact(in_flight.key), in_flight.rows_in, result.error, type(e).__name__
            )
            log.error("run %s of pipeline %s: batch %s stays pending: %s", run_id, pipe.name, result.pending.batch_id, result.error)
        e.result = result  # type: ignore[attr-defined]
        raise
    finally:
        lease.release()
        if keep_files:
            RECENT.release()
        if ahead is not None:
            ahead.close()  # joins the reading thread before the source is closed under it
        source.close()
        result.seconds = time.perf_counter() - started
    log.info(
        "run %s of pipeline %s: %d batches, %d rows in, %d committed, %d quarantined, %d filtered",
        run_id, pipe.name, len(result.batches), result.rows_in, result.rows_committed,
        result.rows_quarantined, result.rows_filtered,
    )
    return result


def acquire_lease(catalog: Catalog, target: TargetConfig, run_id: str, writer: str, wait: float) -> Lease:
    """The lease of ``target``'s table for this run (of a shared table: of this writer's share of it)."""
    key = f"{target.table}#{writer}" if target.shared else target.table
    return leases.acquire(catalog, key, run_id, writer, wait=wait)


def maintain(catalog: Catalog, pipe: PipelineConfig, result: RunResult, n: int, quiet_until: list[int]) -> None:
    """After batch ``n`` of a run: compact the target once ``compact_every`` commits landed since its last
    compaction (and then expire old snapshots), as ``target.maintenance`` asks. Never fails the run: a
    compaction that loses to a concurrent merge, or any other maintenance error, is logged and left for
    the next batch. Skipped while the table holds an audit batch (compacting main would stop its publish).
    A compaction that found nothing to do is not tried again for ``compact_every`` batches of the run."""
    from icefield.iceberg.history import ancestors, head_id, held_branches
    from icefield.iceberg.tables import load_existing
    from icefield.write.compact import SUMMARY_OPERATION, compact_table
    from icefield.write.expire import expire_table

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
            return
        result.compactions += 1
        if m.expire_older_than is not None:
            expire_table(catalog, pipe.target.table, older_than=m.expire_older_than, retain_last=m.retain_last)
    except IcefieldError as e:
        log.warning("maintenance of %s after batch %d skipped: %s", pipe.target.table, n + 1, e)
    except Exception as e:  # a conflict with a concurrent writer, an I/O error: the data is safe either way
        log.warning("maintenance of %s after batch %d failed: %r; the next one retries", pipe.target.table, n + 1, e)


def _stop_when_set(stop: threading.Event, source: Any) -> None:
    stop.wait()
    source.stop()


def _run_batch(
    catalog: Catalog, engine: Any, writer: TableWriter, pipe: PipelineConfig, batch: SourceBatch, run_id: str, auditor: Auditor
) -> BatchResult:
    started = time.perf_counter()
    batch_id = batch_id_for(pipe.name, batch.key)
    table = writer.load()
    if table is not None and (snap := _already(table, batch_id)) is not None:
        log.info("batch %s is already committed as snapshot %s; skipping", batch_id, snap)
        return BatchResult(batch_id, batch.rows_in, 0, 0, 0, snapshot_id=snap, skipped=True)
    if table is not None:
        writer.check_position(table, batch_id)  # before its quarantined rows are written

    quarantined = [QuarantinedRow(r.check, r.reason, r.raw, r.coords, r.raw_bytes) for r in batch.rejected]
    data = batch.data
    control = pipe.target.delete_column
    if table is not None:
        table = writer.evolve(table, _table_schema(data.schema, control), open_schema=batch.open_schema, data=data)
        data, bad = conform(data, table.schema().as_arrow())
        if control and control in batch.data.column_names and control not in data.column_names:
            data = data.append_column(control, batch.data.column(control))
        quarantined.extend(_take_bad(batch, data, {i: ("type", r) for i, r in bad.items()}))
        data = _drop(data, set(bad))
        batch = _reindexed(batch, data, set(bad))
    checks = check_rows(data, pipe.checks)
    failed = dict(checks.bad)
    quarantined.extend(_take_bad(batch, data, failed))
    good = _drop(data, set(failed) | checks.filtered)
    failpoints.hit("before-quarantine")
    write_quarantine(catalog, engine, pipe.target.table, pipe.name, batch_id, run_id, quarantined)
    failpoints.hit("after-quarantine")
    if table is None:
        table = writer.create(_table_schema(good.schema, control), rows=good.num_rows > 0)
    file_column = batch_file_column(pipe)
    replace = (file_column, batch.replace_file) if batch.replace_file and file_column else None
    wr = auditor.commit(writer, good, batch_id, batch.position, replace, table, truncate_at=batch.truncate_at)
    return BatchResult(
        batch_id=batch_id,
        rows_in=batch.rows_in,
        rows_committed=good.num_rows,
        rows_quarantined=len(quarantined),
        rows_filtered=len(checks.filtered) + batch.filtered,
        rows_deleted=wr.rows_deleted,
        snapshot_id=wr.snapshot_id,
        skipped=wr.skipped,
        seconds=time.perf_counter() - started,
        replaced_file=batch.replace_file,
        failures_by_check=checks.failures_by_check,
    )


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
