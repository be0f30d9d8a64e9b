"""What SQL icefield accepts from users, judged by parsing it (sqlglot, DuckDB dialect).

A *query* (``icefield sql``, a model, a ``sql`` gate) is exactly one read-only statement: a SELECT (with
``WITH``, set operations, ``VALUES``, DuckDB's ``FROM``-first form and ``PIVOT ... IN (...)``) or a
``DESCRIBE``/``SUMMARIZE`` of one. A *filter* (``checks.filter``) is one expression over the batch's columns: no statement, no
subquery, no table. Everything else is refused with a :class:`~icefield.errors.QueryRefusedError` (a ``ConfigError``) that names
what was refused and why.

This module only parses; it imports nothing of icefield but the errors, so the configuration can check
filters when a project is loaded. The DuckDB side of the same rules (its own parser must agree, and the
connection is locked) is :mod:`icefield.query.readonly`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icefield.errors import QueryRefusedError

if TYPE_CHECKING:
    from sqlglot import exp

__all__ = ["check_expression", "check_query", "table_refs"]

# Statement kinds that change state or reach outside the query: refused wherever they appear in a tree
# (a data-modifying CTE, ``SELECT ... INTO``). Names missing from the installed sqlglot are skipped.
_REFUSED_NODES = (
    "DML", "DDL", "Drop", "Alter", "Command", "Set", "Pragma", "Attach", "Detach", "Install", "Use",
    "Transaction", "Commit", "Rollback", "Export", "LoadData", "Cache", "Uncache", "Analyze", "Kill",
    "Refresh", "Lock", "TruncateTable", "Grant", "Revoke", "Execute", "Declare", "Into", "Show",
)


ONE_QUERY = "exactly one read-only query runs (SELECT, WITH ... SELECT, VALUES, PIVOT, DESCRIBE or SUMMARIZE)"


def _refused_types() -> tuple[type, ...]:
    from sqlglot import exp

    return tuple(t for n in _REFUSED_NODES if isinstance(t := getattr(exp, n, None), type))


def _kind(node: exp.Expr) -> str:
    """What ``node`` is, for messages: ``COPY``, ``ATTACH``, ``CREATE`` ... (``not a query`` for an
    expression that is no statement at all)."""
    from sqlglot import exp

    if isinstance(node, exp.Command):
        return str(node.this).upper()
    if isinstance(node, _refused_types()):
        return str(node.key).upper().replace("_", " ")
    return f"{node.sql(dialect='duckdb')[:40]!r} (not a query)"


def check_query(sql: str, what: str = "the query") -> exp.Expr:
    """Check that ``sql`` is exactly one read-only statement; return its parsed tree.

    Raises :class:`QueryRefusedError` naming ``what`` (e.g. ``"model models/x.sql"``) and the reason: it does
    not parse, it holds several statements (or none), or it is (or contains) something other than a
    query (COPY, ATTACH, INSTALL/LOAD, SET/RESET, PRAGMA, CALL, CREATE, DROP, INSERT ...).
    """
    import sqlglot
    from sqlglot import exp

    try:
        trees = [t for t in sqlglot.parse(sql, read="duckdb") if t is not None]
    except sqlglot.errors.SqlglotError as e:
        raise QueryRefusedError(f"{what} is refused: it does not parse as DuckDB SQL ({str(e).splitlines()[0]}); {ONE_QUERY}") from e
    if len(trees) != 1:
        raise QueryRefusedError(f"{what} is refused: it holds {len(trees)} statements; {ONE_QUERY}")
    tree = trees[0]
    if not isinstance(tree, (exp.Query, exp.Values, exp.Describe, exp.Summarize, exp.Pivot)):
        raise QueryRefusedError(f"{what} is refused: {_kind(tree)} is not a read-only query; {ONE_QUERY}")
    refused = _refused_types()
    for node in tree.walk():
        if isinstance(node, refused):
            raise QueryRefusedError(f"{what} is refused: it contains {_kind(node)}, which is not read-only; {ONE_QUERY}")
    return tree


def check_expression(expr: str, what: str = "the filter") -> exp.Expr:
    """Check that ``expr`` is one SQL expression (DuckDB dialect) with no statement, subquery or table
    in it; return its parsed tree.

    Raises :class:`QueryRefusedError` naming ``what`` (say ``"filter 'x > 1'"``) and the reason.
    """
    import sqlglot
    from sqlglot import exp

    if not expr.strip():
        raise QueryRefusedError(f"{what} is empty; write a SQL expression over the row's columns, e.g. amount > 0")
    try:
        tree = sqlglot.parse_one(expr, read="duckdb", into=exp.Condition)
    except sqlglot.errors.SqlglotError as e:
        raise QueryRefusedError(
            f"{what} is not one SQL expression (statements, ';' and unbalanced parentheses are refused); "
            "write a condition over the row's columns, e.g. amount > 0"
        ) from e
    refused = _refused_types()
    for node in tree.walk():
        if isinstance(node, (exp.Query, exp.Subquery, exp.Exists)):
            raise QueryRefusedError(f"{what} holds a subquery; a filter sees only the row's own columns")
        if isinstance(node, (exp.Table, exp.Values)):
            raise QueryRefusedError(f"{what} names a table or table function; a filter sees only the row's own columns")
        if isinstance(node, refused):
            raise QueryRefusedError(f"{what} contains {_kind(node)}; a filter is one expression")
    return tree


def table_refs(sql: str) -> set[tuple[str | None, str]] | None:
    """The tables ``sql`` reads as ``(schema, name)``, spelled as written (``schema`` None when
    unqualified; CTE names included), or None when it cannot be parsed."""
    import sqlglot
    from sqlglot import exp

    try:
        trees = sqlglot.parse(sql, read="duckdb")
    except sqlglot.errors.SqlglotError:
        return None
    refs: set[tuple[str | None, str]] = set()
    for tree in trees:
        if tree is None:
            continue
        for t in tree.find_all(exp.Table):
            if t.name:
                refs.add((t.db or None, t.name))
    return refs
