"""PostgreSQL -> Debezium (Kafka Connect) -> Kafka -> icefield -> Iceberg, with the real servers.

Rows written before the connector starts arrive as its snapshot (op r); then inserts, updates,
deletes (REPLICA IDENTITY DEFAULT: a delete carries only the key), interleaved transactions from two
sessions, and a column added with ALTER TABLE. After each phase the Iceberg table is compared row by
row with the PostgreSQL table; the run is repeated until the connector's events have all arrived.
"""

from __future__ import annotations

import datetime as dt
import decimal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from icefield.observe.events import SourceLag
from icefield.observe.metrics import MetricsObserver, samples

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.connect]

COLUMNS = ["id", "customer", "amount", "status", "placed_on", "updated_at", "ref", "attrs"]


def pg_rows(url: str, columns: list[str]) -> list[tuple[Any, ...]]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            cols = ", ".join(f"{c_}::text" if c_ in ("attrs", "ref") else c_ for c_ in columns)
            return sorted(tuple(r) for r in c.execute(sa.text(f"SELECT {cols} FROM orders")).fetchall())
    finally:
        engine.dispose()


def lake_rows(catalog: Any, columns: list[str]) -> list[tuple[Any, ...]]:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        table = catalog.load_table("cdc.orders")
    except NoSuchTableError:
        return []
    names = set(table.schema().column_names)
    rows = table.scan().to_arrow().to_pylist()
    return sorted(tuple(norm(c, r.get(c)) if c in names else None for c in columns) for r in rows)


def norm(column: str, value: Any) -> Any:
    """Iceberg values in PostgreSQL's Python form: JSON text re-serialised the way ::text prints it."""
    if column == "attrs" and value is not None:
        import json

        return json.dumps(json.loads(value), separators=(", ", ": "))
    return value


def converge(project: Any, catalog: Any, url: str, columns: list[str], timeout: float = 90.0, observers: Any = ()) -> None:
    """Run the pipeline until the Iceberg table equals the PostgreSQL table (events arrive asynchronously)."""
    from icefield.errors import SourceError
    from icefield.pipeline import run_pipeline

    deadline = time.monotonic() + timeout
    while True:
        try:
            result = run_pipeline(project, "orders_cdc", catalog, observers=observers)
            assert result.conserved, result.to_dict()
        except SourceError as e:  # the connector creates its topic with its first event
            if "does not exist" not in str(e) or time.monotonic() > deadline:
                raise
        want, got = pg_rows(url, columns), lake_rows(catalog, columns)
        if got == want:
            return
        if time.monotonic() > deadline:
            missing = set(want) - set(got)
            extra = set(got) - set(want)
            raise AssertionError(f"after {timeout:.0f}s the lake differs: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
        time.sleep(1.0)


def test_postgres_changes_land_in_iceberg_exactly_as_the_table_is(
    pg_url: str, debezium_capture: Any, kafka_server: Any, tmp_path: Path
) -> None:
    import sqlalchemy as sa

    from icefield.catalog import open_catalog
    from icefield.config import load_project

    engine = sa.create_engine(pg_url)
    with engine.begin() as c:
        c.execute(sa.text(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(10,2), status text, "
            "placed_on date, updated_at timestamptz, ref uuid, attrs jsonb)"
        ))  # fmt: skip
        for i in range(1, 21):
            c.execute(
                sa.text("INSERT INTO orders VALUES (:i, :c, :a, 'placed', :d, :t, :r, CAST(:j AS jsonb))"),
                {"i": i, "c": f"cust{i % 7}", "a": decimal.Decimal(i) * decimal.Decimal("10.25"), "d": dt.date(2026, 11, i % 28 + 1),
                 "t": dt.datetime(2026, 11, 1, 12, i, tzinfo=dt.UTC), "r": str(uuid.UUID(int=i)), "j": f'{{"n": {i}}}'},
            )  # fmt: skip
    topics = debezium_capture(pg_url, ["public.orders"])

    root = tmp_path / "proj"
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "e2e", "batch_size": 7}))
    pipeline = {
        "name": "orders_cdc",
        "source": {"type": "debezium", "topic": topics["public.orders"], "bootstrap_servers": kafka_server.bootstrap_servers, "max_wait_seconds": 1},
        "target": {"table": "cdc.orders", "keys": ["id"]},
    }
    (root / "pipelines" / "orders_cdc.yaml").write_text(yaml.safe_dump(pipeline))
    project = load_project(root, env={})
    catalog = open_catalog(project)
    metrics, seen = MetricsObserver(), []
    watch = [metrics, seen.append]

    converge(project, catalog, pg_url, COLUMNS, observers=watch)  # the snapshot

    with engine.begin() as c:
        c.execute(sa.text("UPDATE orders SET status = 'paid', amount = amount + 1 WHERE id <= 5"))
        c.execute(sa.text("DELETE FROM orders WHERE id IN (6, 7, 8)"))
        c.execute(sa.text("INSERT INTO orders (id, customer, amount, status) VALUES (21, 'new', 3.50, 'placed')"))
    # Two sessions interleaved: A writes first and commits last.
    a, b = engine.connect(), engine.connect()
    try:
        ta, tb = a.begin(), b.begin()
        a.execute(sa.text("UPDATE orders SET status = 'A' WHERE id = 9"))
        a.execute(sa.text("INSERT INTO orders (id, customer, status) VALUES (30, 'from A', 'A')"))
        b.execute(sa.text("UPDATE orders SET status = 'B' WHERE id = 10"))
        b.execute(sa.text("DELETE FROM orders WHERE id = 11"))
        tb.commit()
        a.execute(sa.text("UPDATE orders SET status = 'A2' WHERE id = 10"))  # B committed: A may now touch row 10
        ta.commit()
    finally:
        a.close()
        b.close()
    with engine.begin() as c:
        c.execute(sa.text("UPDATE orders SET status = 'after' WHERE id = 30"))
        c.execute(sa.text("DELETE FROM orders WHERE id = 21"))
        c.execute(sa.text("INSERT INTO orders (id, customer, status) VALUES (21, 'back', 'again')"))
    converge(project, catalog, pg_url, COLUMNS, observers=watch)

    with engine.begin() as c:
        c.execute(sa.text("ALTER TABLE orders ADD COLUMN channel text"))
        c.execute(sa.text("INSERT INTO orders (id, customer, status, channel) VALUES (40, 'web', 'placed', 'web')"))
        c.execute(sa.text("UPDATE orders SET channel = 'phone' WHERE id = 1"))
    converge(project, catalog, pg_url, [*COLUMNS, "channel"], observers=watch)
    engine.dispose()
    table = catalog.load_table("cdc.orders")
    assert "channel" in table.schema().column_names, "the column added in PostgreSQL reached the Iceberg table"

    # Lag: every change landed, so no message is left on the topic; the CDC lag is the last batch's commit time
    # minus the source time (source.ts_ms) of the newest change, which the table holds.
    lag = {lb["partition"]: v for lb, v in samples(metrics.registry, "icefield_kafka_consumer_lag_messages")}
    assert lag and set(lag.values()) == {0.0}, lag
    last = [e for e in seen if isinstance(e, SourceLag) and e.change_time is not None][-1]
    newest = max(table.scan(selected_fields=("_cdc_ts_ms",)).to_arrow().column("_cdc_ts_ms").to_pylist())
    assert last.change_time == dt.datetime.fromtimestamp(newest / 1000, dt.UTC)
    cdc = [v for _, v in samples(metrics.registry, "icefield_cdc_lag_seconds")]
    assert cdc == [(last.at - last.change_time).total_seconds()] and 0 <= cdc[0] < 90, cdc
