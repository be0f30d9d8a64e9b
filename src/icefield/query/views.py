"""DuckDB views over Iceberg snapshots: the one place icefield builds them, for ``icefield sql``, models
and gates alike.

Each table is the view ``namespace.table`` (:func:`view_name`) over one snapshot, with the table's
current schema, its columns read by field id and the rows its position delete files remove left out
(:func:`register_table`). Only the tables a query names are loaded and bound (:func:`tables_named`); a
query that names none opens nothing. An access policy in effect (:mod:`icefield.query.policy`) rewrites
each view as it is built.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from icefield.errors import ConfigError, QueryRefusedError
from icefield.query.policy import ViewPolicy, current_policy
from icefield.query.readonly import distinct_names, lock, open_connection
from icefield.query.stores import duck_path, readable_store

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

__all__ = ["View", "Views", "connect", "named_tables", "open_views", "register_table", "tables_named", "view_name", "view_sql"]

Ident = tuple[str, ...]


def view_name(ident: Ident) -> tuple[str, str]:
    """The DuckDB schema and view names of table ``ident``: ``raw.events`` is ``raw.events``, and a
    nested namespace ``a.b.t`` is ``a_b.t``."""
    return "_".join(ident[:-1]), ident[-1]


def view_sql(ident: Ident) -> str:
    """The quoted DuckDB name of table ``ident``'s view, for SQL."""
    schema, name = view_name(ident)
    return f"{_quote(schema)}.{_quote(name)}"


@dataclass
class View:
    """An Iceberg table bound as a DuckDB view: its quoted name, the view's column name for each
    Iceberg column name (they differ only for names that collide but for case), the data files the
    view reads (those a locked connection must allow), the table's identifier and the snapshot the view
    shows (None for a table without one)."""

    name: str
    columns: dict[str, str]
    paths: list[str] = field(default_factory=list)
    ident: Ident = ()
    snapshot_id: int | None = None


@dataclass
class Views:
    """A DuckDB connection with Iceberg tables bound as views (by identifier). Closing it (``close()``, or
    leaving a ``with`` block) closes the connection."""

    con: duckdb.DuckDBPyConnection
    views: dict[Ident, View] = field(default_factory=dict)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Views:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def connect(
    catalog: Catalog,
    sql: str | None,
    snapshots: Mapping[Ident, int | None] | None = None,
    unrestricted: bool = False,
    policy: ViewPolicy | None = None,
) -> Views:
    """A DuckDB connection where each catalog table ``sql`` names (:func:`tables_named`) is a view
    ``namespace.table`` over the snapshot ``snapshots`` gives it (by default its current one), locked
    to read-only use unless ``unrestricted`` (:func:`open_views`); run ``sql`` on it with
    :func:`icefield.query.query`. ``sql`` None binds every table of the catalog.

    Raises :class:`ConfigError` when two of those tables would be one DuckDB view."""
    tables = named_tables(catalog, sql)
    pinned = snapshots or {}
    return open_views(((ident, t, pinned.get(ident)) for ident, t in tables.items()), unrestricted=unrestricted, policy=policy)


def named_tables(catalog: Catalog, sql: str | None) -> dict[Ident, Table]:
    """The catalog tables ``sql`` names (:func:`tables_named`; every table when ``sql`` is None), each
    loaded once: the other tables of the catalog are never loaded."""
    from icefield.catalog import list_tables

    idents = list_tables(catalog) if sql is None else tables_named(catalog, sql)
    return {ident: catalog.load_table(ident) for ident in idents}


def tables_named(catalog: Catalog, sql: str) -> list[Ident]:
    """The catalog tables whose view ``sql`` may read: those it names as ``namespace.table``, matched
    without regard to case as DuckDB matches names (an unqualified name reaches only namespace
    ``main``). Of tables that would be one view (``raw.events`` and ``raw.Events``), only the one
    ``sql`` spells exactly is taken; when it spells none or several of them exactly, all are returned
    and :func:`open_views` refuses them. All tables when ``sql`` cannot be parsed; none, and no catalog
    call, when it names no table (``select 1``)."""
    from icefield.catalog import list_tables
    from icefield.sqlcheck import table_refs

    refs = table_refs(sql)
    if refs is None:
        return list_tables(catalog)
    if not refs:
        return []
    named = {(s or "main", n) for s, n in refs}
    named_folded = {(s.lower(), n.lower()) for s, n in named}
    schemas = {s for s, _ in named_folded}
    # Only the namespaces whose view schema a name could reach are listed.
    idents = list_tables(catalog, lambda ns: "_".join(ns).lower() in schemas)
    groups: dict[tuple[str, str], list[Ident]] = {}
    for ident in idents:
        schema, name = view_name(ident)
        if (schema.lower(), name.lower()) in named_folded:
            groups.setdefault((schema.lower(), name.lower()), []).append(ident)
    found = []
    for group in groups.values():
        exact = [i for i in group if view_name(i) in named]
        found.extend(exact if len(group) > 1 and len(exact) == 1 else group)
    return sorted(found)


