"""PostgreSQL as the catalog and as a source, against a real server (Debian's PostgreSQL, started natively)."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from icefield import load_project, run_pipeline
from icefield.catalog import open_catalog, sql_catalog

pytestmark = pytest.mark.postgres


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_postgres_catalog_holds_tables_in_the_jdbc_layout(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "proj"
    # The URL reaches the config through an environment override, the password through a secret reference.
    user_pw, host = pg_url.split("://", 1)[1].split("@", 1)
    user, password = user_pw.split(":", 1)
    monkeypatch.setenv("ICEFIELD_TEST_PG_PASSWORD", password)
    monkeypatch.setenv("ICEFIELD__CATALOG__URI", f"postgresql+psycopg2://{user}:${{env:ICEFIELD_TEST_PG_PASSWORD}}@{host}")
    _write(root, "icefield.yaml", "name: pgcat\ncatalog: {name: lake}\n")
    _write(root, "pipelines/ev.yaml", "name: ev\nsource: {type: files, path: 'data/*.csv'}\ntarget: {table: raw.ev, partition_by: [kind]}\n")
    _write(root, "data/a.csv", "id,kind,amount\n1,x,1.5\n2,y,2.5\n3,x,-1\n")
    project = load_project(root)
    first = run_pipeline(project, "ev")
    assert first.rows_committed == 3 and first.conserved
    again = run_pipeline(project, "ev")
    assert again.snapshots == []

    # Another catalog client on the same database (as Spark or Trino would be) sees the table.
    other = sql_catalog("lake", pg_url, project.warehouse_uri())
    rows = other.load_table("raw.ev").scan().to_arrow().sort_by("id").to_pylist()
    assert [(r["id"], r["kind"], r["amount"]) for r in rows] == [(1, "x", 1.5), (2, "y", 2.5), (3, "x", -1.0)]
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as con:
            layout = con.execute(
                sa.text("select catalog_name, table_namespace, table_name, iceberg_type from iceberg_tables order by table_name")
            ).fetchall()
            ns = con.execute(sa.text("select namespace, property_key from iceberg_namespace_properties")).fetchall()
    finally:
        engine.dispose()
    assert ("lake", "raw", "ev", "TABLE") in [tuple(r) for r in layout]
    assert ("raw", "exists") in [tuple(r) for r in ns]


def test_postgres_source_incremental_with_ties_updates_and_types(tmp_path: Path, pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    t0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
    try:
        with engine.begin() as con:
            con.execute(sa.text(
                "create table orders (order_id bigint primary key, customer text, amount numeric(10,2), "
                "paid boolean, placed date, updated_at timestamptz not null)"
            ))
            rows = [
                {"i": i, "c": f"c{i % 7}", "a": decimal.Decimal(f"{i}.25"), "p": i % 2 == 0,
                 "d": dt.date(2026, 10, 1 + i % 28), "u": t0 + dt.timedelta(seconds=i // 5)}
                for i in range(1, 61)
            ]
            con.execute(sa.text("insert into orders values (:i, :c, :a, :p, :d, :u)"), rows)
        root = tmp_path / "proj"
        _write(root, "icefield.yaml", "name: pgsrc\n")
        _write(
            root,
            "pipelines/orders.yaml",
            f"name: orders\nsource: {{type: sql, url: '{pg_url}', table: orders, cursor: updated_at}}\n"
            "target: {table: shop.orders, mode: merge, keys: [order_id], partition_by: ['day(updated_at)']}\n"
            "batch_size: 7\n",
        )
        project = load_project(root)
        first = run_pipeline(project, "orders")
        assert first.rows_committed == 60 and len(first.batches) == 9

        with engine.begin() as con:
            # New rows at the SAME timestamp as the last committed cursor value, updates, and new rows.
            last = t0 + dt.timedelta(seconds=60 // 5)
            con.execute(sa.text("insert into orders values (101, 'late', 1.00, true, '2026-10-02', :u)"), {"u": last})
            con.execute(sa.text("update orders set amount = amount + 100, updated_at = :u where order_id in (3, 30)"),
                        {"u": last + dt.timedelta(minutes=5)})
            con.execute(sa.text("insert into orders values (102, 'new', 2.00, false, '2026-10-03', :u)"),
                        {"u": last + dt.timedelta(minutes=6)})
        second = run_pipeline(project, "orders")
        assert second.rows_committed == 4
        assert run_pipeline(project, "orders").snapshots == []

        with engine.connect() as con:
            source = {r[0]: tuple(r) for r in con.execute(sa.text("select * from orders"))}
    finally:
        engine.dispose()
    table = open_catalog(project).load_table("shop.orders")
    landed = {r["order_id"]: r for r in table.scan().to_arrow().to_pylist()}
    assert set(landed) == set(source)
    for oid, (_i, customer, amount, paid, placed, updated) in source.items():
        row = landed[oid]
        assert (row["customer"], row["amount"], row["paid"], row["placed"]) == (customer, amount, paid, placed), oid
        assert row["updated_at"] == updated.astimezone(dt.UTC), oid
    schema = {f.name: str(f.field_type) for f in table.schema().fields}
    assert schema == {
        "order_id": "long", "customer": "string", "amount": "decimal(10, 2)", "paid": "boolean",
        "placed": "date", "updated_at": "timestamptz",
    }


def test_a_refused_catalog_login_is_configuration_and_an_unreachable_server_transient(tmp_path: Path, pg_url: str) -> None:
    """F19: every catalog failure was a ConfigError (exit 2), an unreachable server included; a wrong
    password or a missing database cannot be retried away (2), a server that does not answer can (75)."""
    from icefield.errors import ConfigError, TransientError

    user_pw, host = pg_url.split("://", 1)[1].split("@", 1)
    user = user_pw.split(":", 1)[0]
    hostport, _, _db = host.partition("/")
    wrong_password = f"postgresql+psycopg2://{user}:not-the-password@{host}"
    with pytest.raises(ConfigError, match="password authentication failed") as info:
        sql_catalog("lake", wrong_password, (tmp_path / "wh").as_uri())
    assert "not-the-password" not in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        sql_catalog("lake", pg_url.rsplit("/", 1)[0] + "/no_such_database", (tmp_path / "wh").as_uri())
    with pytest.raises(TransientError, match="unreachable"):
        sql_catalog("lake", f"postgresql+psycopg2://{user}:x@{hostport.split(':')[0]}:1/lake", (tmp_path / "wh").as_uri())
