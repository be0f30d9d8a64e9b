"""Backfill by date window, end to end on a real SQLite catalog: a ``sql`` source (a SQLite database built
with the standard library) and a ``files`` source. A backfill replaces exactly its window's rows, one
commit per window, gives the same table when run again, leaves the rows outside the window and the
regular run's position alone, and the checks and the quarantine apply as in any run."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from icefield import ConfigError
from icefield.config.window import SUMMARY_WINDOW, SUMMARY_WINDOW_COLUMN, parse_window
from icefield.iceberg.history import SUMMARY_BATCH_ID, read_position

WINDOW = {"column": "updated_at", "size": "1d"}


class SourceDb:
    """A SQLite database of orders that the tests change between runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount INTEGER, updated_at DATETIME)")

    def execute(self, sql: str, *params: Any) -> None:
        con = sqlite3.connect(self.path)
        try:
            con.execute(sql, params)
            con.commit()
        finally:
            con.close()

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        con = sqlite3.connect(self.path)
        try:
            con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", rows)
            con.commit()
        finally:
            con.close()

    def rows(self) -> list[dict[str, Any]]:
        con = sqlite3.connect(self.path)
        try:
            return [dict(zip(("id", "customer", "amount", "updated_at"), r, strict=True)) for r in con.execute("SELECT * FROM orders")]
        finally:
            con.close()


def day_rows(days: range, per_day: int = 4) -> list[tuple[Any, ...]]:
    """``per_day`` orders on each day of January 2026 in ``days``, every 6 hours from midnight (id = day * 10 + n)."""
    return [(d * 10 + n, f"c{n}", d * 100 + n, f"2026-01-{d:02d} {n * 6:02d}:00:00") for d in days for n in range(per_day)]


def sql_pipeline(db: SourceDb, **extra: Any) -> dict[str, Any]:
    return {
        "source": {"type": "sql", "url": f"sqlite:///{db.path}", "table": "orders", "cursor": "updated_at"},
        "target": {"table": "shop.orders"},
        "window": dict(WINDOW),
        **extra,
    }


@pytest.fixture
def db(tmp_path: Path) -> SourceDb:
    return SourceDb(tmp_path / "source.db")


def table_rows(lk: Any) -> list[dict[str, Any]]:
    return sorted(lk.table("shop.orders").scan().to_arrow().to_pylist(), key=lambda r: (r["id"], r["updated_at"], r["amount"]))


def content_hash(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(rows, default=str, sort_keys=True).encode()).hexdigest()


def in_days(rows: list[dict[str, Any]], first: int, last: int) -> list[dict[str, Any]]:
    """The rows whose ``updated_at`` falls on January ``first`` to ``last`` 2026 (inclusive)."""
    return [r for r in rows if datetime(2026, 1, first) <= r["updated_at"] < datetime(2026, 1, last + 1)]


def expected_from_source(db: SourceDb, first: int, last: int) -> list[tuple[int, int]]:
    rows = [r for r in db.rows() if f"2026-01-{first:02d}" <= r["updated_at"][:10] <= f"2026-01-{last:02d}"]
    return sorted((r["id"], r["amount"]) for r in rows)


def window_commits(lk: Any) -> list[dict[str, str]]:
    """The summaries of the snapshots that replaced a window, oldest first."""
    table = lk.table("shop.orders")
    out = []
    for snap in sorted(table.metadata.snapshots, key=lambda s: s.sequence_number):
        props = snap.summary.additional_properties if snap.summary is not None else {}
        if SUMMARY_WINDOW in props:
            out.append({"operation": str(snap.summary.operation.value), **props})
    return out


# ------------------------------------------------------------------ sql source