def open_views(
    tables: Iterable[tuple[Ident, Table, int | None]],
    unrestricted: bool = False,
    policy: ViewPolicy | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> Views:
    """A new DuckDB connection with each ``(ident, table, snapshot_id)`` bound as the view
    ``namespace.table`` (:func:`register_table`; ``snapshot_id`` None for the current snapshot), then
    locked to read-only use, reading only those views' files (:func:`icefield.query.readonly.lock`),
    unless ``unrestricted``. The one way icefield opens DuckDB over tables for SQL that users write.
    ``policy`` (by default the one in effect, :func:`icefield.query.view_policy`) rewrites each view.
    ``con`` (from :func:`icefield.query.open_connection`, nothing bound on it yet) is used instead of a
    new connection; it is closed when binding fails.

    Raises :class:`ConfigError` when two tables would be one view (DuckDB names ignore case, and a
    nested namespace's dots become ``_``): DuckDB could not tell them apart."""
    wanted = list(tables)
    by_view: dict[tuple[str, str], Ident] = {}
    for ident, _, _ in wanted:
        schema, name = view_name(ident)
        other = by_view.setdefault((schema.lower(), name.lower()), ident)
        if other != ident:
            raise ConfigError(
                f"tables {'.'.join(other)} and {'.'.join(ident)} would both be the DuckDB view {schema}.{name} "
                "(DuckDB names ignore case, and a nested namespace's dots become '_'), so SQL cannot tell them apart; "
                "rename one of them, or read it with another engine"
            )
    out = Views(con if con is not None else open_connection(unrestricted))
    con = out.con
    try:
        for ident, table, snapshot_id in wanted:
            out.views[ident] = register_table(con, table, ident, snapshot_id=snapshot_id, policy=policy)
        if not unrestricted:
            lock(con, [p for v in out.views.values() for p in v.paths])
    except BaseException:
        con.close()
        raise
    return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def register_table(
    con: duckdb.DuckDBPyConnection, table: Table, ident: Ident, snapshot_id: int | None = None, policy: ViewPolicy | None = None
) -> View:
    """Expose ``table`` to DuckDB as the view ``<namespace>.<name>`` (:func:`view_name`), at
    ``snapshot_id`` (a branch head, say) or by default at its current snapshot, with the table's current
    schema (a rename or an added column needs no snapshot, so a snapshot's own schema may be stale).
    Columns are read by Iceberg field id, never by name; names that collide but for case are renamed
    (``id, Id, ID`` are ``id, Id_1, ID_2``: :func:`icefield.query.distinct_names`). ``policy`` (by
    default the one in effect) may mask columns and filter rows (:class:`icefield.query.ViewRule`).
    Returns the :class:`View`.

    Reads the snapshot's Parquet files directly (fast, no copy, pruned and streamed by DuckDB) when they
    carry field ids (the table has no name mapping) and lie in a local folder or an object store DuckDB
    reaches through the table's own pyarrow filesystem (:mod:`icefield.query.stores`), leaving out the
    rows position delete files remove (an anti-join on the file and row number); otherwise (equality
    deletes, files mapped by name) reads them with pyiceberg's Arrow scan, which applies deletes and
    maps columns by field id too.

    Raises :class:`ConfigError` when the policy's rule names a column the view lacks or is not one SQL
    expression.
    """
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan
    from pyiceberg.manifest import DataFileContent

    from icefield.iceberg.planning import plan_files

    schema_name, _ = view_name(ident)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema_name)}")
    name = view_sql(ident)
    # Objects registered beside the view are named by a digest: "a.b_t" and "a_b.t" must not share one.
    tag = hashlib.sha256("\x00".join(ident).encode()).hexdigest()[:16]
    schema = table.schema()
    arrow_schema = schema.as_arrow()
    names = distinct_names(arrow_schema.names, ignore_case=True)
    if snapshot_id is None and (current := table.current_snapshot()) is not None:
        snapshot_id = current.snapshot_id
    view = View(name, dict(zip(arrow_schema.names, names, strict=True)), ident=ident, snapshot_id=snapshot_id)
    policy = policy if policy is not None else current_policy()
    tasks = plan_files(table, "read it", snapshot_id=snapshot_id) if snapshot_id is not None else []
    positional = all(d.content == DataFileContent.POSITION_DELETES for t in tasks for d in t.delete_files)
    deletes = any(t.delete_files for t in tasks)
    # The anti-join on deleted rows adds these two columns to the files' own.
    reserved = deletes and bool({"file_row_number", "__icefield_file"} & {n.lower() for n in names})
    if tasks and schema.fields and _by_field_id(table) and positional and not reserved and all(
        t.file.file_path.startswith(("file://", "/")) or readable_store(t.file.file_path) for t in tasks
    ):
        view.paths = [duck_path(con, table, t.file.file_path) for t in tasks]
        files_sql = "[" + ",".join(_sql_string(p) for p in view.paths) + "]"
        # Each field id maps to its view name and type; a file without the column reads NULL.
        types = _duck_types(con, arrow_schema)
        fields = ", ".join(
            f"{f.field_id}: {{name: {_sql_string(n)}, type: {_sql_string(t)}, default_value: NULL}}"
            for f, n, t in zip(schema.fields, names, types, strict=True)
        )
        reader = f"read_parquet({files_sql}, schema = MAP {{{fields}}}"
        source = f"{reader}) AS d"
        if deletes:
            from icefield.iceberg.deletes import deleted_positions

            # Rows that position delete files remove: an anti-join on (file, row number in the file).
            deleted = f"__icefield_deleted_{tag}"
            con.register(deleted, deleted_positions(table, tasks))
            source = (
                f"{reader}, filename='__icefield_file', file_row_number=true) AS d "
                f"ANTI JOIN {_quote(deleted)} AS x ON x.file_path = d.__icefield_file AND x.pos = d.file_row_number"
            )
        cols = ", ".join(f"d.{_quote(n)}" for n in names)
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {_ruled(f'SELECT {cols} FROM {source}', view, policy)}")
        return view
    # Projected on the current schema (not the snapshot's, as table.scan(snapshot_id=...) would).
    data = ArrowScan(table.metadata, table.io, schema, AlwaysTrue()).to_table(tasks) if tasks else arrow_schema.empty_table()
    tmp = f"__icefield_{tag}"
    con.register(tmp, data.rename_columns(names))
    con.execute(f"CREATE OR REPLACE VIEW {name} AS {_ruled(f'SELECT * FROM {_quote(tmp)}', view, policy)}")
    return view


