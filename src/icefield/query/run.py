"""One query over the project's tables, as ``icefield sql`` and scripts run it: as Arrow
(:func:`run_query`) or as the Python rows ``icefield sql`` prints (:func:`query_rows`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from icefield.errors import IcefieldError, QueryError, QueryRefusedError
from icefield.query.readonly import open_connection, run, statement
from icefield.query.views import named_tables, open_views

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    from pyiceberg.catalog import Catalog

    from icefield.config import Project

__all__ = ["Rows", "query_rows", "run_query"]

T = TypeVar("T")

# DuckDB result types whose Python values (``fetchall``) are the ones Arrow's ``to_pylist`` gives: such a
# result is fetched without loading Arrow. Times and dates are not among them (DuckDB clamps infinities
# that Arrow refuses, and needs pytz for time zones); nested types, UUID, HUGEINT, INTERVAL differ.
_PLAIN = re.compile(
    r'BOOLEAN|TINYINT|SMALLINT|INTEGER|BIGINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|FLOAT|DOUBLE|VARCHAR|DECIMAL\(\d+,\s*\d+\)|"NULL"'
)


@dataclass
class Rows:
    """A query's result as Python values (those Arrow's ``to_pylist`` gives): its column names as DuckDB
    names them (a repeated name stays repeated), its first rows (all of them without a limit) and how
    many rows it holds in all."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    total: int


def run_query(project: Project, sql: str, catalog: Catalog | None = None, unrestricted: bool = False) -> pa.Table:
    """Run ``sql`` on DuckDB with the project's Iceberg tables as ``namespace.table`` views; returns its
    result as Arrow.

    By default ``sql`` must be exactly one read-only statement (SELECT, WITH ... SELECT, VALUES,
    DESCRIBE, SUMMARIZE) and runs on a locked connection that reads only the files of the tables it
    names: no other file, URL, database or extension, and no setting can change
    (:mod:`icefield.query.readonly`). Only the tables it names are loaded; SQL that names none opens no
    catalog (``catalog``, when given, is used as it is). ``unrestricted`` (trusted local use) runs any
    DuckDB SQL, several statements included, with full file and network access, and returns the last
    result.

    Raises :class:`QueryRefusedError` (a ``ConfigError``) when the query is refused, :class:`QueryError`
    (a ``ConfigError``) when it cannot run as written, :class:`IcefieldError` when it fails otherwise.
    """

    def open_catalog() -> Catalog:
        if catalog is not None:
            return catalog
        from icefield.catalog import open_catalog

        return open_catalog(project)

    return _run(sql, open_catalog, unrestricted, lambda rel: rel.to_arrow_table(), _empty)


def query_rows(sql: str, catalog: Callable[[], Catalog], unrestricted: bool = False, limit: int | None = None) -> Rows:
    """Run ``sql`` as :func:`run_query` does and return its result as :class:`Rows`: at most ``limit``
    rows when given, and the count of all. ``catalog`` opens the catalog; it is called only when ``sql``
    names a table (``select 1`` opens nothing). A result of numbers, text and booleans only is read
    without loading Arrow.

    Raises as :func:`run_query` does."""
    return _run(sql, catalog, unrestricted, lambda rel: _rows(rel, limit), lambda: Rows([], [], 0))


def _run(
    sql: str, catalog: Callable[[], Catalog], unrestricted: bool, fetch: Callable[[duckdb.DuckDBPyRelation], T], empty: Callable[[], T]
) -> T:
    import duckdb

    from icefield.sqlcheck import table_refs

    try:
        # One connection checks the statement and then holds the views (each new one costs ~15 ms).
        con = open_connection(unrestricted)
        try:
            if not unrestricted:
                statement(con, sql)  # refused before any table is opened
            # A query that names no table opens no catalog.
            tables = {} if table_refs(sql) == set() else named_tables(catalog(), sql)
        except BaseException:
            con.close()
            raise
        with open_views(((ident, t, None) for ident, t in tables.items()), unrestricted=unrestricted, con=con) as views:
            if not unrestricted:
                return run(views.con, sql, fetch)
            rel = views.con.sql(sql)
            return fetch(rel) if rel is not None else empty()
    except QueryRefusedError as e:
        raise QueryRefusedError(f"{e}. For trusted local use, `icefield sql --unrestricted` runs any DuckDB SQL") from None
    except (duckdb.ProgrammingError, duckdb.DataError, duckdb.NotSupportedError) as e:
        raise QueryError(f"the query failed: {e}") from None  # syntax, unknown table or column: exit 2
    except duckdb.Error as e:
        raise IcefieldError(f"the query failed: {e}") from None


def _rows(rel: duckdb.DuckDBPyRelation, limit: int | None) -> Rows:
    columns = list(rel.columns)
    if all(_PLAIN.fullmatch(str(t)) for t in rel.types):
        # At most one row past the limit: only a longer result is read again, as Arrow, to count it.
        rows = rel.fetchall() if limit is None else rel.limit(max(limit, 0) + 1).fetchall()
        if limit is None or len(rows) <= limit:
            return Rows(columns, rows, len(rows))
    table = rel.to_arrow_table()
    shown = table if limit is None else table.slice(0, max(limit, 0))
    return Rows(columns, list(zip(*(c.to_pylist() for c in shown.columns), strict=True)), table.num_rows)


def _empty() -> pa.Table:
    import pyarrow as pa

    return pa.table({})
