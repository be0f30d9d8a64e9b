"""Row checks over rows an engine holds (:class:`icefield.engines.base.Frame`): which rows a check may refuse.

An engine that reads a source itself (Spark) keeps the rows out of this process. The checks still have one
meaning, :func:`icefield.quality.check_rows`'s: :func:`suspect_condition` is one SQL condition, in the engine's
dialect, true for every row that a declared check could quarantine or a ``filter`` rule drop (a superset: a
condition may mark a few rows the checks then pass). The engine returns those rows as Arrow
(:meth:`~icefield.engines.base.Engine.split`) and :func:`check_rows` decides them, with the same reasons as
for any batch; the unmarked rows pass every check and are written where the engine holds them. A ``unique``
check counts over the whole batch (a window over the frame), so every row of a duplicated key comes back.
"""

from __future__ import annotations

from typing import Any

import sqlglot
from sqlglot import exp

from icefield.config.models import (
    AcceptedValuesCheck,
    CheckConfig,
    FilterRule,
    NotNullCheck,
    RangeCheck,
    RegexCheck,
    UniqueCheck,
)
from icefield.errors import ConfigError

__all__ = ["suspect_condition"]


def suspect_condition(checks: list[CheckConfig], columns: list[str], dialect: str) -> str | None:
    """The condition (SQL of ``dialect``) true for every row of a batch with ``columns`` that one of
    ``checks`` may quarantine or filter; None when there is no check. Raises :class:`ConfigError` when a check
    names a column the batch lacks, as :func:`icefield.quality.check_rows` does."""
    parts: list[Any] = []
    for chk in checks:
        if isinstance(chk, FilterRule):
            try:
                cond = sqlglot.parse_one(chk.filter, read="duckdb")
            except sqlglot.errors.ParseError as e:
                raise ConfigError(f"filter {chk.filter!r} is not one SQL expression ({e}); fix the filter") from e
            parts.append(exp.not_(exp.func("coalesce", exp.paren(cond), exp.false())))
        elif isinstance(chk, NotNullCheck):
            parts.extend(exp.column(_col(c, columns, "not_null"), quoted=True).is_(exp.null()) for c in chk.not_null)
        elif isinstance(chk, UniqueCheck):
            keys = [exp.column(_col(c, columns, "unique"), quoted=True) for c in chk.unique]
            count = exp.Window(this=exp.Count(this=exp.Literal.number(1)), partition_by=keys)
            parts.append(exp.GT(this=count, expression=exp.Literal.number(1)))
        elif isinstance(chk, AcceptedValuesCheck):
            spec = chk.accepted_values
            col = exp.column(_col(spec.column, columns, "accepted_values"), quoted=True)
            # Compared as text: a value whose text is one of the accepted values' texts passes here, and the
            # rest are decided by check_rows with the column's type (1.50 against 1.5, true against True).
            text = exp.cast(col, exp.DataType.build("text"))
            values = [exp.Literal.string(_text(v)) for v in spec.values]
            parts.append(exp.and_(col.is_(exp.null()).not_(), exp.not_(exp.In(this=text, expressions=values))))
        elif isinstance(chk, RangeCheck):
            spec_r = chk.range
            col = exp.column(_col(spec_r.column, columns, "range"), quoted=True)
            if spec_r.min is not None:
                parts.append(exp.LT(this=col.copy(), expression=_literal(spec_r.min)))
            if spec_r.max is not None:
                parts.append(exp.GT(this=col.copy(), expression=_literal(spec_r.max)))
        elif isinstance(chk, RegexCheck):
            spec_x = chk.regex
            col = exp.column(_col(spec_x.column, columns, "regex"), quoted=True)
            text = exp.cast(col, exp.DataType.build("text"))
            parts.append(exp.not_(exp.RegexpLike(this=text, expression=exp.Literal.string(spec_x.pattern))))
    if not parts:
        return None
    return " OR ".join(f"({p.sql(dialect=dialect)})" for p in parts)


def _col(name: str, columns: list[str], check: str) -> str:
    if name in columns:
        return name
    raise ConfigError(
        f"checks: {check} names column {name!r}, which is in neither the data nor the table "
        f"(columns: {', '.join(columns)}); fix the column name in the check"
    )


def _text(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _literal(v: Any) -> exp.Expression:
    """A range bound: a number as a number, anything else as text (the engine casts it to the column's type)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return exp.Literal.string(str(v))
    return exp.Literal.number(v)