def test_a_backfill_of_three_days_run_twice_gives_the_same_table(lake, db):
    db.insert(day_rows(range(1, 7)))
    lk = lake({"orders": sql_pipeline(db)})
    lk.run("orders")
    before = table_rows(lk)
    position = read_position(lk.table("shop.orders"), "orders")
    # The source changes inside the window (an update keeping its time, a delete, a late row) and outside it.
    db.execute("UPDATE orders SET amount = 9999 WHERE id = 21")
    db.execute("DELETE FROM orders WHERE id = 32")
    db.insert([(99, "late", 7, "2026-01-04 23:59:59")])
    db.execute("UPDATE orders SET amount = 5555 WHERE id IN (13, 51)")

    first = lk.run("orders", window=parse_window("2026-01-02..2026-01-05"))
    after_first = table_rows(lk)
    second = lk.run("orders", window=parse_window("2026-01-02..2026-01-05"))
    after_second = table_rows(lk)

    # The window holds exactly the source's rows of the window, each once...
    assert sorted((r["id"], r["amount"]) for r in in_days(after_first, 2, 4)) == expected_from_source(db, 2, 4)
    assert not [k for k, n in Counter(r["id"] for r in after_first).items() if n > 1]
    # ... the rows outside it are the ones loaded before (the source's later changes there are not read)...
    assert in_days(after_first, 1, 1) + in_days(after_first, 5, 6) == in_days(before, 1, 1) + in_days(before, 5, 6)
    # ... and the second backfill of the same interval gives the same table.
    assert (len(after_second), content_hash(after_second)) == (len(after_first), content_hash(after_first))
    assert len(after_first) == len(before)  # 24 - 1 deleted + 1 late
    # One commit per day, naming its window; neither backfill moved the regular run's position.
    commits = window_commits(lk)
    assert [c[SUMMARY_WINDOW] for c in commits] == ["2026-01-02..2026-01-03", "2026-01-03..2026-01-04", "2026-01-04..2026-01-05"] * 2
    assert {c[SUMMARY_WINDOW_COLUMN] for c in commits} == {"updated_at"}
    assert len({c[SUMMARY_BATCH_ID] for c in commits}) == 6  # the second backfill replaced again, it did not skip
    assert read_position(lk.table("shop.orders"), "orders") == position
    for result in (first, second):
        assert result.status == "success" and result.window == "2026-01-02..2026-01-05"
        assert [b.window for b in result.batches] == ["2026-01-02..2026-01-03", "2026-01-03..2026-01-04", "2026-01-04..2026-01-05"]
        assert result.rows_committed == 12 and result.conserved
    assert [b.rows_deleted for b in second.batches] == [4, 3, 5]


def test_a_regular_run_between_two_backfills_loses_nothing_and_its_position_is_the_backfills_own(lake, db):
    db.insert(day_rows(range(1, 4)))
    lk = lake({"orders": sql_pipeline(db)})
    lk.run("orders")
    lk.run("orders", window=parse_window("2026-01-01..2026-01-04"))
    # New rows arrive after the position the regular run committed: the backfill did not move it.
    db.insert(day_rows(range(4, 6)))
    regular = lk.run("orders")
    assert regular.rows_committed == 8
    position = read_position(lk.table("shop.orders"), "orders")
    lk.run("orders", window=parse_window("2026-01-01..2026-01-04"))
    rows = table_rows(lk)
    assert sorted(r["id"] for r in rows) == sorted(r[0] for r in day_rows(range(1, 6)))
    assert read_position(lk.table("shop.orders"), "orders") == position
    assert lk.run("orders").rows_committed == 0  # nothing left for the regular run, nothing doubled


def test_window_bounds_are_exact_whatever_text_form_sqlite_keeps(lake, db):
    db.insert(
        [
            (1, "a", 1, "2026-01-01 23:59:59.999999"),
            (2, "b", 2, "2026-01-02 00:00:00"),
            (3, "c", 3, "2026-01-02T00:00:00"),
            (4, "d", 4, "2026-01-02 23:59:59"),
            (5, "e", 5, "2026-01-03 00:00:00.000000"),
            (6, "f", 6, None),
        ]
    )
    lk = lake({"orders": sql_pipeline(db)})
    result = lk.run("orders", window=parse_window("2026-01-02..2026-01-03"))
    assert sorted(r["id"] for r in table_rows(lk)) == [2, 3, 4]
    assert result.rows_in == 3


def test_an_emptied_window_removes_its_rows_and_an_empty_one_creates_no_table(lake, db):
    db.insert(day_rows(range(1, 4)))
    lk = lake({"orders": sql_pipeline(db)})
    lk.run("orders", window=parse_window("2026-01-10..2026-01-11"))
    assert not lk.catalog.table_exists("shop.orders")
    lk.run("orders")
    db.execute("DELETE FROM orders WHERE updated_at LIKE '2026-01-02%'")
    result = lk.run("orders", window=parse_window("2026-01-02..2026-01-03"))
    assert sorted(r["id"] for r in table_rows(lk)) == [10, 11, 12, 13, 30, 31, 32, 33]
    assert [(b.rows_committed, b.rows_deleted) for b in result.batches] == [(0, 4)]


