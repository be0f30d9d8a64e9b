"""Deterministic generator of the sample shop used by the demo and the tests.

Three sources are written under ``<project_dir>/data/``:

* ``shop.db`` -- a SQLite database with ``customers``, ``orders`` and ``order_items``;
* ``clickstream/events-NNNN.jsonl`` -- JSON Lines click events;
* ``rates/rates.csv`` -- daily exchange rates to EUR.

Contracts shared by every function here:

* Everything is a pure function of the arguments and, for :func:`mutate` and :func:`change_rates`, of the
  files already on disk: the same calls in the same order produce byte-identical CSV/JSONL files and
  identical database rows. Random numbers come from :class:`random.Random` instances seeded with a string
  built from the caller's ``seed`` and a purpose (``"orders"``, ``"clickstream"``...), so changing one count
  does not reshuffle the other sources. No wall clock is read: the data covers the 14 days before the fixed
  :data:`BASE_DATE` (``[RANGE_START, RANGE_END)``), and :func:`mutate` moves "time" forward from the newest
  ``updated_at`` already in the database.
* Timestamps in SQLite are ``'YYYY-MM-DD HH:MM:SS'`` strings in columns declared ``TIMESTAMP`` (so SQLAlchemy
  reflects them as ``DateTime``); money columns are declared ``DECIMAL(10,2)`` and hold REAL values (SQLite's
  NUMERIC affinity stores whole amounts such as ``25.0`` as INTEGER ``25``; the value is the same).
  Clickstream ``ts`` values are ``'YYYY-MM-DDTHH:MM:SS'`` without a zone.
* Several orders share the same ``updated_at`` (hourly shipping batches), and the newest ``updated_at`` is
  always shared by at least three orders, so an incremental loader must cope with rows tied on its last
  cursor value. :func:`mutate` keeps that property for the rows it changes.
* Exactly three orders are deliberately bad (amounts ``-5.00``, ``-12.50`` and NULL) and exactly two
  clickstream lines are malformed (one truncated JSON, one with ``customer_id`` ``"12abc"``); their ids and
  line numbers are in :class:`GenerateResult`. :func:`mutate` never touches or adds bad rows.
* Arguments out of range raise :class:`ValueError`; a missing source for :func:`mutate` or
  :func:`change_rates` raises :class:`FileNotFoundError`. Nothing is printed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import re
import shutil
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

__all__ = [
    "BASE_DATE",
    "BAD_CLICKSTREAM_LINES",
    "BAD_ORDER_COUNT",
    "CLICKSTREAM_FILES",
    "CLICKSTREAM_LINES_PER_FILE",
    "CORRECTED_RATE_DAY",
    "CURRENCIES",
    "DAYS",
    "EVENT_TYPES",
    "LATE_EVENTS",
    "RANGE_END",
    "RANGE_START",
    "STATUSES",
    "GenerateResult",
    "MutateResult",
    "RatesChangeResult",
    "change_rates",
    "create",
    "mutate",
]

BASE_DATE: date = date(2026, 11, 1)
"""The fixed "today" of the generated shop; every generated timestamp of :func:`create` is before it."""

DAYS: int = 14
"""Number of days covered by :func:`create`: the 14 days before :data:`BASE_DATE`."""

RANGE_START: datetime = datetime(BASE_DATE.year, BASE_DATE.month, BASE_DATE.day) - timedelta(days=DAYS)
"""Inclusive start of the generated time range (2026-10-18 00:00:00)."""

RANGE_END: datetime = datetime(BASE_DATE.year, BASE_DATE.month, BASE_DATE.day)
"""Exclusive end of the generated time range (2026-11-01 00:00:00)."""

STATUSES: tuple[str, ...] = ("placed", "paid", "shipped", "delivered", "cancelled")
CURRENCIES: tuple[str, ...] = ("EUR", "USD", "GBP")
EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "checkout")

CLICKSTREAM_FILES: int = 3
CLICKSTREAM_LINES_PER_FILE: int = 1000
"""Lines per clickstream file written by :func:`create`, malformed lines included."""
BAD_CLICKSTREAM_LINES: int = 2
LATE_EVENTS: int = 300
"""Events in the late clickstream file written by :func:`mutate`."""

BAD_ORDER_AMOUNTS: tuple[Decimal | None, ...] = (Decimal("-5.00"), Decimal("-12.50"), None)
BAD_ORDER_COUNT: int = len(BAD_ORDER_AMOUNTS)

CORRECTED_RATE_DAY: date = RANGE_START.date() + timedelta(days=6)
"""Default day whose rate :func:`change_rates` corrects (2026-10-24)."""

MIN_ORDERS: int = 10
"""Smallest ``orders`` :func:`create` accepts (room for the bad orders and the forced ties)."""

_SQL_TS = "%Y-%m-%d %H:%M:%S"
_EVENT_TS = "%Y-%m-%dT%H:%M:%S"
_MUTATE_WINDOW = timedelta(hours=6)
_BAD_CLICKSTREAM_FILE_NO = 2
_EVENTS_FILE_RE = re.compile(r"^events-(\d{4})\.jsonl$")

_FIRST_NAMES: tuple[str, ...] = (
    "Anna", "Ben", "Chloe", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas",
    "Katja", "Liam", "Mia", "Noah", "Olivia", "Paul", "Quinn", "Rosa", "Sven", "Tara",
)  # fmt: skip
_LAST_NAMES: tuple[str, ...] = (
    "Schmidt", "Martin", "Jansen", "Smith", "Garcia", "Rossi", "Murphy", "Dubois", "Novak", "Berg",
    "Keller", "Lopez", "Visser", "Brown", "Moreau", "Bianchi", "Walsh", "Weber", "Silva", "Kowalski",
)  # fmt: skip
_COUNTRIES: tuple[str, ...] = ("DE", "FR", "NL", "GB", "US", "ES", "IT", "IE")

_SCHEMA = """
CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    name TEXT,
    email TEXT,
    country TEXT,
    created_at TIMESTAMP,
    updated_at TIMESTAMP
);
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER,
    status TEXT,
    amount DECIMAL(10,2),
    currency TEXT,
    created_at TIMESTAMP,
    updated_at TIMESTAMP
);
CREATE TABLE order_items (
    order_id INTEGER,
    line_no INTEGER,
    sku TEXT,
    quantity INTEGER,
    unit_price DECIMAL(10,2),
    updated_at TIMESTAMP,
    PRIMARY KEY (order_id, line_no)
);
"""


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class GenerateResult:
    """What :func:`create` wrote; every count equals what a reader of the files/database will find.

    ``clickstream_lines`` = ``clickstream_good_lines + clickstream_bad_lines`` counts every line of every
    clickstream file. ``clickstream_bad_line_numbers`` are 1-based line numbers in ``clickstream_bad_file``.
    ``max_order_updated_at`` is the newest ``orders.updated_at``; ``orders_at_max_updated_at`` (always >= 3)
    orders carry it. ``tied_order_updated_at_values`` is the number of distinct ``orders.updated_at``
    values shared by two or more orders.
    """

    data_dir: Path
    db_path: Path
    clickstream_dir: Path
    rates_path: Path
    seed: int
    customers: int
    orders: int
    order_items: int
    bad_order_ids: tuple[int, ...]
    clickstream_files: tuple[str, ...]
    clickstream_lines: int
    clickstream_good_lines: int
    clickstream_bad_lines: int
    clickstream_bad_file: str
    clickstream_bad_line_numbers: tuple[int, ...]
    rates_rows: int
    range_start: str
    range_end: str
    max_order_updated_at: str
    orders_at_max_updated_at: int
    tied_order_updated_at_values: int


@dataclass(frozen=True)
class MutateResult:
    """What :func:`mutate` changed.

    ``inserted_order_ids`` are new orders (all with good amounts) carrying ``inserted_items`` new
    ``order_items`` rows; ``updated_order_ids`` are existing orders whose status changed and whose
    ``updated_at`` moved forward. One customer was inserted and one updated (email changed). Every changed
    or inserted row has ``updated_at >= window_start``, and ``window_start`` is later than every
    ``updated_at`` the database held before the call. ``late_file`` holds ``late_lines`` well-formed events
    whose ``ts`` lie inside ``[RANGE_START, RANGE_END)``. ``orders``, ``customers`` and ``order_items`` are
    the table sizes after the call. ``max_order_updated_at`` is shared by ``orders_at_max_updated_at``
    orders (>= 3 when at least three orders changed).
    """

    seed: int
    inserted_order_ids: tuple[int, ...]
    updated_order_ids: tuple[int, ...]
    inserted_items: int
    inserted_customer_id: int
    updated_customer_id: int
    late_file: Path
    late_lines: int
    orders: int
    customers: int
    order_items: int
    window_start: str
    max_order_updated_at: str
    orders_at_max_updated_at: int


@dataclass(frozen=True)
class RatesChangeResult:
    """The one rate :func:`change_rates` corrected in ``path`` (``rows`` data rows, header excluded)."""

    path: Path
    day: date
    currency: str
    old_rate: str
    new_rate: str
    rows: int


# --------------------------------------------------------------------------------------------- internals


@dataclass
class _Order:
    order_id: int
    customer_id: int
    status: str
    amount: Decimal | None
    currency: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class _Item:
    order_id: int
    line_no: int
    sku: str
    quantity: int
    unit_price: Decimal
    updated_at: datetime


@dataclass(frozen=True)
class _Customer:
    customer_id: int
    name: str
    email: str
    country: str
    created_at: datetime
    updated_at: datetime


def _rng(seed: int, purpose: str) -> random.Random:
    """A generator for one purpose; string seeds are hashed with SHA-512, so this is stable across runs."""
    return random.Random(f"icefield-shop:{purpose}:{seed}")


def _catalog() -> tuple[tuple[str, Decimal], ...]:
    """The fixed product catalog (independent of any seed): 40 SKUs with prices 1.99..199.99."""
    rng = random.Random("icefield-shop:catalog")
    return tuple((f"SKU-{n:04d}", Decimal(rng.randint(199, 19999)) / 100) for n in range(1, 41))


_CATALOG = _catalog()


def _sql_ts(value: datetime) -> str:
    return value.strftime(_SQL_TS)


def _parse_sql_ts(value: str) -> datetime:
    return datetime.strptime(value, _SQL_TS)


def _random_ts(rng: random.Random, start: datetime, end: datetime) -> datetime:
    """A whole-second time in ``[start, end)``."""
    span = int((end - start).total_seconds())
    return start + timedelta(seconds=rng.randrange(span))


def _next_hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def _status_updated_at(rng: random.Random, status: str, created_at: datetime) -> datetime:
    """When an order created at ``created_at`` reached ``status``; shipping runs in hourly batches."""
    if status == "placed":
        return created_at
    if status == "paid":
        return created_at + timedelta(seconds=rng.randint(30, 3600))
    if status == "shipped":
        return _next_hour(created_at + timedelta(seconds=rng.randint(2 * 3600, 48 * 3600)))
    if status == "delivered":
        return _next_hour(created_at + timedelta(seconds=rng.randint(24 * 3600, 96 * 3600)))
    return created_at + timedelta(seconds=rng.randint(60, 86400))  # cancelled


def _make_items(rng: random.Random, order_id: int, created_at: datetime) -> tuple[list[_Item], Decimal]:
    """1-4 item lines for an order (item ``updated_at`` = order ``created_at``) and their total."""
    lines = rng.randint(1, 4)
    items: list[_Item] = []
    total = Decimal("0.00")
    for line_no, (sku, price) in enumerate(rng.sample(_CATALOG, lines), start=1):
        quantity = rng.randint(1, 5)
        items.append(_Item(order_id, line_no, sku, quantity, price, created_at))
        total += price * quantity
    return items, total


def _force_max_tie(rng: random.Random, orders: Sequence[_Order], exclude: set[int], ties: int) -> None:
    """Give ``ties`` more orders (not in ``exclude``) the newest ``updated_at`` of ``orders``.

    Safe for the ``created_at <= updated_at`` invariant because the newest value is >= every created_at.
    """
    newest = max(o.updated_at for o in orders)
    candidates = [o for o in orders if o.updated_at != newest and o.order_id not in exclude]
    for order in rng.sample(candidates, min(ties, len(candidates))):
        order.updated_at = newest


def _make_customer(
    rng: random.Random, customer_id: int, created_at: datetime, updated_at: datetime
) -> _Customer:
    first = rng.choice(_FIRST_NAMES)
    last = rng.choice(_LAST_NAMES)
    return _Customer(
        customer_id=customer_id,
        name=f"{first} {last}",
        email=f"{first}.{last}.{customer_id}@example.com".lower(),
        country=rng.choice(_COUNTRIES),
        created_at=created_at,
        updated_at=updated_at,
    )


def _make_customers(rng: random.Random, count: int) -> list[_Customer]:
    """``count`` customers, ids in creation order, sign-ups denser early in the range."""
    span = int((RANGE_END - RANGE_START).total_seconds())
    created = sorted(RANGE_START + timedelta(seconds=int(span * rng.random() ** 2)) for _ in range(count))
    last_second = RANGE_END - timedelta(seconds=1)
    customers: list[_Customer] = []
    for customer_id, created_at in enumerate(created, start=1):
        updated_at = created_at
        if rng.random() < 0.3:
            updated_at = min(created_at + timedelta(seconds=rng.randint(60, 5 * 86400)), last_second)
        customers.append(_make_customer(rng, customer_id, created_at, updated_at))
    return customers


def _make_orders(
    rng: random.Random, count: int, customers: Sequence[_Customer]
) -> tuple[list[_Order], list[_Item], tuple[int, ...]]:
    """``count`` orders (ids in creation order) with their items and the ids of the bad orders.

    Each order belongs to a uniformly chosen customer and is created no earlier than that customer;
    good amounts equal the sum of their items. The newest ``updated_at`` is shared by at least three
    orders.
    """
    placed = sorted(
        (_random_ts(rng, customer.created_at, RANGE_END), customer.customer_id)
        for customer in (rng.choice(customers) for _ in range(count))
    )
    orders: list[_Order] = []
    items: list[_Item] = []
    for order_id, (created_at, customer_id) in enumerate(placed, start=1):
        status = rng.choices(STATUSES, weights=(15, 20, 25, 30, 10))[0]
        updated_at = _status_updated_at(rng, status, created_at)
        if updated_at >= RANGE_END:  # would happen after "today": the order has not progressed yet
            status, updated_at = "placed", created_at
        currency = rng.choices(CURRENCIES, weights=(60, 25, 15))[0]
        order_items, total = _make_items(rng, order_id, created_at)
        items.extend(order_items)
        orders.append(_Order(order_id, customer_id, status, total, currency, created_at, updated_at))

    bad_ids = tuple(sorted(rng.sample(range(1, count + 1), BAD_ORDER_COUNT)))
    for order_id, amount in zip(bad_ids, BAD_ORDER_AMOUNTS, strict=True):
        orders[order_id - 1].amount = amount
    _force_max_tie(rng, orders, set(bad_ids), ties=2)
    return orders, items, bad_ids


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _insert_customers(conn: sqlite3.Connection, customers: Sequence[_Customer]) -> None:
    conn.executemany(
        "INSERT INTO customers (customer_id, name, email, country, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (c.customer_id, c.name, c.email, c.country, _sql_ts(c.created_at), _sql_ts(c.updated_at))
            for c in customers
        ],
    )


def _insert_orders(conn: sqlite3.Connection, orders: Sequence[_Order]) -> None:
    conn.executemany(
        "INSERT INTO orders (order_id, customer_id, status, amount, currency, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                o.order_id,
                o.customer_id,
                o.status,
                _money(o.amount),
                o.currency,
                _sql_ts(o.created_at),
                _sql_ts(o.updated_at),
            )
            for o in orders
        ],
    )


def _insert_items(conn: sqlite3.Connection, items: Sequence[_Item]) -> None:
    conn.executemany(
        "INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (i.order_id, i.line_no, i.sku, i.quantity, _money(i.unit_price), _sql_ts(i.updated_at))
            for i in items
        ],
    )


def _event(rng: random.Random, ts: datetime, max_customer_id: int) -> dict[str, object]:
    """One well-formed click event (keys in a fixed order)."""
    event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    event_type = rng.choices(EVENT_TYPES, weights=(80, 15, 5))[0]
    sku = rng.choice(_CATALOG)[0]
    if event_type == "view":
        url = f"/products/{sku}"
    elif event_type == "add_to_cart":
        url = f"/cart/add?sku={sku}"
    else:
        url = "/checkout"
    return {
        "event_id": event_id,
        "ts": ts.strftime(_EVENT_TS),
        "customer_id": rng.randint(1, max_customer_id),
        "type": event_type,
        "url": url,
    }


def _event_lines(
    rng: random.Random, count: int, start: datetime, end: datetime, max_customer_id: int
) -> list[str]:
    """``count`` well-formed JSON lines with ``ts`` sorted inside ``[start, end)``."""
    times = sorted(_random_ts(rng, start, end) for _ in range(count))
    return [json.dumps(_event(rng, ts, max_customer_id)) for ts in times]


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(line + "\n" for line in lines)


def _write_clickstream(
    rng: random.Random, clickstream_dir: Path, max_customer_id: int
) -> tuple[tuple[str, ...], str, tuple[int, ...]]:
    """Write the clickstream files; return their names, the bad file's name and its bad line numbers."""
    names: list[str] = []
    bad_file = f"events-{_BAD_CLICKSTREAM_FILE_NO:04d}.jsonl"
    bad_numbers: tuple[int, ...] = ()
    for file_no in range(1, CLICKSTREAM_FILES + 1):
        start = RANGE_START + timedelta(days=(file_no - 1) * DAYS // CLICKSTREAM_FILES)
        end = RANGE_START + timedelta(days=file_no * DAYS // CLICKSTREAM_FILES)
        lines = _event_lines(rng, CLICKSTREAM_LINES_PER_FILE, start, end, max_customer_id)
        name = f"events-{file_no:04d}.jsonl"
        if name == bad_file:
            truncated, wrong_type = sorted(rng.sample(range(len(lines)), BAD_CLICKSTREAM_LINES))
            cut = json.loads(lines[truncated])
            lines[truncated] = '{"event_id": ' + json.dumps(cut["event_id"]) + ', "ts":'
            wrong = json.loads(lines[wrong_type])
            wrong["customer_id"] = "12abc"
            lines[wrong_type] = json.dumps(wrong)
            bad_numbers = (truncated + 1, wrong_type + 1)
        _write_lines(clickstream_dir / name, lines)
        names.append(name)
    return tuple(names), bad_file, bad_numbers


def _write_rates(rng: random.Random, rates_path: Path) -> int:
    """Write a daily random walk of USD and GBP rates to EUR (EUR = 1); return the data row count."""
    level = {"USD": Decimal("0.920000"), "GBP": Decimal("1.150000")}
    rows: list[tuple[str, str, str]] = []
    for day_no in range(DAYS):
        day = (RANGE_START + timedelta(days=day_no)).date().isoformat()
        for currency in sorted(CURRENCIES):
            if currency == "EUR":
                rate = Decimal("1.000000")
            else:
                step = Decimal(rng.randint(-400, 400)) / Decimal(1_000_000)
                level[currency] = (level[currency] + step).quantize(Decimal("0.000001"))
                rate = level[currency]
            rows.append((day, currency, f"{rate:.6f}"))
    _write_csv(rates_path, rows)
    return len(rows)


def _write_csv(path: Path, rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("date", "currency", "rate_to_eur"))
        writer.writerows(rows)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _order_tie_stats(conn: sqlite3.Connection) -> tuple[str, int, int]:
    """Newest ``orders.updated_at``, how many orders carry it, and how many values are shared."""
    newest, at_newest = conn.execute(
        "SELECT updated_at, COUNT(*) FROM orders WHERE updated_at = (SELECT MAX(updated_at) FROM orders)"
    ).fetchone()
    (tied,) = conn.execute(
        "SELECT COUNT(*) FROM (SELECT updated_at FROM orders GROUP BY updated_at HAVING COUNT(*) > 1)"
    ).fetchone()
    return str(newest), int(at_newest), int(tied)


def _count(conn: sqlite3.Connection, table: str) -> int:
    (n,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # table names are internal constants
    return int(n)


# --------------------------------------------------------------------------------------------- API


def create(project_dir: Path, seed: int = 7, customers: int = 200, orders: int = 2000) -> GenerateResult:
    """Create the sample shop under ``project_dir/data/`` from scratch.

    ``project_dir/data`` is deleted first if it exists (only that directory), then ``shop.db``,
    ``clickstream/events-0001.jsonl`` .. ``events-0003.jsonl`` (1000 lines each; two malformed lines in
    ``events-0002.jsonl``) and ``rates/rates.csv`` (14 days x EUR/GBP/USD) are written. ``project_dir`` is
    created if missing. The result is a pure function of ``seed``, ``customers`` and ``orders``.

    Raises :class:`ValueError` if ``customers < 1`` or ``orders < MIN_ORDERS``.
    """
    if customers < 1:
        raise ValueError(f"customers must be >= 1, got {customers}")
    if orders < MIN_ORDERS:
        raise ValueError(f"orders must be >= {MIN_ORDERS}, got {orders}")

    data_dir = Path(project_dir) / "data"
    _remove(data_dir)
    clickstream_dir = data_dir / "clickstream"
    rates_dir = data_dir / "rates"
    clickstream_dir.mkdir(parents=True)
    rates_dir.mkdir()
    db_path = data_dir / "shop.db"
    rates_path = rates_dir / "rates.csv"

    customer_rows = _make_customers(_rng(seed, "customers"), customers)
    order_rows, item_rows, bad_ids = _make_orders(_rng(seed, "orders"), orders, customer_rows)

    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.executescript(_SCHEMA)
        _insert_customers(conn, customer_rows)
        _insert_orders(conn, order_rows)
        _insert_items(conn, item_rows)
        conn.commit()
        newest, at_newest, tied = _order_tie_stats(conn)

    files, bad_file, bad_numbers = _write_clickstream(_rng(seed, "clickstream"), clickstream_dir, customers)
    rates_rows = _write_rates(_rng(seed, "rates"), rates_path)

    total_lines = CLICKSTREAM_FILES * CLICKSTREAM_LINES_PER_FILE
    return GenerateResult(
        data_dir=data_dir,
        db_path=db_path,
        clickstream_dir=clickstream_dir,
        rates_path=rates_path,
        seed=seed,
        customers=len(customer_rows),
        orders=len(order_rows),
        order_items=len(item_rows),
        bad_order_ids=bad_ids,
        clickstream_files=files,
        clickstream_lines=total_lines,
        clickstream_good_lines=total_lines - len(bad_numbers),
        clickstream_bad_lines=len(bad_numbers),
        clickstream_bad_file=bad_file,
        clickstream_bad_line_numbers=bad_numbers,
        rates_rows=rates_rows,
        range_start=_sql_ts(RANGE_START),
        range_end=_sql_ts(RANGE_END),
        max_order_updated_at=newest,
        orders_at_max_updated_at=at_newest,
        tied_order_updated_at_values=tied,
    )


_NEXT_STATUS: dict[str, tuple[str, ...]] = {
    "placed": ("paid", "cancelled"),
    "paid": ("shipped", "cancelled"),
    "shipped": ("delivered",),
}


def _next_events_file(clickstream_dir: Path) -> tuple[int, Path]:
    numbers = [
        int(m.group(1)) for p in clickstream_dir.iterdir() if (m := _EVENTS_FILE_RE.match(p.name)) is not None
    ]
    number = max(numbers, default=0) + 1
    return number, clickstream_dir / f"events-{number:04d}.jsonl"


def mutate(project_dir: Path, seed: int = 8, new_orders: int = 50, updated_orders: int = 20) -> MutateResult:
    """Advance the shop's time: change the database and add one late clickstream file.

    In one transaction: inserts ``new_orders`` orders (ids after the current maximum, good amounts, 1-4
    items each), moves ``updated_orders`` existing good orders whose status can still progress
    (placed/paid/shipped) to their next status, inserts one customer and changes one existing customer's
    email. All those rows get ``updated_at`` in a 6-hour window starting one second after the newest
    ``updated_at`` of any table (and not before :data:`RANGE_END`), so they are strictly later than anything
    before; the newest new ``orders.updated_at`` is shared by three changed orders when at least three
    changed. Then writes the next free ``clickstream/events-NNNN.jsonl`` (``events-0004.jsonl`` after
    :func:`create`) with :data:`LATE_EVENTS` well-formed events whose ``ts`` lie in the original
    ``[RANGE_START, RANGE_END)``. ``rates.csv`` and the existing clickstream files are not touched.

    Deterministic for the same database/files and arguments; repeated calls differ from each other
    because the late file number is mixed into the seed.

    Raises :class:`FileNotFoundError` if ``shop.db`` or the clickstream directory is missing and
    :class:`ValueError` if a count is negative or more orders are asked to change than can.
    """
    if new_orders < 0 or updated_orders < 0:
        raise ValueError(f"new_orders and updated_orders must be >= 0, got {new_orders}, {updated_orders}")
    data_dir = Path(project_dir) / "data"
    db_path = data_dir / "shop.db"
    clickstream_dir = data_dir / "clickstream"
    if not db_path.is_file():
        raise FileNotFoundError(f"{db_path} does not exist; run create() first")
    if not clickstream_dir.is_dir():
        raise FileNotFoundError(f"{clickstream_dir} does not exist; run create() first")

    late_no, late_path = _next_events_file(clickstream_dir)
    rng = _rng(seed, f"mutate:{late_no}")

    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        newest_text = max(
            str(conn.execute(f"SELECT MAX(updated_at) FROM {table}").fetchone()[0])
            for table in ("customers", "orders", "order_items")
        )
        window_start = max(_parse_sql_ts(newest_text) + timedelta(seconds=1), RANGE_END)
        window_end = window_start + _MUTATE_WINDOW
        (max_customer_id,) = conn.execute("SELECT MAX(customer_id) FROM customers").fetchone()
        (max_order_id,) = conn.execute("SELECT MAX(order_id) FROM orders").fetchone()
        candidates = conn.execute(
            "SELECT order_id, status FROM orders WHERE amount IS NOT NULL AND amount >= 0 "
            "AND status IN ('placed', 'paid', 'shipped') ORDER BY order_id"
        ).fetchall()
        if updated_orders > len(candidates):
            raise ValueError(
                f"updated_orders={updated_orders} but only {len(candidates)} orders can progress"
            )

        # One new customer (created at the start of the window) and one changed customer.
        new_customer_id = int(max_customer_id) + 1
        new_customer = _make_customer(rng, new_customer_id, window_start, window_start)
        changed_customer_id = rng.randint(1, int(max_customer_id))
        changed_customer_at = _random_ts(rng, window_start, window_end)

        # New orders: placed or paid during the window, by any customer including the new one.
        inserted: list[_Order] = []
        new_items: list[_Item] = []
        created = sorted(
            _random_ts(rng, window_start, window_end - timedelta(hours=1)) for _ in range(new_orders)
        )
        for offset, created_at in enumerate(created, start=1):
            order_id = int(max_order_id) + offset
            status = rng.choice(("placed", "paid"))
            order_items, total = _make_items(rng, order_id, created_at)
            new_items.extend(order_items)
            inserted.append(
                _Order(
                    order_id,
                    rng.randint(1, new_customer_id),
                    status,
                    total,
                    rng.choices(CURRENCIES, weights=(60, 25, 15))[0],
                    created_at,
                    _status_updated_at(rng, status, created_at),
                )
            )

        # Existing orders progressing to their next status.
        progressed: list[tuple[int, str, datetime]] = []
        for order_id, status in sorted(rng.sample(candidates, updated_orders)):
            progressed.append(
                (
                    int(order_id),
                    rng.choice(_NEXT_STATUS[str(status)]),
                    _random_ts(rng, window_start, window_end),
                )
            )

        # Ties on the newest updated_at among the changed orders. Only order_id and updated_at of the
        # stand-ins for progressed orders matter; inserted orders are tied in place (their created_at is
        # <= every window time, so the invariant created_at <= updated_at holds).
        stand_ins = [_Order(oid, 0, status, None, "", RANGE_START, at) for oid, status, at in progressed]
        if stand_ins or inserted:
            _force_max_tie(rng, [*stand_ins, *inserted], set(), ties=2)
        progressed_at = {o.order_id: o.updated_at for o in stand_ins}

        with conn:
            _insert_customers(conn, [new_customer])
            conn.execute(
                "UPDATE customers SET email = ?, updated_at = ? WHERE customer_id = ?",
                (
                    f"customer{changed_customer_id}.m{late_no}@example.org",
                    _sql_ts(changed_customer_at),
                    changed_customer_id,
                ),
            )
            _insert_orders(conn, inserted)
            _insert_items(conn, new_items)
            conn.executemany(
                "UPDATE orders SET status = ?, updated_at = ? WHERE order_id = ?",
                [(status, _sql_ts(progressed_at[oid]), oid) for oid, status, _ in progressed],
            )
        newest, at_newest, _ = _order_tie_stats(conn)
        orders_total = _count(conn, "orders")
        customers_total = _count(conn, "customers")
        items_total = _count(conn, "order_items")

    _write_lines(late_path, _event_lines(rng, LATE_EVENTS, RANGE_START, RANGE_END, int(max_customer_id)))

    return MutateResult(
        seed=seed,
        inserted_order_ids=tuple(o.order_id for o in inserted),
        updated_order_ids=tuple(oid for oid, _, _ in progressed),
        inserted_items=len(new_items),
        inserted_customer_id=new_customer_id,
        updated_customer_id=changed_customer_id,
        late_file=late_path,
        late_lines=LATE_EVENTS,
        orders=orders_total,
        customers=customers_total,
        order_items=items_total,
        window_start=_sql_ts(window_start),
        max_order_updated_at=newest,
        orders_at_max_updated_at=at_newest,
    )


def change_rates(
    project_dir: Path,
    day: date = CORRECTED_RATE_DAY,
    currency: str = "USD",
    delta: Decimal = Decimal("0.010000"),
) -> RatesChangeResult:
    """Correct one rate in ``data/rates/rates.csv`` so the file's content changes.

    Rewrites the file with the ``(day, currency)`` rate increased by ``delta`` (6 decimals); every other
    byte stays the same. Calling it again applies the correction again.

    Raises :class:`FileNotFoundError` if the file is missing and :class:`ValueError` if ``currency`` is EUR
    (always 1.0), ``delta`` is zero or the row does not exist.
    """
    if currency == "EUR":
        raise ValueError("EUR is the base currency; its rate is always 1.0")
    if delta == 0:
        raise ValueError("delta must not be zero, or the file would not change")
    path = Path(project_dir) / "data" / "rates" / "rates.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run create() first")
    with path.open(encoding="utf-8", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    if header != ["date", "currency", "rate_to_eur"]:
        raise ValueError(f"{path} has an unexpected header {header}")
    matches = [i for i, row in enumerate(rows) if row[0] == day.isoformat() and row[1] == currency]
    if len(matches) != 1:
        raise ValueError(f"{path} has {len(matches)} rows for {day.isoformat()} {currency}, expected 1")
    index = matches[0]
    old_rate = rows[index][2]
    new_rate = f"{(Decimal(old_rate) + delta).quantize(Decimal('0.000001')):.6f}"
    rows[index] = [rows[index][0], currency, new_rate]
    _write_csv(path, rows)
    return RatesChangeResult(
        path=path, day=day, currency=currency, old_rate=old_rate, new_rate=new_rate, rows=len(rows)
    )
