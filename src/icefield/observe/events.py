"""The event stream of a run (``docs/architecture.md``, "Observers").

A run (of a pipeline, a model, or a whole project plan) emits typed events as it goes: it started, a
batch started, the schema changed, a batch committed (with its snapshot id and every count), how far the
source is ahead of it, a gate was evaluated, a batch was held or published, maintenance ran, an error ended a
batch, a node was skipped, the run finished. Observers are callables that receive each event; they register on a run
(``run_pipeline(..., observers=[...])``, ``run_model``, ``run_plan``). Logging is the first observer
(:class:`LoggingObserver`); metrics, lineage and audit subscribe to the same stream, so every number they
report is the number the run counted once (the counts of :class:`BatchCommitted` are those of the run's
:class:`~icefield.pipeline.results.BatchResult`).

An observer must be quick and must not raise: an observer that raises is logged once per event and the
run goes on (observing never changes what lands in a table).

While a run is inside :meth:`EventStream.running` and a batch inside :meth:`EventStream.batch`, every log
record handled by a handler that has a :class:`ContextFilter` carries ``run_id``, ``pipeline`` and
``batch_id`` (the JSON log format prints them). This module imports only the standard library.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar

log = logging.getLogger(__name__)

__all__ = [
    "BatchCommitted",
    "BatchHeld",
    "BatchPublished",
    "BatchStarted",
    "ContextFilter",
    "ErrorRaised",
    "Event",
    "EventStream",
    "GateEvaluated",
    "LoggingObserver",
    "MaintenanceDone",
    "NodeSkipped",
    "Observer",
    "RunFinished",
    "RunStarted",
    "SchemaChanged",
    "SourceLag",
    "SourceRef",
    "TableRef",
    "now",
    "plain",
]


def now() -> datetime:
    """The current time, UTC (events and results carry aware datetimes)."""
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class SourceRef:
    """What a run reads: the source's kind (``sql``, ``files``, ``kafka``, ``debezium``, ``model``) and a URI
    that names it without secrets (``postgresql://app@db:5432/shop#public.orders``, ``kafka://broker:9092/orders``)."""

    kind: str
    uri: str


@dataclass(frozen=True)
class TableRef:
    """An Iceberg table a run read or wrote, at the snapshot it read or the last one it committed (None when
    it read an empty table or committed nothing); ``columns``: its schema at that snapshot, as (name, Iceberg
    type) pairs (empty when unknown)."""

    table: str
    snapshot_id: int | None = None
    columns: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Event:
    """What every event carries: the run's id, the node (pipeline name, or ``model.<name>``) and the time."""

    kind: ClassVar[str] = "event"
    run_id: str
    pipeline: str
    at: datetime = field(default_factory=now)

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values (``event`` names its kind; times in ISO 8601)."""
        return {"event": self.kind, **{f.name: plain(getattr(self, f.name)) for f in fields(self)}}


@dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    """A run began (``sql``: a model's query, for lineage; None for a pipeline; ``description``: the
    pipeline's ``description``, when it has one; ``checks``: the kinds of its row checks, ``not_null``,
    ``range``..., the keys of :class:`BatchCommitted`'s ``failures_by_check``)."""

    kind: ClassVar[str] = "run_started"
    table: str
    source: SourceRef
    sql: str | None = None
    description: str | None = None
    checks: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class BatchStarted(Event):
    """A batch was read and its processing begins (its rows are not decided yet)."""

    kind: ClassVar[str] = "batch_started"
    batch_id: str
    rows_in: int


@dataclass(frozen=True, kw_only=True)
class SchemaChanged(Event):
    """The target table's schema changed for a batch (columns added, types promoted, made optional)."""

    kind: ClassVar[str] = "schema_changed"
    table: str
    batch_id: str | None
    changes: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class BatchCommitted(Event):
    """A batch ended: committed as ``snapshot_id`` (None when it changed no data and only the position moved),
    or ``skipped`` because an earlier run committed it (its counts are then 0 but ``rows_in``). Conservation:
    ``rows_in == rows_committed + rows_quarantined + rows_filtered`` for a batch not skipped. ``stages`` are
    seconds per stage (``checks``, ``quarantine``, ``write``...); ``seconds`` the whole batch. ``cursor_time``
    is the newest cursor value landed when the source's cursor is a timestamp (freshness), else None;
    ``commit_conflicts`` the attempts of its commit that met a concurrent commit and were retried."""

    kind: ClassVar[str] = "batch_committed"
    table: str
    batch_id: str
    snapshot_id: int | None
    skipped: bool
    rows_in: int
    rows_committed: int
    rows_quarantined: int
    rows_filtered: int
    rows_updated: int
    rows_inserted: int
    rows_deleted: int
    rows_stale: int
    files_added: int
    files_removed: int
    files_scanned: int
    files_read: int
    bytes_added: int
    bytes_removed: int
    bytes_read: int
    failures_by_check: dict[str, int]
    stages: dict[str, float]
    seconds: float
    commit_conflicts: int = 0
    cursor_time: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class SourceLag(Event):
    """How far the source is ahead of what a batch committed, measured after its commit (emitted after
    :class:`BatchCommitted`, by sources that can tell cheaply). ``messages``: per topic and partition, the
    partition's high watermark minus the offset committed with the batch (``kafka``, ``debezium`` from a
    topic); ``change_time``: the source time (Debezium's ``source.ts_ms``) of the newest change the batch
    landed, None when it landed none."""

    kind: ClassVar[str] = "source_lag"
    table: str
    batch_id: str
    messages: dict[str, dict[int, int]] = field(default_factory=dict)
    change_time: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class GateEvaluated(Event):
    """One gate's result on a snapshot (``status``: pass, warn, fail, error, as
    :class:`~icefield.quality.results.CheckResult`'s; ``blocking`` when it holds the batch; ``severity``:
    error or warn, as configured)."""

    kind: ClassVar[str] = "gate_evaluated"
    table: str
    gate: str
    status: str
    blocking: bool
    snapshot_id: int | None
    branch: str
    message: str
    severity: str = "error"


@dataclass(frozen=True, kw_only=True)
class BatchHeld(Event):
    """Error gates failed: the batch stays on the audit branch, ``main`` untouched."""

    kind: ClassVar[str] = "batch_held"
    table: str
    batch_id: str | None
    snapshot_id: int | None
    branch: str
    gates: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class BatchPublished(Event):
    """A batch on the audit branch was published: ``main`` now points at ``snapshot_id``."""

    kind: ClassVar[str] = "batch_published"
    table: str
    batch_id: str | None
    snapshot_id: int | None
    branch: str


@dataclass(frozen=True, kw_only=True)
class MaintenanceDone(Event):
    """Maintenance ran on a table between batches (``operation``: compact, archive, expire, orphans,
    tombstones). ``snapshot_id`` is the new snapshot of the table it committed to (for ``tombstones``, of
    ``<table>__tombstones``); ``tombstones_removed`` counts the tombstones a ``tombstones`` prune deleted;
    ``partitions_archived`` and ``rows_archived`` the old partitions an ``archive`` moved to the archive
    location and their rows (its ``files_removed`` are the hot data and delete files, ``files_added`` the
    archive's)."""

    kind: ClassVar[str] = "maintenance_done"
    table: str
    operation: str
    snapshot_id: int | None
    files_added: int = 0
    files_removed: int = 0
    snapshots_expired: int = 0
    tombstones_removed: int = 0
    partitions_archived: int = 0
    rows_archived: int = 0


@dataclass(frozen=True, kw_only=True)
class ErrorRaised(Event):
    """An error ended the run; ``batch_id`` names the batch that stays pending (None between batches).
    ``exit_code``: 75 transient (a rerun may succeed), 2 configuration, 1 data or gates."""

    kind: ClassVar[str] = "error"
    batch_id: str | None
    error: str
    error_type: str
    exit_code: int


@dataclass(frozen=True, kw_only=True)
class NodeSkipped(Event):
    """A node of a project plan did not run: a node it reads from failed or was held."""

    kind: ClassVar[str] = "node_skipped"
    table: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class RunFinished(Event):
    """A run ended (``status``: success, failed, held). Its counts are the sums of its batches' (skipped
    batches count in none); ``inputs`` and ``outputs`` are the tables it read and wrote."""

    kind: ClassVar[str] = "run_finished"
    table: str
    status: str
    started_at: datetime
    finished_at: datetime
    seconds: float
    batches: int
    rows_in: int
    rows_committed: int
    rows_quarantined: int
    rows_filtered: int
    source: SourceRef | None = None
    inputs: tuple[TableRef, ...] = ()
    outputs: tuple[TableRef, ...] = ()
    error: str | None = None
    pending_batch: str | None = None


def plain(value: Any) -> Any:
    """``value`` as JSON-ready values: datetimes in ISO 8601 (UTC, ``Z``), references as dicts."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, (SourceRef, TableRef)):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------- stream

Observer = Callable[[Event], None]
"""Receives each event of a run, in order, in the run's thread. An observer whose ``wants_schemas``
attribute is true (the lineage observer) gets the output tables' columns in :class:`RunFinished`'s
``outputs``; without one, the run does not load them (one catalog load per table written, saved)."""


@dataclass(frozen=True)
class _Context:
    run_id: str
    pipeline: str
    batch_id: str | None = None


_current: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("icefield_run", default=None)
_active: dict[int, _Context] = {}
"""The context of each run in progress, by thread: log records of threads a run did not start itself (a
library's pool) take the context of the only run in progress, when there is exactly one."""
_active_lock = threading.Lock()


class EventStream:
    """The events of one run of one node, sent to its observers in order (:class:`LoggingObserver` first)."""

    def __init__(self, run_id: str, pipeline: str, observers: Sequence[Observer] = ()) -> None:
        self.run_id = run_id
        self.pipeline = pipeline
        self.observers: list[Observer] = [LoggingObserver(), *observers]

    @property
    def wants_schemas(self) -> bool:
        """An observer of this stream wants the output tables' columns (see :data:`Observer`)."""
        return any(getattr(o, "wants_schemas", False) for o in self.observers)

    def emit(self, event_type: type[Event], **values: Any) -> Event:
        """Build an event of ``event_type`` for this run and send it to every observer. Returns it."""
        event = event_type(run_id=self.run_id, pipeline=self.pipeline, **values)
        for observer in self.observers:
            try:
                observer(event)
            except Exception:  # observing never changes what lands
                log.exception(
                    "observer %r failed on event %s of run %s; the run goes on",
                    observer,
                    event.kind,
                    self.run_id,
                )
        return event

    @contextmanager
    def running(self) -> Iterator[None]:
        """Log records in this block (and in threads started with :func:`contextvars.copy_context` from it)
        carry this run's ``run_id`` and ``pipeline``."""
        with _entered(_Context(self.run_id, self.pipeline)):
            yield

    @contextmanager
    def batch(self, batch_id: str) -> Iterator[None]:
        """Log records in this block carry ``batch_id`` too."""
        with _entered(_Context(self.run_id, self.pipeline, batch_id)):
            yield


@contextmanager
def _entered(ctx: _Context) -> Iterator[None]:
    token = _current.set(ctx)
    me = threading.get_ident()
    with _active_lock:
        outer = _active.get(me)
        _active[me] = ctx
    try:
        yield
    finally:
        with _active_lock:
            if outer is None:
                _active.pop(me, None)
            else:
                _active[me] = outer
        _current.reset(token)


def current_context() -> dict[str, str]:
    """``run_id``, ``pipeline`` and ``batch_id`` of the run this code runs in (those set), else {}."""
    ctx = _current.get()
    if ctx is None:
        with _active_lock:
            only = list(_active.values())
        ctx = only[0] if len(only) == 1 else None
    if ctx is None:
        return {}
    out = {"run_id": ctx.run_id, "pipeline": ctx.pipeline}
    if ctx.batch_id is not None:
        out["batch_id"] = ctx.batch_id
    return out


class ContextFilter(logging.Filter):
    """Sets ``run_id``, ``pipeline`` and ``batch_id`` on each record from the run it is emitted in (attributes
    a record already has are kept). Install it on a handler: ``handler.addFilter(ContextFilter())``."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in current_context().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


# ---------------------------------------------------------------------------------------------- logging


class LoggingObserver:
    """The first observer: one log line per event on the ``icefield.events`` logger, with the event's fields
    as the record's ``event`` attribute (the JSON log format prints them). Batch starts, gate results and
    node skips log at DEBUG, errors at ERROR, the rest at INFO."""

    logger = logging.getLogger("icefield.events")

    def __call__(self, event: Event) -> None:
        level = (
            logging.ERROR
            if isinstance(event, ErrorRaised)
            else logging.DEBUG
            if isinstance(event, (BatchStarted, GateEvaluated, SourceLag))
            else logging.INFO
        )
        if not self.logger.isEnabledFor(level):
            return
        self.logger.log(level, "%s", _describe(event), extra={"event": event.to_dict()})

    def __repr__(self) -> str:
        return "LoggingObserver()"


def _describe(e: Event) -> str:
    if isinstance(e, RunStarted):
        return f"run {e.run_id} of {e.pipeline} started: {e.source.kind} source {e.source.uri} -> {e.table}"
    if isinstance(e, BatchStarted):
        return f"batch {e.batch_id} of {e.pipeline}: {e.rows_in} rows read"
    if isinstance(e, SchemaChanged):
        return f"schema of {e.table} changed: {'; '.join(e.changes)}"
    if isinstance(e, BatchCommitted):
        if e.skipped:
            return f"batch {e.batch_id} of {e.pipeline} was already committed as snapshot {e.snapshot_id}; skipped"
        return (
            f"batch {e.batch_id} of {e.pipeline} committed as snapshot {e.snapshot_id} of {e.table}: {e.rows_in} rows in, "
            f"{e.rows_committed} committed, {e.rows_quarantined} quarantined, {e.rows_filtered} filtered in {e.seconds:.2f} s"
        )
    if isinstance(e, SourceLag):
        behind = sum(n for parts in e.messages.values() for n in parts.values())
        when = f", newest change from {plain(e.change_time)}" if e.change_time is not None else ""
        return f"after batch {e.batch_id} of {e.pipeline}: {behind} messages behind{when}"
    if isinstance(e, GateEvaluated):
        return f"gate {e.gate} on snapshot {e.snapshot_id} of {e.table} ({e.branch}): {e.status}: {e.message}"
    if isinstance(e, BatchHeld):
        return f"batch {e.batch_id} of {e.pipeline} held on branch {e.branch} of {e.table} (snapshot {e.snapshot_id}) by {', '.join(e.gates)}"
    if isinstance(e, BatchPublished):
        return f"batch {e.batch_id} of {e.pipeline} published: {e.table} main is now snapshot {e.snapshot_id} (from {e.branch})"
    if isinstance(e, MaintenanceDone):
        moved = f"; {e.partitions_archived} partitions ({e.rows_archived} rows) moved to the archive" if e.operation == "archive" else ""
        return f"{e.operation} of {e.table} done: snapshot {e.snapshot_id}, {e.files_added} files added, {e.files_removed} removed{moved}"
    if isinstance(e, ErrorRaised):
        pending = f"; batch {e.batch_id} stays pending" if e.batch_id else ""
        return (
            f"run {e.run_id} of {e.pipeline} failed ({e.error_type}, exit {e.exit_code}){pending}: {e.error}"
        )
    if isinstance(e, NodeSkipped):
        return f"run {e.run_id}: {e.pipeline} skipped: {e.reason}"
    if isinstance(e, RunFinished):
        return (
            f"run {e.run_id} of {e.pipeline} {e.status} in {e.seconds:.2f} s: {e.batches} batches, {e.rows_in} rows in, "
            f"{e.rows_committed} committed, {e.rows_quarantined} quarantined, {e.rows_filtered} filtered"
        )
    return f"{e.kind} of {e.pipeline}"
