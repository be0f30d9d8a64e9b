"""Tests of the sample-shop generator: determinism, reported counts, ties, mutate and change_rates."""

from __future__ import annotations

import contextlib
import csv
import json
import sqlite3
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from icefield.examples.shop.generate import (
    BAD_CLICKSTREAM_LINES,
    CLICKSTREAM_FILES,
    CLICKSTREAM_LINES_PER_FILE,
    CURRENCIES,
    EVENT_TYPES,
    LATE_EVENTS,
    RANGE_END,
    RANGE_START,
    STATUSES,
    GenerateResult,
    change_rates,
    create,
    mutate,
)

TABLES = {
    "customers": "customer_id",
    "orders": "order_id",
    "order_items": "order_id, line_no",
}
PATH_FIELDS = {"data_dir", "db_path", "clickstream_dir", "rates_path", "late_file", "path"}


# ----------------------------------------------------------------------------------------------- helpers


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.execute(sql, params).fetchall())


def scalar(db: Path, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return query(db, sql, params)[0][0]


def table_rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {table: query(db, f"SELECT * FROM {table} ORDER BY {key}") for table, key in TABLES.items()}


def without_paths(result: object) -> dict[str, Any]:
    return {k: v for k, v in asdict(result).items() if k not in PATH_FIELDS}  # type: ignore[call-overload]


def is_good_event(line: str) -> bool:
    """An independent, strict reading of the clickstream contract."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return False
    if not isinstance(event, dict) or set(event) != {"event_id", "ts", "customer_id", "type", "url"}:
        return False
    customer_id = event["customer_id"]
    if not isinstance(customer_id, int) or isinstance(customer_id, bool):
        return False
    if not isinstance(event["event_id"], str) or not isinstance(event["url"], str):
        return False
    if event["type"] not in EVENT_TYPES:
        return False
    try:
        datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S")
    except (TypeError, ValueError):
        return False
    return True


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def event_ts(line: str) -> datetime:
    return datetime.strptime(json.loads(line)["ts"], "%Y-%m-%dT%H:%M:%S")


def sql_ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%d %H:%M:%S")


def clickstream_bytes(result: GenerateResult) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(result.clickstream_dir.iterdir())}


@pytest.fixture
def shop(tmp_path: Path) -> GenerateResult:
    return create(tmp_path / "project")


# ----------------------------------------------------------------------------------------------- create


def test_create_is_deterministic(tmp_path: Path) -> None:
    a = create(tmp_path / "a")
    b = create(tmp_path / "b")
    assert without_paths(a) == without_paths(b)
    assert a.rates_path.read_bytes() == b.rates_path.read_bytes()
    assert clickstream_bytes(a) == clickstream_bytes(b)
    assert table_rows(a.db_path) == table_rows(b.db_path)


def test_other_seed_gives_other_data(tmp_path: Path) -> None:
    a = create(tmp_path / "a", seed=7)
    b = create(tmp_path / "b", seed=8)
    assert table_rows(a.db_path)["orders"] != table_rows(b.db_path)["orders"]
    assert clickstream_bytes(a) != clickstream_bytes(b)
    assert a.rates_path.read_bytes() != b.rates_path.read_bytes()


def test_create_writes_the_expected_layout(shop: GenerateResult, tmp_path: Path) -> None:
    data = tmp_path / "project" / "data"
    assert shop.data_dir == data
    assert shop.db_path == data / "shop.db"
    assert shop.rates_path == data / "rates" / "rates.csv"
    assert sorted(p.name for p in shop.clickstream_dir.iterdir()) == list(shop.clickstream_files)
    assert shop.clickstream_files == ("events-0001.jsonl", "events-0002.jsonl", "events-0003.jsonl")


def test_declared_column_types(shop: GenerateResult) -> None:
    def types(table: str) -> dict[str, str]:
        return {row[1]: row[2] for row in query(shop.db_path, f"PRAGMA table_info({table})")}

    assert types("customers") == {
        "customer_id": "INTEGER",
        "name": "TEXT",
        "email": "TEXT",
        "country": "TEXT",
        "created_at": "TIMESTAMP",
        "updated_at": "TIMESTAMP",
    }
    assert types("orders") == {
        "order_id": "INTEGER",
        "customer_id": "INTEGER",
        "status": "TEXT",
        "amount": "DECIMAL(10,2)",
        "currency": "TEXT",
        "created_at": "TIMESTAMP",
        "updated_at": "TIMESTAMP",
    }
    assert types("order_items") == {
        "order_id": "INTEGER",
        "line_no": "INTEGER",
        "sku": "TEXT",
        "quantity": "INTEGER",
        "unit_price": "DECIMAL(10,2)",
        "updated_at": "TIMESTAMP",
    }
    pk = {row[1]: row[5] for row in query(shop.db_path, "PRAGMA table_info(order_items)") if row[5]}
    assert pk == {"order_id": 1, "line_no": 2}


def test_database_counts_match_the_result(shop: GenerateResult) -> None:
    db = shop.db_path
    assert scalar(db, "SELECT COUNT(*) FROM customers") == shop.customers == 200
    assert scalar(db, "SELECT COUNT(*) FROM orders") == shop.orders == 2000
    assert scalar(db, "SELECT COUNT(*) FROM order_items") == shop.order_items
    assert shop.order_items > shop.orders  # 1-4 lines per order
    assert (
        scalar(db, "SELECT COUNT(*) FROM orders WHERE order_id NOT IN (SELECT order_id FROM order_items)")
        == 0
    )
    assert (
        scalar(db, "SELECT COUNT(*) FROM order_items WHERE order_id NOT IN (SELECT order_id FROM orders)")
        == 0
    )
    assert (
        scalar(db, "SELECT COUNT(*) FROM orders WHERE customer_id NOT IN (SELECT customer_id FROM customers)")
        == 0
    )


def test_exactly_three_bad_orders_are_reported(shop: GenerateResult) -> None:
    bad = query(
        shop.db_path, "SELECT order_id, amount FROM orders WHERE amount IS NULL OR amount < 0 ORDER BY 1"
    )
    assert tuple(order_id for order_id, _ in bad) == shop.bad_order_ids
    assert len(bad) == 3
    amounts = [amount for _, amount in bad]
    assert amounts.count(None) == 1
    assert sorted(a for a in amounts if a is not None) == [-12.5, -5.0]


def test_good_amounts_are_the_sum_of_their_items(shop: GenerateResult) -> None:
    rows = query(
        shop.db_path,
        "SELECT o.order_id, o.amount, SUM(i.quantity * i.unit_price) FROM orders o "
        "JOIN order_items i USING (order_id) WHERE o.amount >= 0 GROUP BY o.order_id",
    )
    assert len(rows) == shop.orders - 3
    assert all(round(amount, 2) == round(total, 2) for _, amount, total in rows)


def test_values_and_timestamps_stay_in_their_domains(shop: GenerateResult) -> None:
    db = shop.db_path
    assert {s for (s,) in query(db, "SELECT DISTINCT status FROM orders")} == set(STATUSES)
    assert {c for (c,) in query(db, "SELECT DISTINCT currency FROM orders")} == set(CURRENCIES)
    stamps = [
        value
        for sql in (
            "SELECT created_at, updated_at FROM customers",
            "SELECT created_at, updated_at FROM orders",
            "SELECT updated_at, updated_at FROM order_items",
        )
        for row in query(db, sql)
        for value in row
    ]
    assert all(isinstance(v, str) and len(v) == 19 for v in stamps)
    parsed = [sql_ts(v) for v in stamps]
    assert all(RANGE_START <= v < RANGE_END for v in parsed)
    assert datetime(2026, 10, 18) == RANGE_START and datetime(2026, 11, 1) == RANGE_END
    assert shop.range_start == "2026-10-18 00:00:00" and shop.range_end == "2026-11-01 00:00:00"
    # Dates spread over the whole range, and no row was updated before it was created.
    assert len({v.date() for v in parsed}) == 14
    assert scalar(db, "SELECT COUNT(*) FROM orders WHERE updated_at < created_at") == 0
    assert scalar(db, "SELECT COUNT(*) FROM customers WHERE updated_at < created_at") == 0


def test_orders_tie_on_updated_at(shop: GenerateResult) -> None:
    db = shop.db_path
    tied = query(db, "SELECT updated_at, COUNT(*) FROM orders GROUP BY updated_at HAVING COUNT(*) > 1")
    assert len(tied) == shop.tied_order_updated_at_values
    assert len(tied) >= 10
    newest = scalar(db, "SELECT MAX(updated_at) FROM orders")
    assert newest == shop.max_order_updated_at
    at_newest = scalar(db, "SELECT COUNT(*) FROM orders WHERE updated_at = ?", (newest,))
    assert at_newest == shop.orders_at_max_updated_at >= 3


def test_clickstream_counts_match_the_result(shop: GenerateResult) -> None:
    good = bad = 0
    bad_positions: list[tuple[str, int]] = []
    for name in shop.clickstream_files:
        lines = read_lines(shop.clickstream_dir / name)
        assert len(lines) == CLICKSTREAM_LINES_PER_FILE
        for number, line in enumerate(lines, start=1):
            if is_good_event(line):
                good += 1
            else:
                bad += 1
                bad_positions.append((name, number))
    assert shop.clickstream_lines == good + bad == CLICKSTREAM_FILES * CLICKSTREAM_LINES_PER_FILE
    assert shop.clickstream_good_lines == good
    assert shop.clickstream_bad_lines == bad == BAD_CLICKSTREAM_LINES == 2
    assert bad_positions == [(shop.clickstream_bad_file, n) for n in shop.clickstream_bad_line_numbers]

    bad_lines = read_lines(shop.clickstream_dir / shop.clickstream_bad_file)
    first, second = (bad_lines[n - 1] for n in shop.clickstream_bad_line_numbers)
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)
    assert first.startswith('{"event_id": ')
    assert json.loads(second)["customer_id"] == "12abc"


def test_clickstream_events_are_well_formed(shop: GenerateResult) -> None:
    good = [
        line
        for name in shop.clickstream_files
        for line in read_lines(shop.clickstream_dir / name)
        if is_good_event(line)
    ]
    events = [json.loads(line) for line in good]
    assert len({e["event_id"] for e in events}) == len(events)
    assert {e["type"] for e in events} == set(EVENT_TYPES)
    assert all(1 <= e["customer_id"] <= shop.customers for e in events)
    assert all(RANGE_START <= event_ts(line) < RANGE_END for line in good)
    assert all("T" in e["ts"] and not e["ts"].endswith("Z") for e in events)


def test_rates_cover_every_day_and_currency(shop: GenerateResult) -> None:
    with shop.rates_path.open(encoding="utf-8", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    assert header == ["date", "currency", "rate_to_eur"]
    assert len(rows) == shop.rates_rows == 14 * 3
    days = sorted({row[0] for row in rows})
    assert days[0] == "2026-10-18" and days[-1] == "2026-10-31" and len(days) == 14
    assert {(d, c) for d, c, _ in rows} == {(d, c) for d in days for c in CURRENCIES}
    assert all(float(rate) == 1.0 for _, c, rate in rows if c == "EUR")
    assert all(0.5 < float(rate) < 2.0 and float(rate) != 1.0 for _, c, rate in rows if c != "EUR")


def test_create_again_recreates_from_scratch(tmp_path: Path) -> None:
    project = tmp_path / "project"
    first = create(project)
    before = table_rows(first.db_path)
    mutate(project)
    (first.data_dir / "stray.txt").write_text("left over", encoding="utf-8")
    second = create(project)
    assert not (second.data_dir / "stray.txt").exists()
    assert not (second.clickstream_dir / "events-0004.jsonl").exists()
    assert table_rows(second.db_path) == before
    assert without_paths(second) == without_paths(first)


def test_create_respects_the_requested_sizes(tmp_path: Path) -> None:
    small = create(tmp_path / "small", seed=3, customers=5, orders=40)
    assert scalar(small.db_path, "SELECT COUNT(*) FROM customers") == 5
    assert scalar(small.db_path, "SELECT COUNT(*) FROM orders") == 40
    assert len(small.bad_order_ids) == 3
    assert small.orders_at_max_updated_at >= 3


@pytest.mark.parametrize(("customers", "orders"), [(0, 2000), (200, 9)])
def test_create_rejects_too_small_sizes(tmp_path: Path, customers: int, orders: int) -> None:
    with pytest.raises(ValueError):
        create(tmp_path, customers=customers, orders=orders)


# ----------------------------------------------------------------------------------------------- mutate


def test_mutate_changes_exactly_what_it_reports(shop: GenerateResult, tmp_path: Path) -> None:
    db = shop.db_path
    before = table_rows(db)
    before_clicks = clickstream_bytes(shop)
    before_rates = shop.rates_path.read_bytes()
    newest_before = max(
        scalar(db, f"SELECT MAX(updated_at) FROM {table}") for table in ("customers", "orders", "order_items")
    )

    result = mutate(tmp_path / "project")
    after = table_rows(db)

    # Row counts.
    assert len(result.inserted_order_ids) == 50 and len(result.updated_order_ids) == 20
    assert result.orders == len(after["orders"]) == len(before["orders"]) + 50
    assert (
        result.order_items == len(after["order_items"]) == len(before["order_items"]) + result.inserted_items
    )
    assert result.customers == len(after["customers"]) == len(before["customers"]) + 1

    # Orders: inserted ones are new, updated ones changed status and moved forward, the rest is untouched.
    old_orders = {row[0]: row for row in before["orders"]}
    new_orders = {row[0]: row for row in after["orders"]}
    assert set(new_orders) - set(old_orders) == set(result.inserted_order_ids)
    changed = {oid for oid in old_orders if old_orders[oid] != new_orders[oid]}
    assert changed == set(result.updated_order_ids)
    assert not changed & set(shop.bad_order_ids)
    for oid in result.updated_order_ids:
        old, new = old_orders[oid], new_orders[oid]
        assert new[2] != old[2] and new[2] in STATUSES  # status
        assert sql_ts(new[6]) > sql_ts(old[6])  # updated_at
        assert new[6] > newest_before and new[6] >= result.window_start
        assert (new[0], new[1], new[3], new[4], new[5]) == (old[0], old[1], old[3], old[4], old[5])
    for oid in result.inserted_order_ids:
        row = new_orders[oid]
        assert row[3] is not None and row[3] >= 0
        assert row[6] > newest_before and row[6] >= row[5] >= result.window_start

    # Items: only the new orders' lines were added.
    old_items, new_items = set(before["order_items"]), set(after["order_items"])
    assert old_items <= new_items
    added = new_items - old_items
    assert len(added) == result.inserted_items
    assert {row[0] for row in added} == set(result.inserted_order_ids)
    assert all(row[5] > newest_before for row in added)

    # Customers: one inserted, one updated with a later updated_at.
    old_customers = {row[0]: row for row in before["customers"]}
    new_customers = {row[0]: row for row in after["customers"]}
    assert set(new_customers) - set(old_customers) == {result.inserted_customer_id}
    changed_customers = {cid for cid in old_customers if old_customers[cid] != new_customers[cid]}
    assert changed_customers == {result.updated_customer_id}
    old_c, new_c = old_customers[result.updated_customer_id], new_customers[result.updated_customer_id]
    assert new_c[2] != old_c[2] and sql_ts(new_c[5]) > sql_ts(old_c[5])
    assert new_customers[result.inserted_customer_id][5] > newest_before

    # The newest updated_at after the mutation is still shared.
    assert result.max_order_updated_at == scalar(db, "SELECT MAX(updated_at) FROM orders")
    assert result.orders_at_max_updated_at >= 3
    assert result.orders_at_max_updated_at == scalar(
        db, "SELECT COUNT(*) FROM orders WHERE updated_at = ?", (result.max_order_updated_at,)
    )

    # Files: one late file inside the original range; everything else unchanged.
    assert result.late_file == shop.clickstream_dir / "events-0004.jsonl"
    after_clicks = clickstream_bytes(shop)
    assert set(after_clicks) == set(before_clicks) | {"events-0004.jsonl"}
    assert {k: after_clicks[k] for k in before_clicks} == before_clicks
    late = read_lines(result.late_file)
    assert len(late) == result.late_lines == LATE_EVENTS
    assert all(is_good_event(line) for line in late)
    assert all(RANGE_START <= event_ts(line) < RANGE_END for line in late)
    old_ids = {
        json.loads(line)["event_id"]
        for name in shop.clickstream_files
        for line in read_lines(shop.clickstream_dir / name)
        if is_good_event(line)
    }
    assert not {json.loads(line)["event_id"] for line in late} & old_ids
    assert shop.rates_path.read_bytes() == before_rates


def test_mutate_is_deterministic(tmp_path: Path) -> None:
    a, b = create(tmp_path / "a"), create(tmp_path / "b")
    ma, mb = mutate(tmp_path / "a"), mutate(tmp_path / "b")
    assert without_paths(ma) == without_paths(mb)
    assert table_rows(a.db_path) == table_rows(b.db_path)
    assert ma.late_file.read_bytes() == mb.late_file.read_bytes()


def test_mutate_twice_keeps_moving_forward(shop: GenerateResult, tmp_path: Path) -> None:
    first = mutate(tmp_path / "project")
    second = mutate(tmp_path / "project")
    assert second.late_file.name == "events-0005.jsonl"
    assert second.window_start > first.max_order_updated_at
    assert min(second.inserted_order_ids) == max(first.inserted_order_ids) + 1
    assert second.inserted_customer_id == first.inserted_customer_id + 1
    assert first.late_file.read_bytes() != second.late_file.read_bytes()
    assert second.orders == shop.orders + 100


def test_mutate_without_a_shop_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        mutate(tmp_path)


def test_mutate_rejects_impossible_counts(shop: GenerateResult, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        mutate(tmp_path / "project", new_orders=-1)
    with pytest.raises(ValueError):
        mutate(tmp_path / "project", updated_orders=shop.orders)
    assert not (shop.clickstream_dir / "events-0004.jsonl").exists()
    assert scalar(shop.db_path, "SELECT COUNT(*) FROM orders") == shop.orders


# ----------------------------------------------------------------------------------------------- rates


def test_change_rates_changes_exactly_one_rate(shop: GenerateResult, tmp_path: Path) -> None:
    before = shop.rates_path.read_bytes()
    result = change_rates(tmp_path / "project")
    after = shop.rates_path.read_bytes()
    assert after != before
    old_lines = before.decode("utf-8").splitlines()
    new_lines = after.decode("utf-8").splitlines()
    assert len(old_lines) == len(new_lines) == result.rows + 1
    diff = [(o, n) for o, n in zip(old_lines, new_lines, strict=True) if o != n]
    day = result.day.isoformat()
    assert diff == [
        (f"{day},{result.currency},{result.old_rate}", f"{day},{result.currency},{result.new_rate}")
    ]
    assert result.currency == "USD" and day == "2026-10-24"


def test_change_rates_rejects_eur_and_a_missing_file(shop: GenerateResult, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        change_rates(tmp_path / "project", currency="EUR")
    with pytest.raises(FileNotFoundError):
        change_rates(tmp_path / "elsewhere")