def _ruled(select: str, view: View, policy: ViewPolicy | None) -> str:
    """``select`` (the view's query) with the rule ``policy`` gives ``view`` applied: masked columns
    replaced by their expression, rows filtered. ``select`` itself when there is no rule."""
    from icefield.sqlcheck import check_expression

    rule = policy.rule(view) if policy is not None else None
    if rule is None or (not rule.columns and rule.where is None):
        return select
    table = ".".join(view.ident)
    names = list(view.columns.values())
    unknown = sorted(set(rule.columns) - set(names))
    if unknown:
        raise ConfigError(
            f"the view policy masks column(s) {', '.join(unknown)} that the view of {table} does not have "
            f"(its columns: {', '.join(names)}); fix the policy"
        )
    try:
        for column, expr in rule.columns.items():
            check_expression(expr, f"the view policy's mask of {table}.{column}")
        if rule.where is not None:
            check_expression(rule.where, f"the view policy's row filter of {table}")
    except QueryRefusedError as e:  # the policy is wrong, not the query
        raise ConfigError(f"{e}; fix the policy") from None
    # Each expression on lines of its own: a trailing comment in one ends with its line.
    cols = ", ".join(f"(\n{rule.columns[n]}\n) AS {_quote(n)}" if n in rule.columns else _quote(n) for n in names)
    where = f"\nWHERE (\n{rule.where}\n)" if rule.where is not None else ""
    return f"SELECT {cols} FROM (\n{select}\n) AS governed{where}"


def _by_field_id(table: Table) -> bool:
    """True when DuckDB can read the table's files by field id: they carry field ids (no name mapping
    says otherwise: files added without them come with one) and no nested field was renamed (nested
    fields are matched by name) nor added to a struct (:func:`_nested_changed`)."""
    from icefield.iceberg.planning import has_renames

    if table.metadata.name_mapping() is not None:
        return False
    if all(f.field_type.is_primitive for f in table.schema().fields):
        return True
    return not has_renames(table) and not _nested_changed(table)


def _nested_changed(table: Table) -> bool:
    """True if a nested column's type changed since the table's first schema (a struct gained a field): DuckDB's
    field-id read of older files, whose struct lacks the field, fails then, where pyiceberg's scan fills it
    with nulls."""
    current = {f.field_id: f.field_type for f in table.schema().fields if not f.field_type.is_primitive}
    for schema in table.metadata.schemas:
        for f in schema.fields:
            if f.field_id in current and f.field_type != current[f.field_id]:
                return True
    return False


def _duck_types(con: duckdb.DuckDBPyConnection, schema: pa.Schema) -> list[str]:
    """The DuckDB type of each field of ``schema``, as SQL."""
    import pyarrow as pa

    plain = pa.schema([pa.field(f"c{i}", f.type) for i, f in enumerate(schema)])
    # Empty columns made of nulls: ``Schema.empty_table`` converts Python lists, which loads pandas.
    empty = pa.Table.from_arrays([pa.nulls(0, f.type) for f in plain], schema=plain)
    return [str(t) for t in con.from_arrow(empty).types]
