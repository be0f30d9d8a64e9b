"""Gates: dataset checks run on one snapshot of a table, compiled to DuckDB SQL (``docs/architecture.md``,
"The write path", rule 6).

The snapshot (a branch head under audit, or ``main``'s new head) is exposed as the view named like the
table (``shop.orders``), read straight from its Parquet files. Every aggregate gate (row count, null ratio,
distinct ratio, accepted values, freshness) is one expression of a single ``SELECT`` over the view, so the
whole set costs one scan; referential integrity is one anti-join per gate; custom SQL runs as written. No
Python loop touches rows. Each gate gives a :class:`~icefield.quality.results.CheckResult`.

Every table the gates read is bound before the first gate runs, and the connection is then locked to
read-only use (:func:`icefield.query.open_views`): a ``sql`` gate is one read-only query that
reads only those tables' files.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from icefield.config.gates import (
    AcceptedValuesGate,
    DistinctRatioGate,
    ExpectationsGate,
    FreshnessGate,
    NullRatioGate,
    ReferencesGate,
    RowCountChangeGate,
    RowCountGate,
    SqlGate,
)
from icefield.quality.results import CheckResult

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from icefield.query import Views

log = logging.getLogger(__name__)

__all__ = ["GateContext", "run_gates", "snapshot_row_count"]


@dataclass
class GateContext:
    """Where the gates run: ``table`` (named ``table_name``) at ``snapshot_id``, reached from ``branch``;
    ``previous_id`` is the snapshot it is compared with (``main``'s head before the batch). ``root`` is the
    project folder (suite paths are relative to it); ``now`` is the clock of freshness gates."""

    catalog: Catalog
    table: Table
    table_name: str
    snapshot_id: int | None
    previous_id: int | None
    branch: str
    pipeline: str
    run_id: str
    root: Path | None = None
    now: dt.datetime | None = None


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...] | None:
    """The first row of ``sql`` (the result is drained: DuckDB 2 refuses new work on a connection with
    an unfinished result)."""
    rows = con.execute(sql).fetchall()
    return rows[0] if rows else None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _fmt(v: float | None) -> str:
    if v is None:
        return "none"
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:.4g}"


def _bounds(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"between {_fmt(lo)} and {_fmt(hi)}"
    return f">= {_fmt(lo)}" if lo is not None else f"<= {_fmt(hi)}"


def _within(v: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or v >= lo) and (hi is None or v <= hi)


class _Run:
    """One evaluation: the connection, the checked time and the results so far."""

    def __init__(self, ctx: GateContext) -> None:
        from icefield.query import view_sql

        self.ctx = ctx
        self.now = ctx.now or dt.datetime.now(dt.UTC)
        self.ident = tuple(ctx.table_name.split("."))
        self.view = view_sql(self.ident)
        self.views: Views | None = None
        # Why a gate's tables could not be bound (by gate position), and referenced tables that do not exist.
        self.unbound: dict[int, str] = {}
        self.absent: set[tuple[str, ...]] = set()
        self.columns = {f.name: f.type for f in ctx.table.schema().as_arrow()}
        self.results: list[CheckResult] = []
        self.order: dict[str | None, int] = {}
        self.positions: list[int] = []

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        assert self.views is not None
        return self.views.con

    def open(self, gates: list[Any]) -> None:
        """Bind the target at the snapshot under check and every other table the gates read at ``main``'s
        head, then lock the connection (:func:`icefield.query.open_views`). A gate whose table
        would share a view with another (names equal but for case) is marked in ``unbound``."""
        from pyiceberg.exceptions import NoSuchTableError

        from icefield.query import open_views, view_name

        def key(ident: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(p.lower() for p in view_name(ident))

        tables: dict[tuple[str, ...], tuple[Table, int | None]] = {self.ident: (self.ctx.table, self.ctx.snapshot_id)}
        by_key = {key(self.ident): self.ident}
        for i, gate in enumerate(gates):
            for ident in self._reads(gate):
                if ident in tables or ident in self.absent:
                    continue
                other = by_key.get(key(ident))
                if other is not None:
                    self.unbound[i] = (
                        f"tables {'.'.join(other)} and {'.'.join(ident)} would both be the DuckDB view "
                        f"{'.'.join(view_name(ident))} (DuckDB names ignore case); rename one of them"
                    )
                    continue
                try:
                    tables[ident] = (self.ctx.catalog.load_table(ident), None)
                except NoSuchTableError:
                    self.absent.add(ident)
                    continue
                by_key[key(ident)] = ident
        self.views = open_views((ident, t, snap) for ident, (t, snap) in tables.items())

    def _reads(self, gate: Any) -> list[tuple[str, ...]]:
        """The tables ``gate`` reads besides the target."""
        from icefield.query import tables_named

        if isinstance(gate, ReferencesGate):
            return [tuple(gate.references.ref_table.split("."))]
        if isinstance(gate, SqlGate):
            return [i for i in tables_named(self.ctx.catalog, gate.sql.query.replace("{table}", self.view)) if i != self.ident]
        return []

    def append(self, gate: Any, result: CheckResult) -> None:
        self.results.append(result)
        self.positions.append(self.order.get(gate.name, len(self.order)))

    def col(self, name: str, ident: tuple[str, ...] | None = None) -> str:
        """Column ``name`` of table ``ident`` (the target by default) as its view names it, quoted."""
        view = self.views.views.get(ident or self.ident) if self.views is not None else None
        return _q(view.columns.get(name, name) if view is not None else name)

    def add(
        self, gate: Any, value: float | None, threshold: str, ok: bool, message: str, error: bool = False, check: str | None = None
    ) -> None:
        """Record one result of ``gate`` (``check`` names it when a gate gives several, e.g. a suite)."""
        status = "error" if error else "pass" if ok else ("fail" if gate.severity == "error" else "warn")
        self.append(
            gate,
            CheckResult(
                pipeline=self.ctx.pipeline,
                table=self.ctx.table_name,
                snapshot_id=self.ctx.snapshot_id,
                branch=self.ctx.branch,
                check=check or gate.name or gate.default_name(),
                kind=gate.kind,
                value=None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value),
                threshold=threshold,
                status=status,
                severity=gate.severity,
                message=message,
                checked_at=self.now,
                run_id=self.ctx.run_id,
            ),
        )

    def missing(self, gate: Any, columns: list[str], threshold: str) -> bool:
        gone = [c for c in columns if c not in self.columns]
        if gone:
            self.add(gate, None, threshold, False, f"column(s) {gone} not in {self.ctx.table_name} (columns: {', '.join(self.columns)})", error=True)
        return bool(gone)


# ------------------------------------------------------------------------------------ aggregates


def _literal(v: Any, t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t) or not isinstance(v, (int, float, bool)):
        return "'" + str(v).replace("'", "''") + "'"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    return repr(v)


def _aggregate_exprs(run: _Run, gate: Any) -> list[str] | None:
    """The SQL aggregate expressions of ``gate`` over the view (None: not an aggregate gate)."""
    if isinstance(gate, NullRatioGate):
        return [f"count(*) - count({run.col(gate.null_ratio.column)})"]
    if isinstance(gate, DistinctRatioGate):
        cols = gate.distinct_ratio.columns
        nonnull = " AND ".join(f"{run.col(c)} IS NOT NULL" for c in cols)
        key = run.col(cols[0]) if len(cols) == 1 else "(" + ", ".join(run.col(c) for c in cols) + ")"
        return [f"count(DISTINCT {key}) FILTER (WHERE {nonnull})", f"count(*) FILTER (WHERE {nonnull})"]
    if isinstance(gate, AcceptedValuesGate):
        spec = gate.accepted_values
        t = run.columns.get(spec.column, pa.string())
        values = ", ".join(_literal(v, t) for v in spec.values)
        col = run.col(spec.column)
        return [f"count(*) FILTER (WHERE {col} IS NOT NULL AND {col} NOT IN ({values}))"]
    if isinstance(gate, FreshnessGate):
        return [f"epoch(max({run.col(gate.freshness.column)}))"]
    return None


def _columns_of(gate: Any) -> list[str]:
    if isinstance(gate, DistinctRatioGate):
        return gate.distinct_ratio.columns
    spec = gate.spec
    column = getattr(spec, "column", None)
    return [column] if isinstance(column, str) else []


def _judge_aggregate(run: _Run, gate: Any, n: int, vals: list[Any]) -> None:
    if isinstance(gate, NullRatioGate):
        spec = gate.null_ratio
        nulls = int(vals[0] or 0)
        ratio = nulls / n if n else 0.0
        run.add(gate, ratio, f"<= {_fmt(spec.max)}", ratio <= spec.max, f"{nulls:,} of {n:,} rows have {spec.column} null (ratio {_fmt(ratio)}, at most {_fmt(spec.max)} allowed)")
    elif isinstance(gate, DistinctRatioGate):
        ds = gate.distinct_ratio
        distinct, rows = int(vals[0] or 0), int(vals[1] or 0)
        label = ", ".join(ds.columns)
        if rows == 0:
            run.add(gate, None, _bounds(ds.min, ds.max), True, f"no rows with {label} set; nothing to compare")
            return
        ratio = distinct / rows
        run.add(gate, ratio, _bounds(ds.min, ds.max), _within(ratio, ds.min, ds.max), f"{distinct:,} distinct ({label}) in {rows:,} rows (ratio {_fmt(ratio)}, expected {_bounds(ds.min, ds.max)})")
    elif isinstance(gate, AcceptedValuesGate):
        av = gate.accepted_values
        bad = int(vals[0] or 0)
        run.add(gate, bad, f"<= {av.max}", bad <= av.max, f"{bad:,} rows have {av.column} outside {av.values} (at most {av.max} allowed)")
    elif isinstance(gate, FreshnessGate):
        fr = gate.freshness
        newest = vals[0]
        limit = f"<= {_fmt(fr.seconds)}s ({fr.max_age})"
        if newest is None:
            run.add(gate, None, limit, False, f"{fr.column} has no value to measure freshness by")
            return
        age = run.now.timestamp() - float(newest)
        newest_at = dt.datetime.fromtimestamp(float(newest), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        run.add(gate, age, limit, age <= fr.seconds, f"newest {fr.column} is {newest_at} UTC, {_fmt(round(age))}s old (at most {fr.max_age})")


def _run_aggregates(run: _Run, gates: list[Any]) -> int | None:
    """Evaluate the aggregate gates and the row count in one query; returns the row count (None when the
    snapshot could not be read)."""
    import duckdb

    plan: list[tuple[Any, list[str]]] = []
    for g in gates:
        exprs = _aggregate_exprs(run, g)
        if exprs is None:
            continue
        if run.missing(g, _columns_of(g), ""):
            continue
        plan.append((g, exprs))
    select = ["count(*)"] + [e for _, exprs in plan for e in exprs]
    try:
        row = _one(run.con, f"SELECT {', '.join(select)} FROM {run.view}")
    except duckdb.Error:
        row = None
    if row is None:
        # One bad expression (a value that does not fit the column, say) must not hide the others:
        # evaluate them one by one and report the failing one as an error.
        try:
            n_row = _one(run.con, f"SELECT count(*) FROM {run.view}")
        except duckdb.Error as e:
            for g, _ in plan:
                run.add(g, None, "", False, f"could not read snapshot {run.ctx.snapshot_id}: {e}", error=True)
            return None
        n = int(n_row[0]) if n_row else 0
        for g, exprs in plan:
            try:
                vals = list(_one(run.con, f"SELECT {', '.join(exprs)} FROM {run.view}") or [])
            except duckdb.Error as e:
                run.add(g, None, "", False, f"could not evaluate: {e}".splitlines()[0], error=True)
                continue
            _judge_aggregate(run, g, n, vals)
        return n
    n = int(row[0])
    i = 1
    for g, exprs in plan:
        _judge_aggregate(run, g, n, list(row[i : i + len(exprs)]))
        i += len(exprs)
    return n


# ------------------------------------------------------------------------------------ the others


def snapshot_row_count(table: Table, snapshot_id: int | None) -> int | None:
    """Rows in ``table`` at ``snapshot_id`` from the manifests' record counts (no data read), less the
    distinct rows position delete files remove (only those small files are read). None when ``snapshot_id``
    is None; :class:`ConfigError` when the table has equality delete files."""
    from pyiceberg.manifest import DataFileContent

    from icefield.iceberg.deletes import deleted_positions
    from icefield.iceberg.planning import plan_files, read_arrow

    if snapshot_id is None:
        return None
    tasks = plan_files(table, "check it", snapshot_id=snapshot_id)
    total = sum(t.file.record_count for t in tasks)
    if not any(t.delete_files for t in tasks):
        return total
    if all(d.content == DataFileContent.POSITION_DELETES for t in tasks for d in t.delete_files):
        return total - deleted_positions(table, tasks).group_by(["file_path", "pos"]).aggregate([]).num_rows
    return int(read_arrow(table, "check it", snapshot_id=snapshot_id).num_rows)


def _row_count(run: _Run, gate: RowCountGate, n: int) -> None:
    spec = gate.row_count
    run.add(gate, n, _bounds(spec.min, spec.max), _within(n, spec.min, spec.max), f"{n:,} rows (expected {_bounds(spec.min, spec.max)})")


def _row_count_change(run: _Run, gate: RowCountChangeGate, n: int) -> None:
    spec = gate.row_count_change
    parts = []
    if spec.max_drop is not None:
        parts.append(f"drop <= {_fmt(spec.max_drop)}")
    if spec.max_growth is not None:
        parts.append(f"growth <= {_fmt(spec.max_growth)}")
    threshold = ", ".join(parts)
    prev = snapshot_row_count(run.ctx.table, run.ctx.previous_id)
    if not prev:
        run.add(gate, None, threshold, True, "no previous rows to compare with (first snapshot or empty table)")
        return
    change = (n - prev) / prev
    ok = not (spec.max_drop is not None and -change > spec.max_drop) and not (spec.max_growth is not None and change > spec.max_growth)
    word = "dropped" if change < 0 else "grew"
    run.add(gate, change, threshold, ok, f"row count {word} by {_fmt(abs(change) * 100)}% ({prev:,} -> {n:,}) against snapshot {run.ctx.previous_id}")


def _references(run: _Run, gate: ReferencesGate) -> None:
    import duckdb

    spec = gate.references
    threshold = f"<= {spec.max}"
    if run.missing(gate, [spec.column], threshold):
        return
    from icefield.query import view_sql

    ref_ident = tuple(spec.ref_table.split("."))
    if ref_ident in run.absent:
        run.add(gate, None, threshold, False, f"referenced table {spec.ref_table} does not exist", error=True)
        return
    ref_view = view_sql(ref_ident)
    col, ref_col = run.col(spec.column), run.col(spec.ref_column, ref_ident)
    sql = (
        f"SELECT count(*) FROM {run.view} AS t WHERE t.{col} IS NOT NULL "
        f"AND NOT EXISTS (SELECT 1 FROM {ref_view} AS r WHERE r.{ref_col} = t.{col})"
    )
    try:
        row = _one(run.con, sql)
    except duckdb.Error as e:
        run.add(gate, None, threshold, False, f"could not evaluate: {e}".splitlines()[0], error=True)
        return
    orphans = int(row[0]) if row else 0
    run.add(gate, orphans, threshold, orphans <= spec.max, f"{orphans:,} rows have a {spec.column} that is not in {spec.to} (at most {spec.max} allowed)")


def _sql(run: _Run, gate: SqlGate) -> None:
    from icefield.errors import IcefieldError
    from icefield.query import readonly

    spec = gate.sql
    query = spec.query.replace("{table}", run.view)
    threshold = _bounds(spec.min, spec.max) if spec.scalar else "0 rows"
    what = f"the query of gate {gate.name or gate.default_name()}"
    try:
        if spec.scalar:
            result = readonly.query(run.con, query, what)
            if result.num_rows != 1 or result.num_columns != 1:
                run.add(gate, None, threshold, False, f"the query must return one value (one row, one column) when 'min'/'max' are set; it returned {result.num_rows} row(s)", error=True)
                return
            raw = result.column(0)[0].as_py()
            value = float(raw) if raw is not None else None
        else:
            readonly.statement(run.con, query, what)  # one read-only query, before it is wrapped
            # On lines of their own: a trailing comment or ';' of the query ends with it.
            body = query.rstrip().rstrip(";")
            counted = readonly.query(run.con, f"SELECT count(*) FROM (\n{body}\n) AS failing", what)
            value = float(counted.column(0)[0].as_py() or 0)
    except (IcefieldError, TypeError, ValueError) as e:
        run.add(gate, None, threshold, False, f"{e}".splitlines()[0], error=True)
        return
    if spec.scalar:
        ok = value is not None and _within(value, spec.min, spec.max)
        run.add(gate, value, threshold, ok, f"the query returned {_fmt(value)} (expected {threshold})")
    else:
        assert value is not None
        run.add(gate, value, threshold, value == 0, f"the query returned {_fmt(value)} failing row(s)")


def _expectations(run: _Run, gate: ExpectationsGate) -> None:
    from icefield.quality.expectations import run_suite

    path = Path(gate.expectations.suite)
    if not path.is_absolute() and run.ctx.root is not None:
        path = run.ctx.root / path
    data = run.con.sql(f"SELECT * FROM {run.view}").to_arrow_table()
    # The suite names columns as the table does (the view renames those equal but for case).
    data = data.rename_columns(list(run.columns))
    for outcome in run_suite(path, data):
        ok = outcome.success
        run.add(gate, outcome.value, outcome.threshold, ok, outcome.message, error=outcome.error and not ok, check=f"{gate.name}:{outcome.name}")


# ------------------------------------------------------------------------------------ entry point


def run_gates(gates: list[Any], ctx: GateContext) -> list[CheckResult]:
    """Evaluate ``gates`` on ``ctx.table`` at ``ctx.snapshot_id``. Returns one result per gate (per
    expectation for a suite), in declared order of kinds: aggregates first, then the others.

    A gate that cannot be evaluated (missing column, failing query, unknown table) gives status
    ``error``; it never raises for that. Raises :class:`~icefield.errors.MissingDependencyError` when an
    ``expectations`` gate needs Great Expectations and it is not installed.
    """
    if not gates:
        return []
    run = _Run(ctx)
    run.order = {g.name: i for i, g in enumerate(gates)}
    run.open(gates)
    try:
        n = _run_aggregates(run, gates)
        for i, g in enumerate(gates):
            if i in run.unbound:
                run.add(g, None, "", False, run.unbound[i], error=True)
            elif isinstance(g, RowCountGate | RowCountChangeGate) and n is None:
                run.add(g, None, "", False, f"could not read snapshot {ctx.snapshot_id}", error=True)
            elif isinstance(g, RowCountGate):
                assert n is not None
                _row_count(run, g, n)
            elif isinstance(g, RowCountChangeGate):
                assert n is not None
                _row_count_change(run, g, n)
            elif isinstance(g, ReferencesGate):
                _references(run, g)
            elif isinstance(g, SqlGate):
                _sql(run, g)
            elif isinstance(g, ExpectationsGate):
                _expectations(run, g)
    finally:
        run.con.close()
    # Declared order (a stable sort keeps a suite's expectations in their order).
    results = [r for _, r in sorted(zip(run.positions, run.results, strict=True), key=lambda p: p[0])]
    for r in results:
        # A blocking failure is reported by the error that holds the batch; warnings have only this.
        if r.status != "pass":
            log.log(logging.INFO if r.status == "fail" else logging.WARNING, "gate %s on %s@%s: %s: %s", r.check, r.table, r.snapshot_id, r.status, r.message)
    return results
