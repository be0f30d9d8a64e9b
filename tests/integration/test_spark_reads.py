"""On ``engine: spark``, Spark reads ``sql`` sources itself and checks the rows where it holds them (marker ``spark``).

Two projects run the same pipelines over one SQLite source database, one on each engine. On Spark, the rows
after the committed cursor value are read by Spark's JDBC reader, split into ranges of the cursor, and the row
checks run as Spark conditions over them: only the rows a check may refuse come back to the driver, to be decided
(and quarantined) as on the local engine; the rest are written by Spark where they were read. After each run the
tables, the quarantines, the run counts and the positions are the same on both engines, including rows that
arrive later with the cursor value already committed (the tie at the boundary), a ``unique`` check over the whole
batch, a ``filter`` rule (DuckDB SQL, run by Spark) and a merge whose batch holds a key twice.

One Spark session (local[2]) serves the module.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from icefield import Project, load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.iceberg.history import read_position

pytestmark = [
    pytest.mark.spark,
    pytest.mark.timeout(900),
    # pyspark leaves the sockets of its JVM round trips (collect, py4j) to the garbage collector.
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(r"ignore:unclosed <socket\.socket:ResourceWarning"),
]

CHECKS = (
    "checks:\n"
    "  - range: {column: amount, min: 0}\n"
    "  - not_null: [kind]\n"
    "  - unique: [id]\n"
    "  - accepted_values: {column: kind, values: [a, b, c, u]}\n"
    "  - filter: \"kind <> 'c' OR amount < 1000\"\n"
)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _project(root: Path, engine: str, db: Path) -> Project:
    _write(root, "icefield.yaml", f"name: reads\nengine: {engine}\nspark: {{master: 'local[2]', memory: 1g, read_partitions: 3}}\n")
    source = f"source: {{type: sql, url: 'sqlite:///{db}', table: orders, cursor: seq}}\n"
    _write(root, "pipelines/app.yaml", "name: app\n" + source + "target: {table: raw.orders, keys: [id]}\n" + CHECKS)
    _write(
        root, "pipelines/upd.yaml",
        "name: upd\n" + source.replace("orders", "changes") + "target: {table: raw.accounts, mode: merge, keys: [id]}\n"
        "checks:\n  - range: {column: amount, min: 0}\n",
    )
    project = load_project(root)
    open_catalog(project)
    return project


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("source") / "shop.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE orders (id INTEGER, seq INTEGER, kind TEXT, amount REAL)")
        con.execute("CREATE TABLE changes (id INTEGER, seq INTEGER, name TEXT, amount REAL)")
    return path


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory, db: Path) -> dict[str, Project]:
    base = tmp_path_factory.mktemp("reads")
    return {engine: _project(base / engine, engine, db) for engine in ("local", "spark")}


@pytest.fixture(scope="module")
def spark(projects: dict[str, Project]) -> Iterator[Any]:
    from icefield.engines.spark_session import project_session

    session = project_session(projects["spark"])
    try:
        yield session
    finally:
        session.stop()


def _insert(db: Path, table: str, rows: list[tuple[Any, ...]]) -> None:
    with sqlite3.connect(db) as con:
        con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?)", rows)


def _rows(project: Project, table: str) -> list[tuple[Any, ...]]:
    data = open_catalog(project).load_table(table).scan().to_arrow()
    return sorted(tuple(r.values()) for r in data.to_pylist())


def _quarantine(project: Project, table: str) -> list[tuple[Any, ...]]:
    catalog = open_catalog(project)
    name = table + "__quarantine"
    if not catalog.table_exists(name):
        return []
    data = catalog.load_table(name).scan().to_arrow()
    return sorted((r["pipeline"], r["batch_id"], r["check"], r["reason"], r["raw"], r["source"]) for r in data.to_pylist())


def _counts(result: Any) -> list[tuple[Any, ...]]:
    return [
        (b.batch_id, b.rows_in, b.rows_committed, b.rows_quarantined, b.rows_filtered, b.rows_updated, b.rows_inserted, b.skipped)
        for b in result.batches
    ]


def _run_both(projects: dict[str, Project], name: str, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """Run ``name`` on both engines; ``results["log"]`` holds what the Spark engine logged of its reads."""
    results: dict[str, Any] = {}
    for engine, project in projects.items():
        caplog.clear()
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="icefield.engines.spark"):
            results[engine] = run_pipeline(project, name)
        print(f"{name} on {engine}: {time.monotonic() - started:.1f}s")
        assert results[engine].status == "success", results[engine].error
        read = [r.getMessage() for r in caplog.records if r.getMessage().startswith("spark read ")]
        if engine == "spark" and results[engine].rows_in:
            assert read, "Spark read the source itself"
            results["log"] = [r.getMessage() for r in caplog.records]
        if engine == "local":
            assert not read
    return results


def _assert_same(projects: dict[str, Project], name: str, table: str, results: dict[str, Any]) -> None:
    local, spark = projects["local"], projects["spark"]
    assert _counts(results["spark"]) == _counts(results["local"])
    assert results["spark"].conserved and results["local"].conserved
    assert _rows(spark, table) == _rows(local, table)
    assert _quarantine(spark, table) == _quarantine(local, table)
    sp, lp = (read_position(open_catalog(p).load_table(table), name) for p in (spark, local))
    assert sp == lp and sp is not None


def test_spark_reads_checks_and_lands_an_incremental_sql_source_as_the_local_engine_does(
    projects: dict[str, Project], spark: Any, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = [(i, i, "abc"[i % 3], float(i)) for i in range(1, 301)]
    bad = [
        (1001, 40, "a", -5.0),  # range
        (1002, 41, None, 3.0),  # not_null
        (1003, 42, "z", 3.0),  # accepted_values
        (7, 43, "b", 7.0),  # unique: id 7 twice in the batch (both rows go)
        (1004, 44, "c", 5000.0),  # filtered: not quarantined
    ]
    _insert(db, "orders", good + bad)
    results = _run_both(projects, "app", caplog)
    # The 303 rows between the edges were read in 3 ranges of the cursor; 6 rows a check may refuse came back.
    assert any(m.startswith("spark read 305 rows of the source in 3 range(s)") for m in results["log"]), results["log"]
    assert "spark checks: 6 of 305 rows to check here" in results["log"]
    batch = results["spark"].batches[0]
    assert (batch.rows_in, batch.rows_committed, batch.rows_quarantined, batch.rows_filtered) == (305, 299, 5, 1)
    _assert_same(projects, "app", "raw.orders", results)
    assert {r[2] for r in _quarantine(projects["spark"], "raw.orders")} == {"range", "not_null", "accepted_values", "unique"}

    # Later rows, two of them at the cursor value already committed (300): each lands once.
    _insert(db, "orders", [(2001, 300, "a", 1.0), (2002, 300, "b", 2.0), *((i, i, "u", float(i)) for i in range(301, 350))])
    results = _run_both(projects, "app", caplog)
    assert results["spark"].batches[0].rows_committed == 51
    _assert_same(projects, "app", "raw.orders", results)
    # Nothing new: no batch on either engine.
    results = _run_both(projects, "app", caplog)
    assert results["spark"].batches == results["local"].batches == []
    ids = [r[0] for r in _rows(projects["spark"], "raw.orders")]
    assert len(ids) == len(set(ids)) == 299 + 51


def test_a_merge_read_by_spark_keeps_the_newest_version_of_a_key(
    projects: dict[str, Project], spark: Any, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _insert(db, "changes", [(i, i, f"v{i}", float(i)) for i in range(1, 101)])
    _assert_same(projects, "upd", "raw.accounts", _run_both(projects, "upd", caplog))
    # Key 5 twice in the batch (seq 150 is newer than 120), key 6 updated once, a new key, a refused row.
    _insert(db, "changes", [(5, 120, "old", 1.0), (5, 150, "new", 2.0), (6, 130, "six", 6.5), (500, 140, "n", 1.0), (7, 160, "neg", -1.0)])
    results = _run_both(projects, "upd", caplog)
    _assert_same(projects, "upd", "raw.accounts", results)
    rows = {r[0]: r for r in _rows(projects["spark"], "raw.accounts")}
    assert rows[5][2] == "new" and rows[6][2] == "six" and rows[7][2] == "v7" and 500 in rows
    assert results["spark"].batches[0].rows_quarantined == 1


@pytest.mark.postgres
def test_a_postgres_source_with_a_timestamp_cursor_and_ties_lands_the_same(
    projects: dict[str, Project], spark: Any, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL's types through Spark's JDBC reader (int4, numeric, timestamp with and without time zone,
    date) land as the local engine types them; rows sharing the cursor value (5 per second) are split between
    Spark's ranges and the edges without a loss or a double."""
    import datetime as dt
    import decimal

    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    t0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)

    def insert(ids: range) -> None:
        rows = [
            {"i": i, "q": i % 1000, "a": decimal.Decimal(f"{i}.25"), "d": dt.date(2026, 10, 1 + i % 28),
             "l": dt.datetime(2026, 1, 1, 8, i % 60), "u": t0 + dt.timedelta(seconds=i // 5)}
            for i in ids
        ]
        with engine.begin() as con:
            con.execute(sa.text("insert into orders values (:i, :q, :a, :d, :l, :u)"), rows)

    try:
        with engine.begin() as con:
            con.execute(sa.text(
                "create table orders (order_id bigint primary key, qty int, amount numeric(10,2), placed date, "
                "local_at timestamp, updated_at timestamptz not null)"
            ))
        insert(range(1, 401))
        for project in projects.values():
            _write(
                project.root, "pipelines/pg.yaml",
                f"name: pg\nsource: {{type: sql, url: '{pg_url}', table: orders, cursor: updated_at}}\n"
                "target: {table: raw.pg_orders, mode: merge, keys: [order_id], partition_by: ['day(updated_at)']}\n"
                "checks:\n  - range: {column: qty, max: 990}\n",
            )
        fresh = {engine: load_project(p.root) for engine, p in projects.items()}
        results = _run_both(fresh, "pg", caplog)
        assert any(" in 3 range(s)" in m for m in results["log"]), results["log"]
        _assert_same(fresh, "pg", "raw.pg_orders", results)
        # Rows at the committed second (400 // 5 = 80: ids 401-404) and after it.
        insert(range(401, 431))
        results = _run_both(fresh, "pg", caplog)
        _assert_same(fresh, "pg", "raw.pg_orders", results)
        assert results["spark"].batches[0].rows_committed == 30
        ids = [r[0] for r in _rows(fresh["spark"], "raw.pg_orders")]
        assert ids == list(range(1, 431))
    finally:
        engine.dispose()
