"""Backfill by date window from a real PostgreSQL source: the window is cut in the query on a ``timestamptz``
column (compared in UTC whatever the session's time zone) and on a ``date`` column; a backfill of three
days run twice gives the same table, and a regular run in between loses nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from icefield import Window, load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.iceberg.history import read_position

pytestmark = pytest.mark.postgres

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _insert(engine: sa.Engine, ids: range) -> None:
    """Orders ``ids``, one every 5 hours from 2026-01-01T00:00Z (the 0th at midnight), placed on the same UTC day."""
    rows = [{"i": i, "a": i * 10, "u": T0 + dt.timedelta(hours=5 * i), "d": (T0 + dt.timedelta(hours=5 * i)).date()} for i in ids]
    with engine.begin() as con:
        con.execute(sa.text("insert into orders values (:i, :a, :u, :d)"), rows)


def _rows(catalog: Any, table: str) -> list[dict[str, Any]]:
    return sorted(catalog.load_table(table).scan().to_arrow().to_pylist(), key=lambda r: r["order_id"])


def _hash(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(rows, default=str, sort_keys=True).encode()).hexdigest()


def test_a_postgres_backfill_of_three_days_twice_with_a_regular_run_between(tmp_path: Path, pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as con:
            # Sessions of this database are not in UTC: a window bound must still be read as UTC.
            con.execute(sa.text(f"alter database {sa.engine.make_url(pg_url).database} set timezone to 'Asia/Tokyo'"))
            con.execute(sa.text("create table orders (order_id bigint primary key, amount bigint, updated_at timestamptz not null, placed date not null)"))
        _insert(engine, range(0, 30))  # 2026-01-01T00:00Z .. 2026-01-07T01:00Z; the window below holds 5 .. 19
        root = tmp_path / "proj"
        _write(root, "icefield.yaml", "name: pgwin\n")
        source = f"{{type: sql, url: '{pg_url}', table: orders, cursor: updated_at}}"
        _write(root, "pipelines/orders.yaml", f"name: orders\nsource: {source}\ntarget: {{table: shop.orders}}\nwindow: {{column: updated_at, size: 1d}}\nbatch_size: 7\n")
        _write(root, "pipelines/placed.yaml", f"name: placed\nsource: {source}\ntarget: {{table: shop.placed}}\nwindow: {{column: placed}}\n")
        project = load_project(root)
        catalog = open_catalog(project)
        for name in ("orders", "placed"):
            run_pipeline(project, name, catalog=catalog)
        with engine.begin() as con:
            con.execute(sa.text("update orders set amount = -1 where order_id in (5, 14, 25)"))  # 5, 14 in the window; 25 after it
            con.execute(sa.text("delete from orders where order_id = 10"))

        window = Window(dt.date(2026, 1, 2), dt.date(2026, 1, 5))
        placed = []
        for n in range(2):
            position = read_position(catalog.load_table("shop.orders"), "orders")
            for name, table in (("orders", "shop.orders"), ("placed", "shop.placed")):
                result = run_pipeline(project, name, catalog=catalog, window=window)
                assert result.status == "success" and len(result.batches) == 3 and result.rows_committed == 14
                rows = _rows(catalog, table)
                amounts = {r["order_id"]: r["amount"] for r in rows}
                assert amounts[5] == -1 and amounts[14] == -1 and 10 not in amounts  # the window: as the source has it now
                assert amounts[25] == 250 and amounts[4] == 40  # outside the window: as loaded
                assert len(rows) == len(amounts) == (29 if table == "shop.placed" or n == 0 else 32)
                if table == "shop.placed":
                    placed.append((len(rows), _hash(rows)))
            assert read_position(catalog.load_table("shop.orders"), "orders") == position
            if n == 0:
                # A regular run between the backfills: new orders after its position, which the backfill left alone.
                _insert(engine, range(30, 33))
                assert run_pipeline(project, "orders", catalog=catalog).rows_committed == 3
        assert placed[0] == placed[1]
        assert sorted(r["order_id"] for r in _rows(catalog, "shop.orders")) == [i for i in range(33) if i != 10]
        assert run_pipeline(project, "orders", catalog=catalog).rows_committed == 0
    finally:
        engine.dispose()
