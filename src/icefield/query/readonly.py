"""The lock of the query seam: every query a user writes (``icefield sql``, models, ``sql`` gates,
``checks.filter``) and the gates and quality results that icefield compiles run on DuckDB under it.

Two layers, each enough on its own for most of what they stop:

- the statement: DuckDB's own parser must see exactly one statement of type SELECT, and sqlglot must
  agree it is one read-only query (:func:`icefield.sqlcheck.check_query`), so COPY, ATTACH, INSTALL,
  LOAD, SET/RESET, PRAGMA, CALL, CREATE, DROP, INSERT and a second statement never run;
- the connection (:func:`lock`): once the views are bound (:func:`icefield.query.open_views`), DuckDB
  may read only the data files the views need (``allowed_paths``), nothing else: no other file,
  directory listing, URL, database or extension (``enable_external_access=false``, no auto-install or
  auto-load of extensions, no Python replacement scans), and the configuration is locked so no
  statement can undo it.

``unrestricted`` connections (``icefield sql --unrestricted``, for trusted local use) skip both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from icefield.errors import IcefieldError, QueryError, QueryRefusedError
from icefield.sqlcheck import ONE_QUERY, check_query

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

log = logging.getLogger(__name__)

__all__ = ["distinct_names", "lock", "open_connection", "query", "run", "statement"]

T = TypeVar("T")

# Settings of every connection that runs SQL a user wrote: extensions are never fetched or loaded on
# demand (a query naming ``read_csv('http://...')`` would otherwise install httpfs).
_CONNECT_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
}

NO_ACCESS = "a query reads only the tables it names: no other file, URL, database or extension"


def open_connection(unrestricted: bool = False) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB connection. Unless ``unrestricted``, it never installs or loads an
    extension; call :func:`lock` once its views are bound."""
    import duckdb

    return duckdb.connect(config=dict(_CONNECT_CONFIG) if not unrestricted else {})


def _sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def lock(con: duckdb.DuckDBPyConnection, allowed_paths: Iterable[str] = ()) -> None:
    """Lock ``con``: from now on DuckDB reads only the files in ``allowed_paths`` (the data files of
    the views bound on it) and Arrow data registered on it; every other file, directory, URL, database
    and extension is refused, and no statement can change a setting again.

    Views over ``read_parquet`` keep working as long as their files are allowed; register Arrow data
    and create views before or after, both work.
    """
    paths = sorted({p for p in allowed_paths})
    settings = [
        # Exact files, not their folder: a warehouse folder holds other tables and metadata.
        f"SET allowed_paths = [{', '.join(_sql_string(p) for p in paths)}]",
        "SET allowed_directories = []",
        "SET enable_external_access = false",
        "SET python_enable_replacements = false",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET lock_configuration = true",
    ]
    for s in settings:
        con.execute(s)


def statement(con: duckdb.DuckDBPyConnection, sql: str, what: str = "the query") -> duckdb.Statement:
    """The one statement of ``sql`` as DuckDB parsed it, after checking that it is exactly one
    read-only query by DuckDB's parser and by sqlglot's (:func:`icefield.sqlcheck.check_query`).

    Raises :class:`QueryRefusedError` (a ``ConfigError``) naming ``what`` and what was refused.
    """
    import duckdb

    try:
        found = con.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryRefusedError(f"{what} is refused: it does not parse: {str(e).splitlines()[0]}") from None
    if len(found) != 1:
        raise QueryRefusedError(f"{what} is refused: it holds {len(found)} statements; {ONE_QUERY}")
    stmt = found[0]
    if stmt.type != duckdb.StatementType.SELECT:
        # Named by its first word: DuckDB files INSTALL under LOAD, RESET under SET.
        words = stmt.query.split()
        kind = words[0].upper() if words else stmt.type.name
        raise QueryRefusedError(f"{what} is refused: {kind} is not a read-only query; {ONE_QUERY}")
    # DuckDB saw one SELECT; sqlglot must agree (and finds data-modifying clauses nested in it).
    check_query(sql, what)
    return stmt


def query(con: duckdb.DuckDBPyConnection, sql: str, what: str = "the query") -> pa.Table:
    """Run ``sql`` (checked by :func:`statement`) on ``con`` and return its result as Arrow.

    Raises :class:`QueryRefusedError` (a ``ConfigError``) when the statement is refused or it reaches for something the locked
    connection does not allow (a file, a URL, an extension), :class:`QueryError` (a ``ConfigError``)
    when DuckDB cannot run it as written (unknown table or column, a type or value it cannot convert),
    :class:`IcefieldError` when DuckDB fails on it otherwise.
    """
    return run(con, sql, lambda rel: rel.to_arrow_table(), what)


def run(con: duckdb.DuckDBPyConnection, sql: str, fetch: Callable[[duckdb.DuckDBPyRelation], T], what: str = "the query") -> T:
    """Check ``sql`` (:func:`statement`) and return what ``fetch`` takes from its relation on ``con``
    (:func:`query` takes it as Arrow). Raises as :func:`query` does, for errors of ``fetch`` too."""
    import duckdb

    stmt = statement(con, sql, what)
    try:
        return fetch(con.sql(stmt))
    except duckdb.PermissionException as e:
        raise QueryRefusedError(f"{what} is refused: {str(e).splitlines()[0]}; {NO_ACCESS}") from None
    except (duckdb.ProgrammingError, duckdb.DataError, duckdb.NotSupportedError) as e:
        # Binder, catalog and conversion errors: the query must change, a retry cannot help (exit 2).
        raise QueryError(f"{what} failed: {e}") from None
    except duckdb.Error as e:
        raise IcefieldError(f"{what} failed: {e}") from None


def distinct_names(names: list[str], ignore_case: bool = False) -> list[str]:
    """``names`` made distinct the way DuckDB names duplicate columns: a name equal to an earlier one
    (``ignore_case``: equal but for case, as DuckDB matches names) gets ``_1``, ``_2`` ... (the first
    that is free): ``id, name, id`` gives ``id, name, id_1``; ``id, Id, ID`` with ``ignore_case`` gives
    ``id, Id_1, ID_2``."""

    def key(n: str) -> str:
        return n.lower() if ignore_case else n

    taken = {key(n) for n in names}
    seen: set[str] = set()
    out = []
    for n in names:
        name = n
        if key(n) in seen:
            i = 1
            while key(f"{n}_{i}") in taken:
                i += 1
            name = f"{n}_{i}"
            taken.add(key(name))
        seen.add(key(name))
        out.append(name)
    return out
