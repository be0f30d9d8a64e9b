"""``icefield sql``'s query: one SQL statement over the project's tables, as Arrow."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from icefield.errors import IcefieldError, QueryError, QueryRefusedError
from icefield.query.readonly import open_connection, query, statement
from icefield.query.views import Views, connect, open_views

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog import Catalog

    from icefield.config import Project

__all__ = ["run_query"]


def run_query(project: Project, sql: str, catalog: Catalog | None = None, unrestricted: bool = False) -> pa.Table:
    """Run ``sql`` on DuckDB with the project's Iceberg tables as ``namespace.table`` views.

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
    import duckdb

    from icefield.sqlcheck import table_refs

    try:
        if not unrestricted:
            # Refused before any table is opened.
            with contextlib.closing(open_connection()) as parser:
                statement(parser, sql)
        views: Views
        if table_refs(sql) == set():  # names no table: nothing to open
            views = open_views([], unrestricted=unrestricted)
        else:
            if catalog is None:
                from icefield.catalog import open_catalog

                catalog = open_catalog(project)
            views = connect(catalog, sql, unrestricted=unrestricted)
        with views:
            if not unrestricted:
                return query(views.con, sql)
            rel = views.con.sql(sql)
            return rel.to_arrow_table() if rel is not None else _empty()
    except QueryRefusedError as e:
        raise QueryRefusedError(f"{e}. For trusted local use, `icefield sql --unrestricted` runs any DuckDB SQL") from None
    except (duckdb.ProgrammingError, duckdb.DataError, duckdb.NotSupportedError) as e:
        raise QueryError(f"the query failed: {e}") from None  # syntax, unknown table or column: exit 2
    except duckdb.Error as e:
        raise IcefieldError(f"the query failed: {e}") from None


def _empty() -> pa.Table:
    import pyarrow as pa

    return pa.table({})
