"""Row checks: split a batch into good rows, quarantined rows (with the check and the reason) and rows
dropped by a declared ``filter`` rule. All checks are vectorised over Arrow; nothing loops over rows
except to word the reason of a failing row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from icefield.columns import column_name_problem, internal, row_numbers
from icefield.config.models import (
    AcceptedValuesCheck,
    CheckConfig,
    FilterRule,
    NotNullCheck,
    RangeCheck,
    RegexCheck,
    UniqueCheck,
)
from icefield.errors import ConfigError, IcefieldError, QueryRefusedError, SchemaError
from icefield.ingest.coerce import CoercionError, converter, describe

__all__ = ["RowCheckResult", "check_rows"]

_IDX = internal("idx")  # a working column: no column of the data can be named so


@dataclass
class RowCheckResult:
    """Which rows of a batch failed which check. ``bad`` maps a row index to (check, reason);
    ``filtered`` holds the indices dropped by ``filter`` rules (not quarantined, counted apart)."""

    bad: dict[int, tuple[str, str]] = field(default_factory=dict)
    filtered: set[int] = field(default_factory=set)
    failures_by_check: dict[str, int] = field(default_factory=dict)

    def _add(self, check: str, indices: list[int], reason_of: Any) -> None:
        n = 0
        for i in indices:
            if i not in self.bad and i not in self.filtered:
                self.bad[i] = (check, reason_of(i))
                n += 1
        if n:
            self.failures_by_check[check] = self.failures_by_check.get(check, 0) + n


def _indices(mask: pa.Array | pa.ChunkedArray) -> list[int]:
    mask = pc.fill_null(mask, False)
    if not pc.any(mask).as_py():
        return []
    return pc.indices_nonzero(mask).to_pylist()  # type: ignore[no-any-return]


def _col(table: pa.Table, name: str, check: str) -> pa.ChunkedArray:
    """The column ``name`` a ``check`` is declared on. The batch holds every column of the table (conformed
    to it), so a column it lacks is in neither the data nor the table: a misspelt name, refused as a
    configuration error rather than failing every row."""
    if name in table.column_names:
        return table.column(name)
    raise ConfigError(
        f"checks: {check} names column {name!r}, which is in neither the data nor the table "
        f"(columns: {', '.join(table.column_names)}); fix the column name in the check"
    )


def check_rows(table: pa.Table, checks: list[CheckConfig]) -> RowCheckResult:
    """Run ``checks`` over ``table``. A row is reported under the first check it fails, in declared order.

    Raises :class:`ConfigError` when a check names a column ``table`` lacks (``table`` is the batch conformed
    to the target table, so it lacks only columns neither has) and :class:`SchemaError` when a column of
    ``table`` is named in icefield's reserved namespace (its working columns would meet it)."""
    res = RowCheckResult()
    for name in table.column_names:
        if (problem := column_name_problem(name)) is not None:
            raise SchemaError(f"column {name!r} of the batch {problem}; rename it in the source (e.g. with an alias in its query)")
    n = table.num_rows
    if n == 0:
        return res
    for chk in checks:
        if isinstance(chk, FilterRule):
            # A row already quarantined by an earlier check counts there only (first failing check wins).
            res.filtered.update(i for i in _filter_rows(table, chk.filter) if i not in res.bad)
        elif isinstance(chk, NotNullCheck):
            for name in chk.not_null:
                col = _col(table, name, "not_null")
                res._add("not_null", _indices(pc.is_null(col)), lambda i, c=name: f"not_null: column {c!r} is null")
        elif isinstance(chk, UniqueCheck):
            _unique(table, chk.unique, res)
        elif isinstance(chk, AcceptedValuesCheck):
            spec = chk.accepted_values
            col = _col(table, spec.column, "accepted_values")
            values = pa.array(spec.values)
            try:
                values = values.cast(col.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ConfigError(f"accepted_values for {spec.column!r}: the values {spec.values!r} do not fit the column type {col.type}: {e}") from e
            mask = pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=values)))
            allowed = ", ".join(map(str, spec.values))
            res._add(
                "accepted_values",
                _indices(mask),
                lambda i, c=col, s=spec.column, a=allowed: f"accepted_values: column {s!r} value {describe(c[i].as_py())} is not one of {a}",
            )
        elif isinstance(chk, RangeCheck):
            _range(table, chk, res)
        elif isinstance(chk, RegexCheck):
            spec_r = chk.regex
            col = _col(table, spec_r.column, "regex")
            text = col if pa.types.is_string(col.type) else pc.cast(col, pa.string())
            mask = pc.invert(pc.match_substring_regex(text, spec_r.pattern))
            res._add(
                "regex",
                _indices(mask),
                lambda i, c=col, s=spec_r: f"regex: column {s.column!r} value {describe(c[i].as_py())} does not match {s.pattern!r}",
            )
    return res


