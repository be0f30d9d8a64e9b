"""Typed results of a run. Observability turns these into metrics, logs and lineage."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from icefield.config.secrets import redact
from icefield.errors import GateFailedError, IcefieldError
from icefield.observe.events import (
    BatchCommitted,
    ErrorRaised,
    EventStream,
    RunFinished,
    SourceRef,
    TableRef,
    now,
    plain,
)
from icefield.quality.results import CheckResult

if TYPE_CHECKING:
    from pyiceberg.table import Table

__all__ = ["BatchResult", "CheckResult", "PendingBatch", "RunResult", "columns_of", "emit_batch", "emit_finished", "reporting"]


def columns_of(table: Table | None, snapshot_id: int | None) -> tuple[tuple[str, str], ...]:
    """The top-level columns of ``table`` at ``snapshot_id`` (its current schema when the snapshot is None or
    unknown) as (name, Iceberg type) pairs, for the tables a run's events name (lineage's schema facet)."""
    if table is None:
        return ()
    schema = table.schema()
    snap = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else None
    if snap is not None and snap.schema_id is not None:
        schema = table.schemas().get(snap.schema_id, schema)
    return tuple((f.name, str(f.field_type)) for f in schema.fields)

@dataclass
class BatchResult:
    """One batch: what came in, where each row went, and the commit that holds it."""

    batch_id: str
    rows_in: int
    rows_committed: int
    rows_quarantined: int
    rows_filtered: int
    rows_deleted: int = 0
    snapshot_id: int | None = None
    skipped: bool = False
    seconds: float = 0.0
    replaced_file: str | None = None
    failures_by_check: dict[str, int] = field(default_factory=dict)
    rows_updated: int = 0
    """Of ``rows_committed`` (a merge): rows that replaced a stored version, and rows new to the table."""
    rows_inserted: int = 0
    rows_stale: int = 0
    """Rows a merge dropped as not newer than the stored version (``keep_newest``); counted in ``rows_committed``."""
    window: str | None = None
    """The date window the batch replaced (a backfill: ``2026-01-01..2026-01-02``); None for a regular batch."""
    files_added: int = 0
    files_removed: int = 0
    files_scanned: int = 0
    """Data files a merge planned over, of which it read ``files_read`` (``bytes_read`` bytes)."""
    files_read: int = 0
    bytes_added: int = 0
    bytes_removed: int = 0
    bytes_read: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: ``read`` (waiting for the source), ``schema``, ``checks``, ``quarantine``, ``commit``."""


@dataclass
class PendingBatch:
    """The batch a failed run was writing: nothing of it is committed and the position is not advanced,
    so the next run reads and writes it again (exactly once: its batch id is deterministic).
    ``source_range`` is the source's description of the rows (the batch id derives from it)."""

    batch_id: str
    source_range: str
    rows_in: int
    error: str
    error_type: str


@dataclass
class RunResult:
    """A pipeline (or model) run. Conservation: ``rows_in == rows_committed + rows_quarantined + rows_filtered``
    (rows of skipped batches count in none of them)."""

    pipeline: str
    table: str
    run_id: str
    # success | failed | held (a gate held a batch on its audit branch) | skipped (not run: a pipeline or model
    # it reads failed or was held in the same run, see icefield.pipeline.plan; ``reason`` says which)
    status: str = "success"
    batches: list[BatchResult] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    pending: PendingBatch | None = None
    compactions: int = 0  # compactions that ran between batches (target.maintenance)
    reason: str | None = None  # why a skipped run did not run
    started_at: datetime | None = None
    finished_at: datetime | None = None
    window: str | None = None
    """The interval a backfill run replaced (``2026-01-01..2026-01-08``, :mod:`icefield.config.window`); None
    for a regular run."""
    source: SourceRef | None = None
    """What the run read: the source's kind and URI without secrets (for a model: ``model`` and its SQL file)."""
    inputs: list[TableRef] = field(default_factory=list)
    """The Iceberg tables the run read, at the snapshots it read (a model's inputs)."""
    outputs: list[TableRef] = field(default_factory=list)
    """The tables the run committed to, at the last snapshot it committed (its target; the quarantine)."""

    @property
    def rows_in(self) -> int:
        return sum(b.rows_in for b in self.batches if not b.skipped)

    @property
    def rows_committed(self) -> int:
        return sum(b.rows_committed for b in self.batches if not b.skipped)

    @property
    def rows_quarantined(self) -> int:
        return sum(b.rows_quarantined for b in self.batches if not b.skipped)

    @property
    def rows_filtered(self) -> int:
        return sum(b.rows_filtered for b in self.batches if not b.skipped)

    @property
    def snapshots(self) -> list[int]:
        return [b.snapshot_id for b in self.batches if b.snapshot_id is not None and not b.skipped]

    @property
    def conserved(self) -> bool:
        return self.rows_in == self.rows_committed + self.rows_quarantined + self.rows_filtered

    def to_dict(self) -> dict[str, Any]:
        d = {k: plain(v) for k, v in asdict(self).items()}
        d.update(
            rows_in=self.rows_in,
            rows_committed=self.rows_committed,
            rows_quarantined=self.rows_quarantined,
            rows_filtered=self.rows_filtered,
            snapshots=self.snapshots,
            conserved=self.conserved,
        )
        return d


