"""The sql source through ``run_pipeline`` on a real SQLite catalog, reading a SQLite database built with
the standard library: incremental by cursor (ties at the last value, across batch boundaries and
across runs), merge of updated rows, and full loads in overwrite mode."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from icefield import ConfigError
from icefield.iceberg.history import read_position

SCHEMA = "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount NUMERIC(10,2), updated_at DATETIME)"


def ts(n: int) -> str:
    """The n-th hour of 2024-01-01 as SQLite stores a DATETIME."""
    return f"2024-01-01 {n:02d}:00:00"


class SourceDb:
    """A SQLite database in ``tmp_path`` that tests change between runs."""

    def __init__(self, path: Path, schema: str = SCHEMA) -> None:
        self.path = path
        self.execute(schema)

    def execute(self, sql: str, *params: Any) -> None:
        con = sqlite3.connect(self.path)
        try:
            con.execute(sql, params)
            con.commit()
        finally:
            con.close()

    def insert(self, rows: list[tuple[Any, ...]], table: str = "orders") -> None:
        con = sqlite3.connect(self.path)
        try:
            marks = ",".join("?" * len(rows[0]))
            con.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
            con.commit()
        finally:
            con.close()


def sql_pipeline(url: str, target: dict[str, Any], batch_size: int | None = None, **source: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": {"type": "sql", "url": url, "table": "orders", **source}, "target": target}
    if batch_size:
        body["batch_size"] = batch_size
    return body


@pytest.fixture
def source_db(tmp_path: Path) -> SourceDb:
    return SourceDb(tmp_path / "source.db")


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in rows]


def assert_each_once(rows: list[dict[str, Any]], expected: list[int]) -> None:
    counts = Counter(ids(rows))
    doubled = sorted(k for k, n in counts.items() if n > 1)
    missing = sorted(set(expected) - set(counts))
    assert (doubled, missing) == ([], [])
    assert sorted(counts) == sorted(expected)


# ------------------------------------------------------------------ incremental by cursor


def test_ties_at_the_cursor_across_batch_boundaries_and_runs(lake, source_db):
    # Seven rows share the hour 02:00; with batch_size 3 they straddle two batch boundaries.
    source_db.insert([(i, f"c{i}", 10, ts(1 if i == 1 else 2 if i <= 8 else 3)) for i in range(1, 11)])
    lk = lake({"orders": sql_pipeline(f"sqlite:///{source_db.path}", {"table": "shop.orders"}, 3, cursor="updated_at")})
    first = lk.run("orders")
    assert [b.rows_in for b in first.batches] == [3, 3, 3, 1]
    assert first.conserved
    assert_each_once(lk.rows("shop.orders"), list(range(1, 11)))
    assert read_position(lk.table("shop.orders"), "orders")["cursor"] == ts(3)

    # Rows committed later with the SAME cursor value as the last committed one, plus a newer one.
    source_db.insert([(11, "late", 1, ts(3)), (12, "late", 2, ts(3)), (13, "new", 3, ts(4))])
    second = lk.run("orders")
    assert second.rows_committed == 3
    assert_each_once(lk.rows("shop.orders"), list(range(1, 14)))

    before = lk.snapshot_count("shop.orders")
    third = lk.run("orders")
    assert third.batches == []
    assert lk.snapshot_count("shop.orders") == before


def test_a_run_stopped_inside_a_tie_resumes_without_loss_or_double(lake, source_db):
    source_db.insert([(i, "c", 1, ts(5)) for i in range(1, 9)])  # every row has the same cursor value
    lk = lake({"orders": sql_pipeline(f"sqlite:///{source_db.path}", {"table": "shop.orders"}, 3, cursor="updated_at")})
    partial = lk.run("orders", max_batches=1)
    assert partial.rows_committed == 3
    source_db.insert([(9, "c", 1, ts(5))])
    rest = lk.run("orders")
    assert rest.rows_committed == 6
    assert_each_once(lk.rows("shop.orders"), list(range(1, 10)))


def test_rows_without_a_cursor_value_are_loaded_once(lake, source_db):
    """NULL cursors sort first; until a non-null value is committed, such rows are told apart by their
    fingerprints, so new NULL-cursor rows are loaded and the earlier ones are not loaded again."""
    source_db.insert([(1, "c", 1, None), (2, "c", 1, None), (3, "c", 1, None)])
    lk = lake({"orders": sql_pipeline(f"sqlite:///{source_db.path}", {"table": "shop.orders"}, 2, cursor="updated_at")})
    lk.run("orders")
    lk.run("orders")
    assert_each_once(lk.rows("shop.orders"), [1, 2, 3])
    source_db.insert([(4, "c", 1, None)])
    lk.run("orders")
    assert_each_once(lk.rows("shop.orders"), [1, 2, 3, 4])
    source_db.insert([(5, "c", 1, ts(1)), (6, "c", 1, None)])
    lk.run("orders")
    assert_each_once(lk.rows("shop.orders"), [1, 2, 3, 4, 5, 6])


def test_initial_cursor_skips_older_rows(lake, source_db):
    source_db.insert([(1, "c", 1, ts(1)), (2, "c", 1, ts(2)), (3, "c", 1, ts(3))])
    body = sql_pipeline(f"sqlite:///{source_db.path}", {"table": "shop.orders"}, cursor="updated_at", initial_cursor=ts(2))
    lk = lake({"orders": body})
    lk.run("orders")
    assert_each_once(lk.rows("shop.orders"), [2, 3])


def test_integer_cursor_with_a_query_source(lake, source_db):
    source_db.insert([(i, "c", i, ts(1)) for i in range(1, 8)])
    body = {
        "source": {
            "type": "sql",
            "url": "sqlite:///source.db",  # relative to the project folder
            "query": "SELECT id, customer, amount FROM orders WHERE customer = 'c'",
            "cursor": "id",
        },
        "target": {"table": "shop.orders"},
        "batch_size": 3,
    }
    lk = lake({"orders": body})
    (lk.root / "source.db").write_bytes(source_db.path.read_bytes())
    lk.run("orders")
    assert_each_once(lk.rows("shop.orders"), list(range(1, 8)))
    con = sqlite3.connect(lk.root / "source.db")
    con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", [(8, "c", 8, ts(1)), (9, "other", 9, ts(1))])
    con.commit()
    con.close()
    lk.run("orders")
    assert_each_once(lk.rows("shop.orders"), list(range(1, 9)))


def test_updated_rows_with_a_bumped_cursor_replace_the_old_version_in_merge_mode(lake, source_db):
    source_db.insert([(i, f"v1-{i}", 10 * i, ts(1)) for i in range(1, 6)])
    target = {"table": "shop.orders", "mode": "merge", "keys": ["id"]}
    lk = lake({"orders": sql_pipeline(f"sqlite:///{source_db.path}", target, 2, cursor="updated_at")})
    lk.run("orders")
    source_db.execute("UPDATE orders SET customer = 'v2-' || id, updated_at = ? WHERE id IN (2, 4)", ts(2))
    source_db.insert([(6, "v1-6", 60, ts(2))])
    res = lk.run("orders")
    assert res.rows_committed == 3
    rows = lk.rows("shop.orders", "id")
    assert [(r["id"], r["customer"]) for r in rows] == [
        (1, "v1-1"),
        (2, "v2-2"),
        (3, "v1-3"),
        (4, "v2-4"),
        (5, "v1-5"),
        (6, "v1-6"),
    ]


def test_an_update_that_keeps_the_last_cursor_value_is_not_lost_in_merge_mode(lake, source_db):
    """A second update within the cursor's resolution (same second) leaves the cursor at the value already
    committed: the row has new content and must be loaded again, not skipped as seen."""
    source_db.insert([(1, "first", 10, ts(1)), (2, "first", 20, ts(1))])
    target = {"table": "shop.orders", "mode": "merge", "keys": ["id"]}
    lk = lake({"orders": sql_pipeline(f"sqlite:///{source_db.path}", target, cursor="updated_at")})
    lk.run("orders")
    source_db.execute("UPDATE orders SET customer = 'second' WHERE id = 2")
    lk.run("orders")
    assert [(r["id"], r["customer"]) for r in lk.rows("shop.orders", "id")] == [(1, "first"), (2, "second")]


def test_rows_the_source_types_wrongly_are_quarantined_with_their_key(lake, source_db):
    # SQLite keeps whatever it is given: text in an INTEGER-affinity column, a fraction in NUMERIC(10,2).
    source_db.execute("CREATE TABLE items (id INTEGER, qty INTEGER, price NUMERIC(10,2), seen DATETIME)")
    source_db.insert(
        [(1, 5, 9.99, ts(1)), (2, "five", 1.5, ts(1)), (3, 7, 1.005, ts(1)), (4, 8, 2, "yesterday")], table="items"
    )
    body = sql_pipeline(f"sqlite:///{source_db.path}", {"table": "shop.items", "mode": "merge", "keys": ["id"]})
    body["source"]["table"] = "items"
    lk = lake({"items": body})
    res = lk.run("items")
    assert (res.rows_in, res.rows_committed, res.rows_quarantined) == (4, 1, 3)
    assert ids(lk.rows("shop.items")) == [1]
    quarantine = lk.rows("shop.items__quarantine", "source")
    assert [q["source"] for q in quarantine] == ["items id=2", "items id=3", "items id=4"]
    assert "column 'qty' value 'five'" in quarantine[0]["reason"]
    assert "column 'price' value 1.005" in quarantine[1]["reason"]
    assert "column 'seen' value 'yesterday'" in quarantine[2]["reason"]


def test_cursor_that_is_not_a_column_is_a_config_error(lake, source_db):
    source_db.insert([(1, "c", 1, ts(1))])
    lk = lake({"orders": sql_pipeline(f"sqlite:///{source_db.path}", {"table": "shop.orders"}, cursor="changed")})
    with pytest.raises(ConfigError, match=r"source.cursor: column 'changed' is not in the source"):
        lk.run("orders")


def test_missing_source_database_is_a_config_error(lake, tmp_path):
    lk = lake({"orders": sql_pipeline(f"sqlite:///{tmp_path / 'nope.db'}", {"table": "shop.orders"}, cursor="id")})
    with pytest.raises(ConfigError, match=r"source.url: the SQLite database '.*nope.db' does not exist; fix the path"):
        lk.run("orders")


# ------------------------------------------------------------------ full loads


def test_full_load_in_append_mode_is_refused(lake, source_db):
    lk = lake({"orders": sql_pipeline(f"sqlite:///{source_db.path}", {"table": "shop.orders"})})
    with pytest.raises(ConfigError, match=r"without 'cursor' is a full load"):
        lk.run("orders")


def test_full_load_in_overwrite_mode(lake, source_db):
    source_db.insert([(i, "a", i, ts(1)) for i in range(1, 5)])
    lk = lake({"orders": sql_pipeline(f"sqlite:///{source_db.path}", {"table": "shop.orders", "mode": "overwrite"})})
    first = lk.run("orders")
    assert first.rows_committed == 4
    snapshots = lk.snapshot_count("shop.orders")

    again = lk.run("orders")  # same content: nothing committed
    assert again.rows_committed == 0
    assert lk.snapshot_count("shop.orders") == snapshots
    assert ids(lk.rows("shop.orders", "id")) == [1, 2, 3, 4]

    source_db.execute("DELETE FROM orders WHERE id = 1")
    source_db.execute("UPDATE orders SET customer = 'b' WHERE id = 2")
    source_db.insert([(5, "a", 5, ts(2))])
    changed = lk.run("orders")
    assert changed.rows_committed == 4
    assert [(r["id"], r["customer"]) for r in lk.rows("shop.orders", "id")] == [(2, "b"), (3, "a"), (4, "a"), (5, "a")]


def test_full_load_whose_content_changes_back_is_reloaded(lake, source_db):
    source_db.insert([(1, "a", 1, ts(1))])
    lk = lake({"orders": sql_pipeline(f"sqlite:///{source_db.path}", {"table": "shop.orders", "mode": "overwrite"})})
    lk.run("orders")
    source_db.execute("UPDATE orders SET customer = 'b'")
    lk.run("orders")
    source_db.execute("UPDATE orders SET customer = 'a'")  # the first content again
    lk.run("orders")
    assert [r["customer"] for r in lk.rows("shop.orders")] == ["a"]
    snapshots = lk.snapshot_count("shop.orders")
    assert lk.run("orders").rows_committed == 0
    assert lk.snapshot_count("shop.orders") == snapshots