def _scalar(value: Any, t: pa.DataType, column: str) -> pa.Scalar:
    try:
        return pa.scalar(converter(t)(value), type=t)
    except (CoercionError, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise ConfigError(f"range for {column!r}: the bound {value!r} does not fit the column type {t}: {e}") from e


def _range(table: pa.Table, chk: RangeCheck, res: RowCheckResult) -> None:
    spec = chk.range
    col = _col(table, spec.column, "range")
    if spec.min is not None:
        lo = _scalar(spec.min, col.type, spec.column)
        res._add(
            "range",
            _indices(pc.less(col, lo)),
            lambda i: f"range: column {spec.column!r} value {describe(col[i].as_py())} is below the minimum {spec.min}",
        )
    if spec.max is not None:
        hi = _scalar(spec.max, col.type, spec.column)
        res._add(
            "range",
            _indices(pc.greater(col, hi)),
            lambda i: f"range: column {spec.column!r} value {describe(col[i].as_py())} is above the maximum {spec.max}",
        )


def _unique(table: pa.Table, cols: list[str], res: RowCheckResult) -> None:
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise ConfigError(f"unique: column(s) {missing} are not in the data (columns: {table.column_names})")
    keyed = table.select(cols).append_column(_IDX, row_numbers(table.num_rows))
    counts = keyed.group_by(cols, use_threads=False).aggregate([(_IDX, "count")])
    dup_keys = counts.filter(pc.greater(counts.column(_IDX + "_count"), 1))
    if dup_keys.num_rows == 0:
        return
    joined = keyed.join(dup_keys.select(cols), keys=cols, join_type="inner")
    idx = sorted(joined.column(_IDX).to_pylist())
    label = ", ".join(cols)
    res._add("unique", idx, lambda i: f"unique: ({label}) = {describe(tuple(table.column(c)[i].as_py() for c in cols))} appears more than once in the batch")


def _filter_rows(table: pa.Table, expr: str) -> set[int]:
    """The indices of the rows of ``table`` for which the filter ``expr`` is not true. ``expr`` must be
    one expression (:func:`icefield.sqlcheck.check_expression`); it runs on a locked, read-only DuckDB
    connection that holds only the batch. Columns whose names collide but for case are named as in
    ``icefield sql`` (``id, Id`` are ``id, Id_1``)."""
    from icefield.query import readonly
    from icefield.sqlcheck import check_expression

    check_expression(expr, f"filter {expr!r}")
    con = readonly.open_connection()
    try:
        names = readonly.distinct_names([*table.column_names, "__icefield_idx"], ignore_case=True)
        keyed = table.append_column("__icefield_idx", row_numbers(table.num_rows)).rename_columns(names)
        con.register("batch", keyed)
        readonly.lock(con)
        # The expression stands on lines of its own, so that a trailing comment ends with it.
        sql = f"SELECT {_q(names[-1])} FROM batch WHERE NOT coalesce((\n{expr}\n), false)"
        try:
            out = readonly.query(con, sql, f"filter {expr!r}")
        except QueryRefusedError:
            raise
        except IcefieldError as e:  # DuckDB could not run it: a column or function that does not exist
            raise ConfigError(f"{e}; a filter must be a valid SQL expression over the batch's columns") from e
        return set(out.column(0).to_pylist())
    finally:
        con.close()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
