"""Quarantine list, show and replay (``docs/architecture.md``, "The write path", rule 4): bad rows are kept,
then retried.

:func:`replay_quarantine` re-validates the quarantined rows of a table with the pipeline's *current*
rules: the raw record is decoded again, typed with the table's current schema and the pipeline's
declared column types, checked against its contract and its row checks. Rows that pass move into the
table; rows that still fail stay, with their new reason; rows a ``filter`` rule now drops leave the
quarantine and are counted as filtered.

Two Iceberg tables cannot commit together, so a move is three commits that a crash or a rerun can
resume at any point without losing or doubling a row:

1. *claim*: one quarantine commit marks the passing rows with ``replay_id`` (a batch id derived from
   their ``row_id`` values), rewrites the rows whose reason changed and drops the filtered ones;
2. *land*: one table commit of the passing rows carrying that batch id (``icefield.batch-id``), skipped
   if the table already has it (rule 2);
3. *release*: one quarantine commit deletes the rows claimed by that id.

A replay first finishes what an interrupted one left: rows claimed by an id the table has are only
released; rows claimed by an id the table lacks are validated again and landed under that same id (rows
that fail now are unclaimed first, so that an id always lands exactly the rows it claims). Two replays
of one table must not run at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from icefield import failpoints
from icefield.engines import get_engine
from icefield.errors import ConfigError
from icefield.iceberg.commits import Retry, batch_landed, commit, commit_transaction
from icefield.iceberg.history import SUMMARY_BATCH_ID, SUMMARY_PIPELINE, SUMMARY_RUN_ID, find_batch
from icefield.iceberg.planning import read_arrow
from icefield.iceberg.schema import conform_to_table
from icefield.iceberg.tables import table_identifier
from icefield.ingest.coerce import conform, parse_type, records_to_table
from icefield.pipeline.quarantine import (
    QUARANTINE_SCHEMA,
    quarantine_table_name,
    quarantine_writer,
    row_ids,
    upgrade,
)
from icefield.pipeline.runner import acquire_lease
from icefield.quality import check_rows
from icefield.write import QUARANTINE_SUFFIX, TableWriter, batch_id_for
from icefield.write.contracts import ADDITIVE, WIDENING

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from icefield.config import PipelineConfig, Project

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 8
# Coordinates the files source writes: "<file>:<line>", "<file>:row <n>", "<file>#<n>", "<file> row <n>".
_FILE_COORDS = re.compile(r"^(?P<file>.+?)(?::\d+|:row \d+|#\d+| row \d+)$")


# ------------------------------------------------------------------ list / show


@dataclass
class QuarantineInfo:
    """One quarantine table: how many rows, by check and by pipeline, and how many a replay holds."""

    table: str
    quarantine: str
    rows: int
    by_check: dict[str, int]
    by_pipeline: dict[str, int]
    replaying: int
    oldest: dt.datetime | None
    newest: dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_quarantines(catalog: Catalog) -> list[QuarantineInfo]:
    """Every ``<table>__quarantine`` of the catalog with its row counts (empty ones included)."""
    from icefield.catalog import list_tables

    out = []
    for ident in list_tables(catalog):
        name = ".".join(ident)
        if not name.endswith(QUARANTINE_SUFFIX):
            continue
        q = catalog.load_table(ident)
        names = set(q.schema().as_arrow().names)
        cols = [c for c in ("pipeline", "check", "quarantined_at", "replay_id") if c in names]
        data = read_arrow(q, "list its quarantine", selected_fields=tuple(cols))
        times = data.column("quarantined_at") if "quarantined_at" in cols else None
        claimed = data.column("replay_id") if "replay_id" in cols else None
        out.append(
            QuarantineInfo(
                table=name[: -len(QUARANTINE_SUFFIX)],
                quarantine=name,
                rows=data.num_rows,
                by_check=dict(Counter(data.column("check").to_pylist())),
                by_pipeline=dict(Counter(data.column("pipeline").to_pylist())),
                replaying=int(pc.sum(pc.is_valid(claimed)).as_py() or 0) if claimed is not None else 0,
                oldest=pc.min(times).as_py() if times is not None and data.num_rows else None,
                newest=pc.max(times).as_py() if times is not None and data.num_rows else None,
            )
        )
    return out


def show_quarantine(
    catalog: Catalog, table: str, limit: int | None = 50, check: str | None = None, pipeline: str | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """The quarantined rows of ``table`` (newest first, at most ``limit``), optionally only those of one
    ``check`` or ``pipeline``: ``(rows matching, rows)``. Each row has every quarantine column (``raw_bytes``
    as bytes or None). Raises :class:`ConfigError` when the table has no quarantine."""
    q = _load_quarantine(catalog, table)
    data = read_arrow(q, "show it")
    for col, value in (("check", check), ("pipeline", pipeline)):
        if value is not None:
            data = data.filter(pc.equal(data.column(col), value))
    total = data.num_rows
    if "quarantined_at" in data.column_names and total:
        data = data.sort_by([("quarantined_at", "descending"), ("source", "ascending")])
    if limit is not None:
        data = data.slice(0, limit)
    return total, data.to_pylist()


def _load_quarantine(catalog: Catalog, table: str) -> Table:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        return catalog.load_table(table_identifier(quarantine_table_name(table)))
    except NoSuchTableError as e:
        raise ConfigError(f"table {table!r} has no quarantine ({quarantine_table_name(table)}); `icefield quarantine list` lists them") from e


# ------------------------------------------------------------------ replay


@dataclass
class ReplayResult:
    """What a replay did. Conservation: ``rows_considered`` = ``rows_committed`` (moved into the table)
    + ``rows_quarantined`` (still failing) + ``rows_filtered`` (dropped by a filter rule) +
    ``rows_resumed`` (landed by an interrupted replay, released now) + ``rows_skipped`` (of pipelines
    the project no longer has)."""

    table: str
    run_id: str
    dry_run: bool = False
    rows_considered: int = 0
    rows_committed: int = 0
    rows_quarantined: int = 0
    rows_filtered: int = 0
    rows_skipped: int = 0
    rows_resumed: int = 0
    replay_ids: list[str] = field(default_factory=list)
    snapshots: list[int] = field(default_factory=list)
    failures_by_check: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def conserved(self) -> bool:
        moved = self.rows_committed + self.rows_quarantined + self.rows_filtered + self.rows_resumed
        return self.rows_considered == moved + self.rows_skipped

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "conserved": self.conserved}


@dataclass
class _Verdict:
    """Rows (by index into the replayed rows) that pass, fail (check, reason) or are filtered, and the
    typed rows that pass, in the order of ``passed``."""

    good: pa.Table
    passed: list[int] = field(default_factory=list)
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)
    filtered: set[int] = field(default_factory=set)


def replay_quarantine(
    project: Project,
    table: str,
    catalog: Catalog | None = None,
    pipeline: str | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
) -> ReplayResult:
    """Re-validate the quarantined rows of ``table`` (only those of ``pipeline`` if given) with their
    pipelines' current rules and move those that pass into the table, exactly once (see the module
    docstring). ``dry_run`` validates and counts, and writes nothing.

    Raises :class:`ConfigError` (no quarantine; the pipeline is unknown, writes another table, or
    overwrites its table), :class:`SchemaError` (the contract refuses what the rows would add; nothing is
    written) and the writer's errors.
    """
    from icefield.catalog import open_catalog

    started = time.perf_counter()
    catalog = catalog or open_catalog(project)
    run_id = run_id or uuid.uuid4().hex[:16]
    result = ReplayResult(table=table, run_id=run_id, dry_run=dry_run)
    if pipeline is not None and (wanted := project.pipeline(pipeline)).target.table != table:
        raise ConfigError(f"pipeline {pipeline!r} writes {wanted.target.table}, not {table}")
    q = _load_quarantine(catalog, table)
    engine = get_engine(project.config.engine, project)
    qwriter = quarantine_writer(catalog, engine, table, pipeline or "replay")
    if not dry_run:
        q = upgrade(qwriter, q)
        q = _give_row_ids(q, run_id)
    rows = _with_all_columns(read_arrow(q, "replay it"))
    names = sorted({p for p in rows.column("pipeline").to_pylist() if p is not None})
    for name in names:
        if pipeline is not None and name != pipeline:
            continue
        mine = rows.filter(pc.equal(rows.column("pipeline"), name))
        pipe = project.pipelines.get(name)
        if pipe is None or pipe.target.table != table:
            log.warning("%d quarantined rows of %s come from pipeline %r, which the project does not have writing it; left as they are", mine.num_rows, table, name)
            result.rows_considered += mine.num_rows
            result.rows_skipped += mine.num_rows
            continue
        if pipe.target.mode == "overwrite":
            raise ConfigError(
                f"pipeline {name!r} overwrites {table} (mode overwrite): replayed rows would replace what is there; "
                "fix the source and rerun the pipeline instead"
            )
        if pipe.source.type == "debezium":
            raise ConfigError(
                f"pipeline {name!r} reads Debezium change events: its quarantined rows are whole events, which replay does "
                f"not decode yet (it would land their envelope as columns of {table}); they stay in the quarantine. Fix what "
                "refused them (source.numeric, source.postgres_types) for the events to come"
            )
        if dry_run:
            _Replay(catalog, engine, pipe, q.name(), run_id, result).run(mine)
            continue
        # A replay writes the pipeline's table: it holds its lease, as a run does (one at a time).
        with acquire_lease(catalog, pipe.target, run_id, f"replay of pipeline {name}", 0.0):
            _Replay(catalog, engine, pipe, q.name(), run_id, result).run(mine)
    result.seconds = time.perf_counter() - started
    log.info(
        "replay %s of %s: %d rows, %d committed, %d still quarantined, %d filtered, %d released after an interrupted replay",
        run_id, table, result.rows_considered, result.rows_committed, result.rows_quarantined, result.rows_filtered, result.rows_resumed,
    )
    return result


class _Replay:
    """The replay of one pipeline's quarantined rows."""

    def __init__(self, catalog: Catalog, engine: Any, pipe: PipelineConfig, qname: tuple[str, ...], run_id: str, result: ReplayResult) -> None:
        self.catalog = catalog
        self.pipe = pipe
        self.qname = qname
        self.run_id = run_id
        self.result = result
        self.writer = TableWriter(catalog, pipe.target, pipe.name, engine)

    def run(self, rows: pa.Table) -> None:
        claims = rows.column("replay_id")
        for rid in sorted({r for r in claims.to_pylist() if r is not None}):
            self._resume(rid, rows.filter(pc.fill_null(pc.equal(claims, rid), False)))
        fresh = rows.filter(pc.is_null(claims))
        if fresh.num_rows:
            self._replay(fresh)

    # -------------------------------------------------------------- the three steps

    def _replay(self, rows: pa.Table) -> None:
        verdict = self._validate(rows)
        self._count(rows, verdict)
        if self.result.dry_run:
            return
        ids = rows.column("row_id").to_pylist()
        passed = [ids[i] for i in verdict.passed]
        rid = batch_id_for(self.pipe.name, "replay:" + hashlib.sha256("\n".join(sorted(passed)).encode()).hexdigest()) if passed else None
        changed = self._changed(rows, verdict)
        if not passed and not changed and not verdict.filtered:
            return
        claimed = rows.take(pa.array(verdict.passed, pa.int64())).set_column(
            rows.schema.get_field_index("replay_id"), "replay_id", pa.array([rid] * len(verdict.passed), pa.string())
        )
        gone = passed + [ids[i] for i in changed] + [ids[i] for i in verdict.filtered]
        self._rewrite(gone, [claimed, self._with_reasons(rows, verdict, changed)], f"{rid or 'none'}:claim")
        failpoints.hit("replay-after-claim")
        if rid is not None:
            self._land(rid, verdict.good)
            failpoints.hit("replay-after-commit")
            self._release(rid)

    def _resume(self, rid: str, rows: pa.Table) -> None:
        """Finish the replay ``rid`` that claimed ``rows`` and did not release them."""
        target = self.writer.load()
        if target is not None and find_batch(target, rid) is not None:
            log.info("replay batch %s already landed in %s; releasing its %d rows from the quarantine", rid, self.pipe.target.table, rows.num_rows)
            self.result.rows_considered += rows.num_rows
            self.result.rows_resumed += rows.num_rows
            if not self.result.dry_run:
                self._release(rid)
            return
        verdict = self._validate(rows)
        self._count(rows, verdict)
        if self.result.dry_run:
            return
        ids = rows.column("row_id").to_pylist()
        off = sorted(verdict.failed) + sorted(verdict.filtered)
        if off:
            # Unclaim what fails now, so that the id lands exactly the rows it still claims.
            unclaimed = self._with_reasons(rows, verdict, sorted(verdict.failed))
            self._rewrite([ids[i] for i in off], [unclaimed], f"{rid}:unclaim")
        if verdict.passed:
            self._land(rid, verdict.good)
            failpoints.hit("replay-after-commit")
        self._release(rid)

    def _land(self, rid: str, good: pa.Table) -> None:
        wr = self.writer.commit(good, rid, None, self.run_id)
        self.result.replay_ids.append(rid)
        if wr.snapshot_id is not None and not wr.skipped:
            self.result.snapshots.append(wr.snapshot_id)

    def _release(self, rid: str) -> None:
        from pyiceberg.expressions import EqualTo

        tag = f"{rid}:release"

        def op(q: Table) -> bool:
            tx = q.transaction()
            tx.delete(EqualTo("replay_id", rid), snapshot_properties=self._summary(tag))  # type: ignore[call-arg,arg-type]
            commit_transaction(tx)
            return True

        self._commit(op, tag)

    def _rewrite(self, gone: list[str], rows: list[pa.Table], tag: str) -> None:
        """One quarantine commit: delete the rows whose ``row_id`` is in ``gone``, append ``rows``."""
        from pyiceberg.expressions import In

        def op(q: Table) -> bool:
            tx = q.transaction()
            props = self._summary(tag)
            if gone:
                tx.delete(In("row_id", set(gone)), snapshot_properties=props)  # type: ignore[call-arg,arg-type]
            for part in rows:
                if part.num_rows:
                    tx.append(conform_to_table(q, part), snapshot_properties=props)
            commit_transaction(tx)
            return True

        self._commit(op, tag)

    def _commit(self, op: Callable[[Table], bool], tag: str) -> None:
        """One quarantine commit (``op``, tagged ``tag`` as its batch id), replanned on a fresh quarantine
        while other commits win."""
        commit(
            f"the quarantine commit {tag} of {'.'.join(self.qname)}",
            lambda: self.catalog.load_table(self.qname),
            op,
            retry=Retry(COMMIT_ATTEMPTS),
            landed=batch_landed(tag, lambda _: True),
            advice="rerun `icefield quarantine replay`",
        )

    def _summary(self, tag: str) -> dict[str, str]:
        return {SUMMARY_PIPELINE: self.pipe.name, SUMMARY_BATCH_ID: tag, SUMMARY_RUN_ID: self.run_id}

    # -------------------------------------------------------------- validation

    def _validate(self, rows: pa.Table) -> _Verdict:
        """Decode, type, contract-check and row-check ``rows`` as the pipeline would now."""
        failed: dict[int, tuple[str, str]] = {}
        records: list[dict[str, Any]] = []
        at: list[int] = []  # quarantined row of each record
        file_column = getattr(self.pipe.source, "file_column", None) if self.pipe.source.type == "files" else None
        for i, (raw, exact, source, check, reason) in enumerate(
            zip(*(rows.column(c).to_pylist() for c in ("raw", "raw_bytes", "source", "check", "reason")), strict=True)
        ):
            rec, why = _decode(raw, exact)
            if rec is None:
                failed[i] = (check, reason) if check == "decode" else ("decode", why)
                continue
            if file_column and file_column not in rec and (m := _FILE_COORDS.match(source or "")):
                rec[file_column] = m.group("file")
            records.append(rec)
            at.append(i)
        table = self.writer.load()
        types = {f.name: f.type for f in table.schema().as_arrow()} if table is not None else {}
        declared = getattr(self.pipe.source, "columns", None) or {}
        types.update({k: parse_type(v, allow_json=True) for k, v in declared.items()})  # json: an http source's JSON text
        data, bad = records_to_table(records, types)
        control = self.pipe.target.delete_column
        if table is not None:
            schema = data.schema.remove(data.schema.get_field_index(control)) if control and control in data.column_names else data.schema
            target = self._target_schema(table, schema, data)
            typed, type_bad = conform(data, target)
            if control and control in data.column_names and control not in typed.column_names:
                typed = typed.append_column(control, data.column(control))
            bad.update({k: v for k, v in type_bad.items() if k not in bad})
            data = typed
        for k, reason in bad.items():
            failed[at[k]] = ("decode" if reason.startswith("decode:") else "type", reason)
        keep = [k for k in range(data.num_rows) if k not in bad]
        data = data.take(pa.array(keep, pa.int64()))
        at = [at[k] for k in keep]
        checks = check_rows(data, self.pipe.checks)
        for k, (check, reason) in checks.bad.items():
            failed[at[k]] = (check, reason)
        filtered = {at[k] for k in checks.filtered}
        passed = [k for k in range(data.num_rows) if k not in checks.bad and k not in checks.filtered]
        good = data.take(pa.array(passed, pa.int64()))
        return _Verdict(good, [at[k] for k in passed], failed, filtered)

    def _target_schema(self, table: Table, schema: pa.Schema, data: pa.Table) -> pa.Schema:
        """The table's schema once the contract took the replayed rows' (``data``'s) changes (raises
        SchemaError if it refuses one). A dry run only plans the changes; a real replay applies them."""
        if not self.result.dry_run:
            return self.writer.evolve(table, schema, open_schema=True, data=data).schema().as_arrow()
        current = table.schema().as_arrow()
        changes = self.writer.schema_changes(table, schema, open_schema=True, data=data)
        changed = {c.column.split(".")[0] for c in changes if c.kind in (ADDITIVE, WIDENING)}
        fields = [schema.field(f.name) if f.name in changed else f for f in current]
        return pa.schema(fields + [f for f in schema if f.name in changed and f.name not in current.names])

    def _changed(self, rows: pa.Table, verdict: _Verdict) -> list[int]:
        """The failing rows whose check or reason is not the one the quarantine holds."""
        checks, reasons = rows.column("check").to_pylist(), rows.column("reason").to_pylist()
        return sorted(i for i, (c, r) in verdict.failed.items() if (checks[i], reasons[i]) != (c, r))

    def _with_reasons(self, rows: pa.Table, verdict: _Verdict, which: list[int]) -> pa.Table:
        """Rows ``which`` with their new check and reason, judged by this run, unclaimed."""
        part = rows.take(pa.array(which, pa.int64()))
        for col, values in (
            ("check", [verdict.failed[i][0] for i in which]),
            ("reason", [verdict.failed[i][1] for i in which]),
            ("run_id", [self.run_id] * len(which)),
            ("replay_id", [None] * len(which)),
        ):
            part = part.set_column(part.schema.get_field_index(col), col, pa.array(values, pa.string()))
        return part

    def _count(self, rows: pa.Table, verdict: _Verdict) -> None:
        r = self.result
        r.rows_considered += rows.num_rows
        r.rows_committed += len(verdict.passed)
        r.rows_quarantined += len(verdict.failed)
        r.rows_filtered += len(verdict.filtered)
        for check, _ in verdict.failed.values():
            r.failures_by_check[check] = r.failures_by_check.get(check, 0) + 1