_BATCH_EVENT_FIELDS = tuple(f.name for f in fields(BatchCommitted) if f.name not in ("run_id", "pipeline", "at", "table"))
"""The fields a batch-committed event copies from its :class:`BatchResult` (every one it has, same name)."""


def emit_batch(events: EventStream, table: str, res: BatchResult) -> None:
    """Emit the batch-committed event of ``res`` (a batch of ``table``): its counts are the result's, counted once."""
    values = {name: getattr(res, name) for name in _BATCH_EVENT_FIELDS}
    values.update(failures_by_check=dict(res.failures_by_check), stages=dict(res.stages))
    events.emit(BatchCommitted, table=table, **values)


def emit_finished(events: EventStream, result: RunResult) -> None:
    """Emit the run-finished event of ``result`` (a run that ended, however)."""
    assert result.started_at is not None and result.finished_at is not None
    events.emit(
        RunFinished,
        table=result.table,
        status=result.status,
        started_at=result.started_at,
        finished_at=result.finished_at,
        seconds=result.seconds,
        batches=len(result.batches),
        rows_in=result.rows_in,
        rows_committed=result.rows_committed,
        rows_quarantined=result.rows_quarantined,
        rows_filtered=result.rows_filtered,
        source=result.source,
        inputs=tuple(result.inputs),
        outputs=tuple(result.outputs),
        error=result.error,
        pending_batch=result.pending.batch_id if result.pending else None,
    )


@contextlib.contextmanager
def reporting(
    events: EventStream,
    result: RunResult,
    pending: Callable[[IcefieldError], str | None] | None = None,
    before_finish: Callable[[], None] | None = None,
) -> Iterator[None]:
    """The end of a run, however it ends: an :class:`IcefieldError` sets ``result``'s status (``held`` for
    failing gates, else ``failed``) and error, emits the error event (with the id of the batch that stays
    pending, which ``pending(error)`` names after recording it in ``result``; logged inside that batch's
    context), attaches ``result`` to the error as ``error.result`` and re-raises it; any other exception (an
    interruption, a bug) marks the run failed and propagates. Always, last: the end time and seconds are
    set, ``before_finish()`` runs, and the run-finished event is emitted."""
    started = time.perf_counter()
    try:
        yield
    except IcefieldError as e:
        result.status = "held" if isinstance(e, GateFailedError) else "failed"
        result.error = redact(str(e))
        batch_id = pending(e) if pending is not None else None
        with events.batch(batch_id) if batch_id is not None else contextlib.nullcontext():
            events.emit(ErrorRaised, batch_id=batch_id, error=result.error, error_type=type(e).__name__, exit_code=e.exit_code)
        e.result = result  # type: ignore[attr-defined]
        raise
    except BaseException as e:  # an interruption, or a bug: the run still reports how it ended
        result.status = "failed"
        result.error = redact(f"{type(e).__name__}: {e}")
        raise
    finally:
        result.finished_at = now()
        result.seconds = time.perf_counter() - started
        if before_finish is not None:
            before_finish()
        emit_finished(events, result)