def test_a_backfill_on_a_day_partitioned_table_drops_whole_files(lake, db):
    db.insert(day_rows(range(1, 5)))
    lk = lake({"orders": sql_pipeline(db, target={"table": "shop.orders", "partition_by": ["day(updated_at)"]})})
    lk.run("orders")
    db.execute("UPDATE orders SET amount = 1 WHERE id = 22")
    result = lk.run("orders", window=parse_window("2026-01-02..2026-01-04"))
    assert [(b.files_removed, b.files_added) for b in result.batches] == [(1, 1), (1, 1)]
    assert [r["amount"] for r in table_rows(lk) if r["id"] == 22] == [1]
    assert len(table_rows(lk)) == 16


def test_checks_and_the_quarantine_apply_to_a_backfill(lake, db):
    db.insert(day_rows(range(1, 3)))
    db.insert([(77, None, 1, "2026-01-02 12:00:00")])
    lk = lake({"orders": sql_pipeline(db, checks=[{"not_null": ["customer"]}])})
    result = lk.run("orders", window=parse_window("2026-01-02..2026-01-03"))
    assert (result.rows_in, result.rows_committed, result.rows_quarantined) == (5, 4, 1)
    assert 77 not in [r["id"] for r in table_rows(lk)]
    quarantined = lk.table("shop.orders__quarantine").scan().to_arrow().to_pylist()
    assert len(quarantined) == 1 and '"id": 77' in quarantined[0]["raw"]


# ------------------------------------------------------------------ refusals at run time


def test_a_pipeline_without_a_window_cannot_be_backfilled(lake, db):
    db.insert(day_rows(range(1, 2)))
    body = sql_pipeline(db)
    del body["window"]
    lk = lake({"orders": body})
    with pytest.raises(ConfigError, match=r"orders\.yaml: pipeline orders declares no window.*window: \{column: updated_at"):
        lk.run("orders", window=parse_window("2026-01-01..2026-01-02"))


def test_an_interval_not_on_the_size_is_refused_before_anything_is_read(lake, db):
    db.insert(day_rows(range(1, 2)))
    lk = lake({"orders": sql_pipeline(db)})
    with pytest.raises(ConfigError, match=r"not aligned .*\(1d\).*e\.g\. 2026-01-01\.\.2026-01-03"):
        lk.run("orders", window=parse_window("2026-01-01T06:00..2026-01-03"))
    assert not lk.catalog.table_exists("shop.orders")


@pytest.mark.parametrize(("column", "words"), [("changed_at", "no column 'changed_at'"), ("customer", "not a date or a timestamp")])
def test_a_window_column_the_source_lacks_or_that_is_no_time_is_refused(lake, db, column, words):
    db.insert(day_rows(range(1, 2)))
    lk = lake({"orders": sql_pipeline(db, window={"column": column})})
    with pytest.raises(ConfigError) as info:
        lk.run("orders", window=parse_window("2026-01-01..2026-01-02"))
    assert words in str(info.value) and "fix window.column" in str(info.value)


def test_a_window_column_the_table_has_as_text_is_refused(lake, db):
    db.insert(day_rows(range(1, 2)))
    lk = lake({"orders": sql_pipeline(db, window={"column": "customer"})})
    lk.run("orders")
    with pytest.raises(ConfigError, match=r"column 'customer' of table shop\.orders is string.*fix window\.column"):
        lk.run("orders", window=parse_window("2026-01-01..2026-01-02"))


def test_an_engine_that_cannot_replace_a_window_is_refused(lake, db):
    import pyarrow as pa

    from icefield.engines.base import EngineCapabilities
    from icefield.engines.local import LocalEngine
    from icefield.write import TableWriter

    class Appender(LocalEngine):
        name = "appender"
        capabilities = EngineCapabilities(supports_merge=True)

    db.insert(day_rows(range(1, 2)))
    lk = lake({"orders": sql_pipeline(db)})
    lk.run("orders")
    writer = TableWriter(lk.catalog, lk.project().pipeline("orders").target, "orders", Appender())
    w = parse_window("2026-01-01..2026-01-02")
    with pytest.raises(ConfigError, match=r"engine 'appender' cannot replace a date window's rows.*engine: local"):
        writer.commit(pa.table({"id": [1]}), "b1", None, "r1", window=("updated_at", w.start, w.end))
    assert len(table_rows(lk)) == 4


# ------------------------------------------------------------------ files source