def _decode(raw: str | None, exact: bytes | None) -> tuple[dict[str, Any] | None, str]:
    """The record a quarantined row holds, as a JSON object, or None and why not."""
    text = raw
    if exact is not None:
        try:
            text = exact.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"decode: invalid UTF-8 at byte {e.start}"
    if text is None:
        return None, "decode: no raw record"
    try:
        rec = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        return None, f"decode: not valid JSON: {e}"
    if not isinstance(rec, dict):
        return None, f"decode: a JSON object is expected, got {type(rec).__name__}"
    return rec, ""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _give_row_ids(q: Table, run_id: str) -> Table:
    """Rows written before quarantines had ``row_id`` get one (one rewrite of the table, once)."""
    tag = f"row-ids:{run_id}"
    return commit(
        f"giving row ids to the quarantine {'.'.join(q.name())}",
        q.refresh,
        lambda t: _with_row_ids(t, tag, run_id),
        table=q,
        retry=Retry(COMMIT_ATTEMPTS),
        landed=batch_landed(tag, lambda _: q),
        advice="rerun `icefield quarantine replay`",
    )


def _with_row_ids(q: Table, tag: str, run_id: str) -> Table:
    """One attempt of :func:`_give_row_ids` on ``q`` as loaded: the committed table (``q`` when every row
    has its id)."""
    data = read_arrow(q, "replay it")
    missing = pc.is_null(data.column("row_id"))
    if data.num_rows == 0 or not pc.any(missing).as_py():
        return q
    ids = data.column("row_id").to_pylist()
    by_batch: dict[str | None, list[int]] = {}
    for i, (batch, gap) in enumerate(zip(data.column("batch_id").to_pylist(), missing.to_pylist(), strict=True)):
        if gap:
            by_batch.setdefault(batch, []).append(i)
    sources, raws = data.column("source").to_pylist(), data.column("raw").to_pylist()
    for batch, idx in by_batch.items():
        for i, rid in zip(idx, row_ids(batch or "", ((sources[i], raws[i]) for i in idx)), strict=True):
            ids[i] = rid
    data = data.set_column(data.schema.get_field_index("row_id"), "row_id", pa.array(ids, pa.string()))
    tx = q.transaction()
    tx.overwrite(conform_to_table(q, data), snapshot_properties={SUMMARY_BATCH_ID: tag, SUMMARY_RUN_ID: run_id})
    log.info("gave row ids to %d quarantined rows of %s", sum(len(i) for i in by_batch.values()), ".".join(q.name()))
    return commit_transaction(tx)


def _with_all_columns(rows: pa.Table) -> pa.Table:
    """Quarantine rows with every column of :data:`QUARANTINE_SCHEMA` (nulls for those an old table lacks)."""
    for f in QUARANTINE_SCHEMA:
        if f.name not in rows.column_names:
            rows = rows.append_column(f.name, pa.nulls(rows.num_rows, f.type))
    return rows


__all__ = ["QUARANTINE_SCHEMA", "QuarantineInfo", "ReplayResult", "list_quarantines", "replay_quarantine", "show_quarantine"]
