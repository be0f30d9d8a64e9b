"""The files source through ``run_pipeline`` on a real SQLite catalog: CSV, JSON Lines and Parquet,
incremental by file, a changed file replaced (never doubled, never skipped)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icefield.iceberg.history import read_position

TABLE = "shop.orders"
# Longer than the 16 characters pyiceberg keeps of string bounds, and sharing all of them: the column
# bounds of one file's rows cannot tell it apart from another's.
PREFIX = "landing/orders_export_2024_region_eu"


def files_pipeline(pattern: str, **source: Any) -> dict[str, Any]:
    return {"source": {"type": "files", "path": pattern, **source}, "target": {"table": TABLE}}


def write_csv(path: Path, rows: list[tuple[Any, ...]], header: str = "id,qty") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")


def write_jsonl(path: Path, lines: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines), encoding="utf-8")


def pairs(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["id"], r["qty"], r["_source_file"]) for r in rows]


@pytest.fixture
def csv_lake(lake):
    lk = lake({"orders": files_pipeline("landing/*.csv")})
    write_csv(lk.root / f"{PREFIX}_01.csv", [(1, 10), (2, 20)])
    write_csv(lk.root / f"{PREFIX}_02.csv", [(3, 30), (4, 40)])
    write_csv(lk.root / f"{PREFIX}_03.csv", [(5, 50)])
    return lk


def test_csv_files_load_with_their_source_file(csv_lake):
    res = csv_lake.run("orders")
    assert res.status == "success"
    assert len(res.batches) == 3
    assert (res.rows_in, res.rows_committed, res.rows_quarantined) == (5, 5, 0)
    assert res.conserved
    rows = csv_lake.rows(TABLE, "id")
    assert pairs(rows) == [
        (1, 10, f"{PREFIX}_01.csv"),
        (2, 20, f"{PREFIX}_01.csv"),
        (3, 30, f"{PREFIX}_02.csv"),
        (4, 40, f"{PREFIX}_02.csv"),
        (5, 50, f"{PREFIX}_03.csv"),
    ]
    schema = csv_lake.table(TABLE).schema().as_arrow()
    assert schema.field("id").type == pa.int64() and schema.field("qty").type == pa.int64()
    position = read_position(csv_lake.table(TABLE), "orders")
    assert sorted(position["files"]) == [f"{PREFIX}_01.csv", f"{PREFIX}_02.csv", f"{PREFIX}_03.csv"]


def test_rerun_without_a_new_file_commits_nothing(csv_lake):
    csv_lake.run("orders")
    before = csv_lake.snapshot_count(TABLE)
    metadata_before = csv_lake.table(TABLE).metadata_location
    res = csv_lake.run("orders")
    assert res.batches == [] and res.rows_in == 0
    assert csv_lake.snapshot_count(TABLE) == before
    assert csv_lake.table(TABLE).metadata_location == metadata_before


def test_a_new_file_is_loaded_alone(csv_lake):
    csv_lake.run("orders")
    before = csv_lake.snapshot_count(TABLE)
    write_csv(csv_lake.root / f"{PREFIX}_04.csv", [(6, 60), (7, 70)])
    res = csv_lake.run("orders")
    assert [b.rows_committed for b in res.batches] == [2]
    assert res.batches[0].replaced_file is None
    assert csv_lake.snapshot_count(TABLE) == before + 1
    assert [r["id"] for r in csv_lake.rows(TABLE, "id")] == [1, 2, 3, 4, 5, 6, 7]


def test_a_changed_file_replaces_its_rows_and_keeps_the_others(csv_lake):
    csv_lake.run("orders")
    write_csv(csv_lake.root / f"{PREFIX}_02.csv", [(3, 31), (8, 80), (9, 90)])
    res = csv_lake.run("orders")
    assert len(res.batches) == 1
    assert res.batches[0].replaced_file == f"{PREFIX}_02.csv"
    assert res.batches[0].rows_committed == 3
    assert pairs(csv_lake.rows(TABLE, "id")) == [
        (1, 10, f"{PREFIX}_01.csv"),
        (2, 20, f"{PREFIX}_01.csv"),
        (3, 31, f"{PREFIX}_02.csv"),
        (5, 50, f"{PREFIX}_03.csv"),
        (8, 80, f"{PREFIX}_02.csv"),
        (9, 90, f"{PREFIX}_02.csv"),
    ]
    # And a rerun neither reloads nor drops anything.
    assert csv_lake.run("orders").batches == []
    assert len(csv_lake.rows(TABLE)) == 6


def test_a_changed_file_whose_rows_share_data_files_with_others(lake):
    """Rows of several source files in one data file (as after a compaction): replacing one file's rows
    must rewrite that data file, keeping the other files' rows (bounds are truncated, so they cannot
    prove that every row of the data file matches)."""
    lk = lake({"orders": files_pipeline("landing/*.csv")})
    write_csv(lk.root / f"{PREFIX}_01.csv", [(1, 10)])
    write_csv(lk.root / f"{PREFIX}_02.csv", [(2, 20)])
    lk.run("orders")
    table = lk.table(TABLE)
    # Compact by hand: one data file holding both source files' rows.
    table.overwrite(table.scan().to_arrow())
    assert len(list(lk.table(TABLE).scan().plan_files())) == 1
    write_csv(lk.root / f"{PREFIX}_02.csv", [(2, 21)])
    lk.run("orders")
    assert pairs(lk.rows(TABLE, "id")) == [(1, 10, f"{PREFIX}_01.csv"), (2, 21, f"{PREFIX}_02.csv")]


def test_a_file_changed_and_changed_back_is_reloaded_each_time(csv_lake):
    path = csv_lake.root / f"{PREFIX}_03.csv"
    csv_lake.run("orders")
    write_csv(path, [(5, 55)])
    csv_lake.run("orders")
    write_csv(path, [(5, 50)])  # the first content again: same fingerprint as the first load
    res = csv_lake.run("orders")
    assert [b.skipped for b in res.batches] == [False]
    assert [(r["id"], r["qty"]) for r in csv_lake.rows(TABLE, "id") if r["id"] == 5] == [(5, 50)]
    assert len(csv_lake.rows(TABLE)) == 5


def test_several_changes_in_one_run(csv_lake):
    csv_lake.run("orders")
    write_csv(csv_lake.root / f"{PREFIX}_01.csv", [(1, 11)])
    write_csv(csv_lake.root / f"{PREFIX}_03.csv", [(5, 51), (10, 100)])
    write_csv(csv_lake.root / f"{PREFIX}_05.csv", [(11, 110)])
    res = csv_lake.run("orders")
    assert [b.replaced_file for b in res.batches] == [f"{PREFIX}_01.csv", f"{PREFIX}_03.csv", None]
    assert [(r["id"], r["qty"]) for r in csv_lake.rows(TABLE, "id")] == [
        (1, 11),
        (3, 30),
        (4, 40),
        (5, 51),
        (10, 100),
        (11, 110),
    ]


def test_jsonl_with_bad_records_quarantines_them(lake):
    lk = lake({"events": {**files_pipeline("drops/*.jsonl"), "target": {"table": "raw.events"}}})
    write_jsonl(
        lk.root / "drops" / "events_2024_03_01.jsonl",
        [
            {"id": 1, "kind": "click", "ts": "2024-03-01T10:00:00Z"},
            "{not json",
            "[1, 2]",
            {"id": "12abc", "kind": "view", "ts": "2024-03-01T11:00:00Z"},
            {"id": 3, "kind": "view", "ts": "2024-03-01T12:00:00+02:00"},
            "",
        ],
    )
    res = lk.run("events")
    assert (res.rows_in, res.rows_committed, res.rows_quarantined) == (5, 2, 3)
    assert res.conserved
    rows = lk.rows("raw.events", "id")
    assert [(r["id"], r["kind"]) for r in rows] == [(1, "click"), (3, "view")]
    assert rows[0]["ts"] == dt.datetime(2024, 3, 1, 10, tzinfo=dt.UTC)
    assert rows[1]["ts"] == dt.datetime(2024, 3, 1, 10, tzinfo=dt.UTC)
    quarantine = lk.rows("raw.events__quarantine", "source")
    assert [(q["check"], q["source"]) for q in quarantine] == [
        ("decode", "drops/events_2024_03_01.jsonl:2"),
        ("decode", "drops/events_2024_03_01.jsonl:3"),
        ("type", "drops/events_2024_03_01.jsonl:4"),
    ]
    assert quarantine[0]["raw"] == "{not json"
    assert "column 'id' value '12abc'" in quarantine[2]["reason"]
    assert {q["batch_id"] for q in quarantine} == {res.batches[0].batch_id}


def test_jsonl_file_changed_from_all_bad_to_good(lake):
    """The first version of a file commits no rows at all; its corrected version must still load."""
    lk = lake({"events": {**files_pipeline("drops/*.jsonl"), "target": {"table": "raw.events"}}})
    write_jsonl(lk.root / "drops" / "good_events_file_a.jsonl", [{"id": 1, "kind": "click"}])
    path = lk.root / "drops" / "good_events_file_b.jsonl"
    write_jsonl(path, ["{broken", "{broken too"])
    first = lk.run("events")
    assert first.rows_quarantined == 2
    write_jsonl(path, [{"id": 2, "kind": "view"}])
    second = lk.run("events")
    assert second.rows_committed == 1
    assert [r["id"] for r in lk.rows("raw.events", "id")] == [1, 2]


def test_parquet_files_keep_their_types(lake):
    lk = lake({"sales": {**files_pipeline("parquet/*.parquet"), "target": {"table": "raw.sales"}}})
    (lk.root / "parquet").mkdir()
    table = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "amount": pa.array([decimal.Decimal("1.50"), decimal.Decimal("20.00")], pa.decimal128(10, 2)),
            "at": pa.array([dt.datetime(2024, 1, 1, 8), dt.datetime(2024, 1, 2, 9)], pa.timestamp("us")),
        }
    )
    pq.write_table(table, lk.root / "parquet" / "sales_2024_01.parquet")
    res = lk.run("sales")
    assert res.rows_committed == 2
    schema = lk.table("raw.sales").schema().as_arrow()
    assert schema.field("amount").type == pa.decimal128(10, 2)
    assert schema.field("at").type == pa.timestamp("us")
    rows = lk.rows("raw.sales", "id")
    assert [(r["id"], r["amount"], r["_source_file"]) for r in rows] == [
        (1, decimal.Decimal("1.50"), "parquet/sales_2024_01.parquet"),
        (2, decimal.Decimal("20.00"), "parquet/sales_2024_01.parquet"),
    ]
    # A second file with a value that does not fit the table's type is quarantined, not cast.
    bad = pa.table({"id": pa.array([3, 4], pa.int64()), "amount": pa.array([1.005, 2.5]), "at": table.column("at")})
    pq.write_table(bad, lk.root / "parquet" / "sales_2024_02.parquet")
    res = lk.run("sales")
    assert (res.rows_committed, res.rows_quarantined) == (1, 1)
    assert [r["id"] for r in lk.rows("raw.sales", "id")] == [1, 2, 4]


def test_csv_with_declared_columns_types_them_strictly(lake):
    body = files_pipeline("landing/*.csv", columns={"id": "long", "price": "decimal(8,2)", "day": "date"})
    lk = lake({"orders": body})
    write_csv(
        lk.root / "landing" / "prices.csv",
        [(1, "9.99", "2024-03-01"), (2, "9.999", "2024-03-02"), (3, "abc", "2024-03-03"), (4, "5", "2024-02-30")],
        header="id,price,day",
    )
    res = lk.run("orders")
    assert (res.rows_committed, res.rows_quarantined) == (1, 3)
    assert res.conserved
    schema = lk.table(TABLE).schema().as_arrow()
    assert schema.field("price").type == pa.decimal128(8, 2) and schema.field("day").type == pa.date32()
    reasons = [q["reason"] for q in lk.rows("shop.orders__quarantine", "source")]
    assert any("'9.999'" in r for r in reasons) and any("'abc'" in r for r in reasons)
    assert any("'2024-02-30'" in r for r in reasons)


def test_group_files_lands_small_new_files_in_few_commits_and_keeps_each_rows_origin(tmp_path):
    """With group_files, new files are one stream cut every batch_size records (one commit for many small
    files, a file's end and the next one's start in one batch); a bad record is quarantined with its own
    file's coordinates; a changed file is replaced in a batch of its own; a rerun reads nothing."""
    import json as _json

    import yaml

    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.pipeline.quarantine import quarantine_table_name
    from icefield.pipeline.runner import run_pipeline

    root = tmp_path / "proj"
    (root / "pipelines").mkdir(parents=True)
    (root / "drop").mkdir()
    for f in range(6):
        lines = [_json.dumps({"id": f * 100 + i, "v": i}) for i in range(40)]
        if f == 4:
            lines[7] = '{"id": 407, "v": '  # a broken record
        (root / "drop" / f"f{f}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "g", "batch_size": 100}))
    pipe = {"name": "ev", "source": {"type": "files", "path": "drop/*.jsonl", "group_files": True}, "target": {"table": "raw.ev"},
            "checks": [{"range": {"column": "v", "max": 38}}]}  # the last record of every file fails
    (root / "pipelines" / "ev.yaml").write_text(yaml.safe_dump(pipe))
    project = load_project(root)
    catalog = open_catalog(project)

    res = run_pipeline(project, "ev", catalog)
    assert (res.status, res.rows_in, res.rows_committed, res.rows_quarantined) == ("success", 240, 233, 7)
    assert [b.rows_in for b in res.batches] == [100, 100, 40], "240 records in 100-record batches, across files"
    table = catalog.load_table("raw.ev")
    assert len(table.metadata.snapshots) == 3
    rows = table.scan(selected_fields=("id", "_source_file")).to_arrow()
    assert sorted(rows.column("id").to_pylist()) == sorted(f * 100 + i for f in range(6) for i in range(39) if (f, i) != (4, 7))
    assert {r["id"] // 100: r["_source_file"] for r in rows.to_pylist()} == {f: f"drop/f{f}.jsonl" for f in range(6)}
    bad = catalog.load_table(quarantine_table_name("raw.ev")).scan().to_arrow().to_pylist()
    broken = [b for b in bad if b["raw"].startswith('{"id": 407')]
    assert len(broken) == 1 and "f4.jsonl" in broken[0]["source"]
    failed = sorted((_json.loads(b["raw"])["id"], b["source"]) for b in bad if b["check"].startswith("range"))
    assert [i for i, _ in failed] == [f * 100 + 39 for f in range(6)]
    assert all(f"f{i // 100}.jsonl" in src for i, src in failed), failed
    assert sorted(read_position(table, "ev")["files"]) == [f"drop/f{f}.jsonl" for f in range(6)]

    assert run_pipeline(project, "ev", catalog).batches == []

    # f1 changes and f6 arrives: f1 is replaced alone, f6 lands in a batch of its own kind.
    (root / "drop" / "f1.jsonl").write_text(_json.dumps({"id": 100, "v": -1}) + "\n")
    (root / "drop" / "f6.jsonl").write_text(_json.dumps({"id": 600, "v": 6}) + "\n")
    res = run_pipeline(project, "ev", catalog)
    assert [(b.rows_in, b.replaced_file) for b in res.batches] == [(1, "drop/f1.jsonl"), (1, None)]
    ids = catalog.load_table("raw.ev").scan(selected_fields=("id",)).to_arrow().column("id").to_pylist()
    assert sorted(i for i in ids if 100 <= i < 200) == [100] and 600 in ids and len(ids) == 233 - 39 + 2


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_group_files_batches_that_end_inside_a_file_resume_there_after_a_failure(tmp_path, monkeypatch, fmt):
    """A grouped batch that ends inside a file commits a position inside it: a run stopped after it, and a
    run whose next commit fails, resume at that record, so every row lands once."""
    import yaml

    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.errors import IcefieldError
    from icefield.pipeline.runner import run_pipeline
    from icefield.testing import failpoints

    root = tmp_path / "proj"
    (root / "pipelines").mkdir(parents=True)
    (root / "drop").mkdir()
    sizes = [25, 130, 7, 60]  # 222 records: batches of 100 end inside the 2nd and the 4th file
    for f, n in enumerate(sizes):
        t = pa.table({"id": pa.array([f * 1000 + i for i in range(n)], pa.int64()), "v": pa.array([f"{f}-{i}" for i in range(n)])})
        path = root / "drop" / f"f{f}.{fmt}"
        if fmt == "parquet":
            pq.write_table(t, path, row_group_size=16)
        elif fmt == "csv":
            path.write_text("id,v\n" + "".join(f"{r['id']},{r['v']}\n" for r in t.to_pylist()))
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in t.to_pylist()))
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "g", "batch_size": 100}))
    pipe = {"name": "ev", "source": {"type": "files", "path": f"drop/*.{fmt}", "group_files": True,
                                     "columns": {"id": "int64", "v": "string"}},
            "target": {"table": "raw.ev"}}
    (root / "pipelines" / "ev.yaml").write_text(yaml.safe_dump(pipe))
    project = load_project(root)
    catalog = open_catalog(project)

    first = run_pipeline(project, "ev", catalog, max_batches=1)
    assert [b.rows_in for b in first.batches] == [100]
    position = read_position(catalog.load_table("raw.ev"), "ev")
    assert position["partial"]["file"] == f"drop/f1.{fmt}" and position["partial"]["rows"] == 75
    assert sorted(position["files"]) == [f"drop/f0.{fmt}"]

    monkeypatch.setenv(failpoints.ENV, "before-commit:raise@2")
    monkeypatch.setattr(failpoints, "_hits", {})
    failpoints.arm()
    with pytest.raises(IcefieldError):
        run_pipeline(project, "ev", catalog)
    monkeypatch.delenv(failpoints.ENV)
    assert read_position(catalog.load_table("raw.ev"), "ev")["partial"] == {"file": f"drop/f3.{fmt}", "fp": position_fp(root, f"f3.{fmt}"), "rows": 38}

    rest = run_pipeline(project, "ev", catalog)
    assert [b.rows_in for b in rest.batches] == [22]
    rows = catalog.load_table("raw.ev").scan().to_arrow()
    ids = rows.column("id").to_pylist()
    assert sorted(ids) == sorted(f * 1000 + i for f, n in enumerate(sizes) for i in range(n)), "each row once"
    assert {(r["id"] // 1000, r["_source_file"]) for r in rows.to_pylist()} == {(f, f"drop/f{f}.{fmt}") for f in range(4)}
    assert sorted(read_position(catalog.load_table("raw.ev"), "ev")["files"]) == [f"drop/f{f}.{fmt}" for f in range(4)]
    assert run_pipeline(project, "ev", catalog).batches == []


def position_fp(root: Path, name: str) -> str:
    from icefield.ingest.files import fingerprint

    return fingerprint(root / "drop" / name)