def write_csv(path: Path, rows: list[tuple[Any, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("id,amount,updated_at\n" + "".join(f"{i},{a},{t}\n" for i, a, t in rows), encoding="utf-8")


def test_a_files_source_backfill_replaces_the_window_and_the_regular_run_still_sees_changed_files(lake):
    files = {"source": {"type": "files", "path": "landing/*.csv"}, "target": {"table": "shop.orders"}, "window": dict(WINDOW)}
    lk = lake({"orders": files})
    landing = lk.root / "landing"
    write_csv(landing / "a.csv", [(1, 10, "2026-01-01T10:00:00"), (2, 20, "2026-01-02T10:00:00")])
    write_csv(landing / "b.csv", [(3, 30, "2026-01-02T20:00:00"), (4, 40, "2026-01-03T10:00:00")])
    lk.run("orders")
    position = read_position(lk.table("shop.orders"), "orders")
    write_csv(landing / "b.csv", [(3, 33, "2026-01-02T20:00:00"), (4, 44, "2026-01-03T10:00:00"), (5, 55, "2026-01-02T21:00:00")])

    for _ in range(2):
        result = lk.run("orders", window=parse_window("2026-01-02..2026-01-03"))
        rows = {r["id"]: (r["amount"], r["_source_file"]) for r in table_rows(lk)}
        assert rows == {1: (10, "landing/a.csv"), 2: (20, "landing/a.csv"), 3: (33, "landing/b.csv"), 4: (40, "landing/b.csv"), 5: (55, "landing/b.csv")}
        assert result.rows_committed == 3
        assert read_position(lk.table("shop.orders"), "orders") == position
    # The regular run still sees b.csv changed since it loaded it, and replaces that file's rows.
    lk.run("orders")
    assert sorted((r["id"], r["amount"]) for r in table_rows(lk)) == [(1, 10), (2, 20), (3, 33), (4, 44), (5, 55)]


# ------------------------------------------------------------------ the command line


def test_icefield_run_with_a_window_backfills_and_reports_it(lake, db):
    from icefield.cli import cli

    db.insert(day_rows(range(1, 4)))
    lk = lake({"orders": sql_pipeline(db)})
    res = CliRunner().invoke(cli, ["--project", str(lk.root), "--json", "run", "orders", "--window", "2026-01-02..2026-01-04"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    (result,) = doc["results"]
    assert result["window"] == "2026-01-02..2026-01-04"
    assert [b["window"] for b in result["batches"]] == ["2026-01-02..2026-01-03", "2026-01-03..2026-01-04"]
    assert sorted(r["id"] for r in table_rows(lk)) == [20, 21, 22, 23, 30, 31, 32, 33]
    assert read_position(lk.table("shop.orders"), "orders") is None


def test_a_date_column_is_backfilled_by_whole_days_only(lake, db):
    db.execute("CREATE TABLE placed (id INTEGER PRIMARY KEY, placed DATE)")
    db.execute("INSERT INTO placed VALUES (1, '2026-01-01'), (2, '2026-01-02'), (3, '2026-01-03')")
    body = {
        "source": {"type": "sql", "url": f"sqlite:///{db.path}", "table": "placed", "cursor": "id"},
        "target": {"table": "shop.placed"},
        "window": {"column": "placed", "size": "6h"},
    }
    lk = lake({"placed": body})
    lk.run("placed")
    with pytest.raises(ConfigError, match=r"column 'placed' of table shop\.placed holds dates, and window .* cuts days"):
        lk.run("placed", window=parse_window("2026-01-02T00:00..2026-01-02T06:00"))
    body["window"] = {"column": "placed", "size": "1d"}
    (lk.root / "pipelines" / "placed.yaml").write_text(json.dumps({"name": "placed", **body}), encoding="utf-8")
    db.execute("UPDATE placed SET id = 20 WHERE id = 2")
    lk.run("placed", window=parse_window("2026-01-02..2026-01-03"))
    assert sorted(r["id"] for r in lk.table("shop.placed").scan().to_arrow().to_pylist()) == [1, 3, 20]


def test_a_window_held_by_a_failing_gate_leaves_main_alone_and_passes_after_the_fix(lake, db):
    from icefield import GateFailedError
    from icefield.iceberg.history import head_id

    db.insert(day_rows(range(1, 4)))
    gate = {"sql": "select * from {table} where amount < 0", "name": "no_negative"}
    lk = lake({"orders": sql_pipeline(db, gates=[gate])})
    lk.run("orders")
    before, main = table_rows(lk), head_id(lk.table("shop.orders"))
    position = read_position(lk.table("shop.orders"), "orders")
    db.execute("UPDATE orders SET amount = -5 WHERE id = 21")
    with pytest.raises(GateFailedError):
        lk.run("orders", window=parse_window("2026-01-02..2026-01-03"))
    assert table_rows(lk) == before and head_id(lk.table("shop.orders")) == main
    db.execute("UPDATE orders SET amount = 5 WHERE id = 21")
    # The held batch is checked again first (it still fails: the branch holds the bad row) and discarded by hand,
    # as any held batch; then the backfill runs again and publishes.
    from icefield.write.branches import audit_branch, discard

    discard(lk.table("shop.orders"), audit_branch("orders"))
    result = lk.run("orders", window=parse_window("2026-01-02..2026-01-03"))
    assert result.status == "success"
    assert [r["amount"] for r in table_rows(lk) if r["id"] == 21] == [5]
    assert read_position(lk.table("shop.orders"), "orders") == position


def test_a_file_that_cannot_be_read_stops_a_files_backfill_before_its_rows_are_removed(lake, monkeypatch):
    from icefield import TransientError
    from icefield.ingest import files as files_module

    body = {"source": {"type": "files", "path": "landing/*.csv"}, "target": {"table": "shop.orders"}, "window": dict(WINDOW)}
    lk = lake({"orders": body})
    write_csv(lk.root / "landing" / "a.csv", [(1, 10, "2026-01-02T10:00:00")])
    write_csv(lk.root / "landing" / "b.csv", [(2, 20, "2026-01-02T11:00:00")])
    lk.run("orders")
    # The tests run as root, which reads any file: a refused read is simulated where the source opens the file.
    real = files_module._snapshot

    def refused(path: Path, text: bool) -> Any:
        if path.name == "b.csv":
            raise PermissionError(13, "Permission denied")
        return real(path, text)

    monkeypatch.setattr(files_module, "_snapshot", refused)
    with pytest.raises(TransientError, match=r"landing/b\.csv: cannot be read \(Permission denied\); a window backfill reads every file"):
        lk.run("orders", window=parse_window("2026-01-02..2026-01-03"))
    assert sorted(r["id"] for r in table_rows(lk)) == [1, 2]


def test_a_plan_run_takes_the_window_as_a_start_end_pair_as_airflow_gives_it(lake, db):
    from datetime import UTC, timedelta, timezone

    from icefield.pipeline.plan import build_plan, run_plan

    db.insert(day_rows(range(1, 4)))
    lk = lake({"orders": sql_pipeline(db)})
    project = lk.project()
    tokyo = timezone(timedelta(hours=9))
    interval = (datetime(2026, 1, 2, 9, tzinfo=tokyo), datetime(2026, 1, 3, tzinfo=UTC))
    done = run_plan(project, build_plan(project, ["orders"], models=False), lk.catalog, window=interval)
    (result,) = done.results
    assert done.error is None and result.window == "2026-01-02..2026-01-03"
    assert sorted(r["id"] for r in table_rows(lk)) == [20, 21, 22, 23]
    bad = run_plan(project, build_plan(project, ["orders"], models=False), lk.catalog, window=("2026-01-02",))
    assert isinstance(bad.error[1], ConfigError) and "is not an interval (start, end)" in str(bad.error[1])


def test_the_airflow_task_runs_a_window_backfill_of_its_data_interval(lake, db):
    """The task the DAG factory runs (no Airflow needed on its success path) hands the data interval on."""
    from datetime import UTC

    from icefield.integrations.airflow.tasks import run_node

    db.insert(day_rows(range(1, 4)))
    lk = lake({"orders": sql_pipeline(db)})
    lk.run("orders")
    position = read_position(lk.table("shop.orders"), "orders")
    db.execute("UPDATE orders SET amount = 1 WHERE id = 31")
    interval = (datetime(2026, 1, 3, tzinfo=UTC), datetime(2026, 1, 4, tzinfo=UTC))
    for _ in range(2):
        summary = run_node(str(lk.root), "pipeline orders", window=interval)
        assert summary["status"] == "success" and summary["rows_committed"] == 4
    assert [r["amount"] for r in table_rows(lk) if r["id"] == 31] == [1] and len(table_rows(lk)) == 12
    assert read_position(lk.table("shop.orders"), "orders") == position
