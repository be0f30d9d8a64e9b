"""The DuckDB views over Iceberg tables give the table's values, under names DuckDB can tell apart.

- F5 (probe findings): DuckDB matches names without regard to case, Iceberg does not. Columns ``id``,
  ``Id``, ``ID`` of one table read as NULL (the view looked names up in ``read_parquet``'s columns,
  which DuckDB had renamed), in ``icefield sql`` and in gates; tables ``raw.events`` and ``raw.Events``
  (and ``a.b.t`` / ``a_b.t``) were one view, the last registered winning. Now columns are read by field
  id and shown as ``id, Id_1, ID_2``; of two tables that would be one view, the one the SQL spells
  exactly is read, and SQL that cannot tell them apart is refused with both names.
- D4 (Spark interop findings): after a column rename that made no snapshot (Spark's ``ALTER TABLE ...
  RENAME COLUMN``), ``icefield sql`` answered to the old name until the next commit: the view used the
  snapshot's schema. Now it uses the table's current schema, on the direct Parquet path and on
  pyiceberg's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

from icefield.catalog import open_catalog
from icefield.cli import cli
from icefield.config import load_project
from icefield.errors import ConfigError, IcefieldError
from icefield.query import run_query


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    root = tmp_path / "p"
    res = CliRunner().invoke(cli, ["init", str(root)])
    assert res.exit_code == 0, res.output
    project = load_project(root, env={})
    catalog = open_catalog(project)
    yield project, catalog
    catalog.engine.dispose()


def _table(catalog: Any, name: str, data: pa.Table) -> Any:
    ns = tuple(name.split(".")[:-1])
    catalog.create_namespace_if_not_exists(ns)
    t = catalog.create_table(name, schema=data.schema)
    t.append(data)
    return catalog.load_table(name)


CASED = pa.table(
    [pa.array([1, None], pa.int64()), pa.array([2, 20], pa.int64()), pa.array([3, None], pa.int64())], names=["id", "Id", "ID"]
)


def test_columns_equal_but_for_case_keep_their_values(project: tuple[Any, Any]) -> None:
    p, catalog = project
    _table(catalog, "raw.t", CASED)
    got = run_query(p, "select * from raw.t order by Id_1", catalog)
    assert got.column_names == ["id", "Id_1", "ID_2"]
    assert got.to_pylist() == [{"id": 1, "Id_1": 2, "ID_2": 3}, {"id": None, "Id_1": 20, "ID_2": None}]
    assert run_query(p, "select sum(Id_1) as s from raw.t", catalog).to_pylist() == [{"s": 22}]


def test_pyiceberg_path_names_columns_equal_but_for_case_alike(project: tuple[Any, Any]) -> None:
    """A table whose files are mapped by name (a name mapping, as files added without field ids have) is
    read through pyiceberg: the same names and values."""
    p, catalog = project
    t = _table(catalog, "raw.t", CASED)
    t.transaction().set_properties({"schema.name-mapping.default": t.schema().name_mapping.model_dump_json()}).commit_transaction()
    got = run_query(p, "select * from raw.t order by Id_1", catalog)
    assert got.column_names == ["id", "Id_1", "ID_2"]
    assert got.to_pylist() == [{"id": 1, "Id_1": 2, "ID_2": 3}, {"id": None, "Id_1": 20, "ID_2": None}]


def test_gates_measure_the_column_they_name_not_its_case_twin(project: tuple[Any, Any]) -> None:
    from icefield.config.gates import parse_gates
    from icefield.quality.gates import GateContext, run_gates

    _, catalog = project
    t = _table(catalog, "raw.t", CASED)
    gates = parse_gates(
        [
            {"null_ratio": {"column": "Id", "max": 0}, "name": "Id"},
            {"null_ratio": {"column": "id", "max": 0}, "name": "id"},
            {"distinct_ratio": {"column": "ID", "min": 1}, "name": "ID"},
            {"sql": {"query": "select max(Id_1) from {table}", "min": 20, "max": 20}, "name": "sql"},
        ]
    )
    snap = t.current_snapshot()
    results = {r.check: r for r in run_gates(gates, GateContext(catalog, t, "raw.t", snap.snapshot_id, None, "main", "p", "run"))}
    assert (results["Id"].status, results["Id"].value) == ("pass", 0.0)
    assert (results["id"].status, results["id"].value) == ("fail", 0.5)
    assert (results["ID"].status, results["ID"].value) == ("pass", 1.0)
    assert (results["sql"].status, results["sql"].value) == ("pass", 20.0)


def test_tables_equal_but_for_case_are_never_mixed_up(project: tuple[Any, Any]) -> None:
    p, catalog = project
    _table(catalog, "raw.events", pa.table({"who": ["lower"]}))
    _table(catalog, "raw.Events", pa.table({"who": ["upper"]}))
    assert run_query(p, 'select who from raw."Events"', catalog).to_pylist() == [{"who": "upper"}]
    assert run_query(p, "select who from raw.Events", catalog).to_pylist() == [{"who": "upper"}]
    assert run_query(p, "select who from raw.events", catalog).to_pylist() == [{"who": "lower"}]
    for sql in ("select who from RAW.EVENTS", 'select * from raw.events join raw."Events" using (who)'):
        with pytest.raises(ConfigError, match=r"raw\.Events and raw\.events would both be the DuckDB view"):
            run_query(p, sql, catalog)


def test_a_nested_namespace_and_its_underscored_twin_are_never_mixed_up(project: tuple[Any, Any]) -> None:
    from icefield.query import open_views

    p, catalog = project
    nested = _table(catalog, "a.b.t", pa.table({"who": ["nested"]}))
    flat = _table(catalog, "a_b.t", pa.table({"who": ["flat"]}))
    assert run_query(p, "select who from a_b.t", catalog).to_pylist() == [{"who": "flat"}]
    # Bound together (a gate on a.b.t whose SQL reads a_b.t), they are refused, never one view.
    with pytest.raises(ConfigError, match=r"a\.b\.t and a_b\.t would both be the DuckDB view a_b\.t"):
        open_views([(("a", "b", "t"), nested, None), (("a_b", "t"), flat, None)])


@pytest.mark.parametrize("by_name", [False, True], ids=["parquet", "pyiceberg"])
def test_a_rename_without_a_snapshot_is_seen_at_once(project: tuple[Any, Any], by_name: bool) -> None:
    p, catalog = project
    t = _table(catalog, "shop.customers", pa.table({"id": pa.array([1, 2], pa.int64()), "city": ["Oslo", "Rome"]}))
    if by_name:  # read through pyiceberg's scan
        t.transaction().set_properties({"schema.name-mapping.default": t.schema().name_mapping.model_dump_json()}).commit_transaction()
        t = catalog.load_table("shop.customers")
    snapshots = len(t.metadata.snapshots)
    with t.update_schema() as update:
        update.rename_column("city", "town")
        update.add_column("zip", _string())
    assert len(catalog.load_table("shop.customers").metadata.snapshots) == snapshots  # no new snapshot
    got = run_query(p, "select id, town, zip from shop.customers order by id", catalog)
    assert got.to_pylist() == [{"id": 1, "town": "Oslo", "zip": None}, {"id": 2, "town": "Rome", "zip": None}]
    with pytest.raises(IcefieldError, match='"city" not found'):
        run_query(p, "select city from shop.customers", catalog)


def test_a_rename_without_a_snapshot_through_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "p"
    assert CliRunner().invoke(cli, ["init", str(root)]).exit_code == 0
    (root / "data" / "events" / "a.jsonl").write_text('{"id": 1, "v": "x"}\n')
    assert CliRunner().invoke(cli, ["--project", str(root), "run"]).exit_code == 0
    catalog = open_catalog(load_project(root, env={}))
    try:
        with catalog.load_table("raw.events").update_schema() as update:
            update.rename_column("v", "value")
    finally:
        catalog.engine.dispose()
    res = CliRunner().invoke(cli, ["--project", str(root), "sql", "select id, value from raw.events", "--format", "csv"])
    assert (res.exit_code, res.output.splitlines()) == (0, ["id,value", "1,x"])


def _string() -> Any:
    from pyiceberg.types import StringType

    return StringType()
