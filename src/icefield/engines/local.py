"""The ``local`` engine: DuckDB and Arrow in one process.

Merge is copy-on-write (DESIGN.md rule 3): dedupe the batch by key, prune data files with the
manifests (partition values, column bounds), read only the candidates, drop the rows whose key the batch
names, and hand back the files to remove and the rows to write in one overwrite commit.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from icefield.engines import Engine, EngineCapabilities, MergePlan

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.catalog import Catalog
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table

    from icefield.config.models import TargetConfig

log = logging.getLogger(__name__)

IN_LIST_LIMIT = 5_000


def dedupe_latest(data: pa.Table, keys: list[str], order_by: str | None) -> pa.Table:
    """Keep one row per key: the greatest ``order_by`` value, ties (or no ``order_by``) broken by the
    later position in the batch."""
    if data.num_rows == 0:
        return data
    pos = pa.array(range(data.num_rows), pa.int64())
    work = data.append_column("__pos", pos)
    if order_by:
        work = work.sort_by([(order_by, "ascending"), ("__pos", "ascending")])
        work = work.set_column(work.schema.get_field_index("__pos"), "__pos", pa.array(range(work.num_rows), pa.int64()))
    last = work.group_by(keys, use_threads=False).aggregate([("__pos", "max")])
    picked = pc.sort_indices(last.column("__pos_max"))
    idx = pc.take(last.column("__pos_max"), picked)
    return work.take(idx).drop(["__pos"])


def _prune_filter(keys_table: pa.Table, keys: list[str]) -> BooleanExpression:
    from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, In, LessThanOrEqual

    expr: BooleanExpression = AlwaysTrue()
    for k in keys:
        col = keys_table.column(k)
        distinct = pc.unique(col.drop_null())
        if len(distinct) == 0:
            continue
        if len(distinct) <= IN_LIST_LIMIT:
            term: BooleanExpression = In(k, set(distinct.to_pylist()))  # type: ignore[call-arg,arg-type]
        else:
            mm = pc.min_max(distinct)
            term = And(GreaterThanOrEqual(k, mm["min"].as_py()), LessThanOrEqual(k, mm["max"].as_py()))  # type: ignore[call-arg,arg-type]
        expr = term if isinstance(expr, AlwaysTrue) else And(expr, term)
    return expr


class LocalEngine(Engine):
    name = "local"
    capabilities = EngineCapabilities(supports_merge=True, supports_sql=True, distributed=False)

    def merge(self, table: Table, data: pa.Table, target: TargetConfig) -> MergePlan:
        from pyiceberg.expressions import AlwaysTrue
        from pyiceberg.io.pyarrow import ArrowScan

        keys = list(target.keys)
        batch = dedupe_latest(data, keys, target.order_by)
        if target.delete_column and target.delete_column in batch.column_names:
            flag = pc.fill_null(batch.column(target.delete_column).cast(pa.bool_()), False)
            deletes = batch.filter(flag)
            upserts = batch.filter(pc.invert(flag))
        else:
            deletes = batch.slice(0, 0)
            upserts = batch
        plan = MergePlan()
        batch_keys = batch.select(keys)
        delete_keys = deletes.select(keys)
        if table.current_snapshot() is not None and batch.num_rows:
            tasks = list(table.scan(row_filter=_prune_filter(batch_keys, keys)).plan_files())
            scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
            for task in tasks:
                existing = scan.to_table([task])
                survivors = existing.join(batch_keys, keys=keys, join_type="left anti", use_threads=False)
                hit = existing.num_rows - survivors.num_rows
                if hit == 0:
                    continue
                if delete_keys.num_rows:
                    plan.rows_deleted += existing.join(delete_keys, keys=keys, join_type="left semi").num_rows
                plan.rows_updated += hit
                plan.remove.append(task.file)
                plan.rewrite.append(survivors)
            plan.rows_updated -= plan.rows_deleted
        new_rows = upserts
        if target.delete_column and target.delete_column in new_rows.column_names:
            new_rows = new_rows.drop([target.delete_column])
        if new_rows.num_rows:
            new_rows = new_rows.sort_by([(k, "ascending") for k in keys])
            plan.rewrite.append(new_rows)
        plan.rows_written = new_rows.num_rows
        plan.rows_inserted = new_rows.num_rows - plan.rows_updated
        return plan

    # ------------------------------------------------------------------ SQL

    def connect(self, catalog: Catalog, sql: str | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection where each Iceberg table (those ``sql`` names, or all) is a view
        ``namespace.table`` over its current snapshot."""
        import duckdb

        con = duckdb.connect()
        wanted = tables_in_sql(sql) if sql is not None else None
        for ident in list_tables(catalog):
            if wanted is not None and ident[-1].lower() not in wanted:
                continue
            register_table(con, catalog.load_table(ident), ident)
        return con


def list_tables(catalog: Catalog) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for ns in catalog.list_namespaces():
        out.extend(catalog.list_tables(ns))
    return sorted(out)


def tables_in_sql(sql: str) -> set[str] | None:
    """Lower-cased names of the tables ``sql`` references, or None if it cannot be parsed."""
    import sqlglot
    from sqlglot import exp

    try:
        trees = sqlglot.parse(sql, read="duckdb")
    except sqlglot.errors.ParseError:
        return None
    names: set[str] = set()
    for tree in trees:
        if tree is None:
            continue
        for t in tree.find_all(exp.Table):
            names.add(t.name.lower())
    return names


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def register_table(con: duckdb.DuckDBPyConnection, table: Table, ident: tuple[str, ...]) -> None:
    """Expose ``table`` to DuckDB as the view ``<namespace>.<name>``.

    Reads the current snapshot's Parquet files directly (fast, no copy) when no delete files exist and
    no column was ever renamed; otherwise falls back to pyiceberg's Arrow scan, which applies deletes
    and maps columns by field id.
    """
    schema_name = "_".join(ident[:-1])
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema_name)}")
    view = f"{_quote(schema_name)}.{_quote(ident[-1])}"
    arrow_schema = table.schema().as_arrow()
    tasks = list(table.scan().plan_files()) if table.current_snapshot() is not None else []
    renamed = _has_renames(table)
    if tasks and not renamed and not any(t.delete_files for t in tasks) and all(
        t.file.file_path.startswith(("file://", "/")) for t in tasks
    ):
        paths = [t.file.file_path.removeprefix("file://") for t in tasks]
        present = set()
        # union_by_name fills columns added after a file was written with NULLs.
        files_sql = "[" + ",".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"
        rel = con.sql(f"SELECT * FROM read_parquet({files_sql}, union_by_name=true) LIMIT 0")
        present = set(rel.columns)
        cols = []
        for f in arrow_schema:
            if f.name in present:
                cols.append(_quote(f.name))
            else:
                cols.append(f"CAST(NULL AS {_duck_type(f.type)}) AS {_quote(f.name)}")
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT {', '.join(cols)} FROM read_parquet({files_sql}, union_by_name=true)")
        return
    data = table.scan().to_arrow() if tasks else arrow_schema.empty_table()
    tmp = "__icefield_" + "_".join(ident)
    con.register(tmp, data)
    con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {_quote(tmp)}")


def _has_renames(table: Table) -> bool:
    names: dict[int, str] = {}
    for schema in table.metadata.schemas:
        for f in schema.fields:
            if names.setdefault(f.field_id, f.name) != f.name:
                return True
    return False


def _duck_type(t: pa.DataType) -> str:
    import duckdb

    con = duckdb.connect()
    try:
        rel = con.from_arrow(pa.table({"x": pa.nulls(0, t)}))
        return str(rel.types[0])
    finally:
        con.close()
