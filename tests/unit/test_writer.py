"""The writer on a real SQLite catalog: position and batch id in the same commit as the data, idempotent
batches, merge (updates, inserts, deletes, versions in one batch), overwrite of partitions or of the
whole table, and conservation of rows through a pipeline run. Each test that writes runs on a local folder
and on the S3 server (``tests/stores.py``)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.serializers import FromInputFile
from tests.stores import STORES, Store, make_store

from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.errors import TransientError
from icefield.iceberg.history import (
    STATE_PREFIX,
    SUMMARY_BATCH_ID,
    SUMMARY_PIPELINE,
    SUMMARY_RUN_ID,
    find_batch,
    read_position,
)
from icefield.write import TOMBSTONE_SUFFIX, TableWriter, batch_id_for

PIPE = "orders_pipe"


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


@pytest.fixture
def catalog(tmp_path: Path, store: Store) -> Iterator[Any]:
    cat = store.catalog(tmp_path / "catalog.db", name="test")
    yield cat
    cat.engine.dispose()


def writer(catalog: Any, **target: Any) -> TableWriter:
    return TableWriter(catalog, TargetConfig(table="shop.orders", **target), PIPE, LocalEngine())


def orders(*rows: tuple[Any, ...], names: tuple[str, ...] = ("id", "status")) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    types = {"id": pa.int64(), "status": pa.string(), "ts": pa.timestamp("us"), "deleted": pa.bool_(), "v": pa.int64()}
    return pa.table({n: pa.array(list(c), types[n]) for n, c in zip(names, columns, strict=True)})


def content(table: Any, *cols: str, snapshot_id: int | None = None) -> list[tuple[Any, ...]]:
    rows = table.scan(snapshot_id=snapshot_id).to_arrow().to_pylist()
    return sorted(tuple(r[c] for c in cols) for r in rows)


def all_metadata(table: Any) -> list[Any]:
    """Every metadata file the table went through, oldest first."""
    paths = [entry.metadata_file for entry in table.metadata.metadata_log] + [table.metadata_location]
    return [FromInputFile.table_metadata(table.io.new_input(p)) for p in paths]


# ------------------------------------------------------------------ one commit: data + position + batch id


def test_position_and_batch_id_are_in_the_commit_of_the_data(catalog):
    w = writer(catalog)
    first = w.commit(orders((1, "new"), (2, "new")), "batch-1", {"cursor": 2}, "run-1")
    second = w.commit(orders((3, "paid")), "batch-2", {"cursor": 3}, "run-2")
    assert not first.skipped and not second.skipped
    table = w.load()

    for wr, batch, run, rows in [(first, "batch-1", "run-1", [(1,), (2,)]), (second, "batch-2", "run-2", [(1,), (2,), (3,)])]:
        snap = table.snapshot_by_id(wr.snapshot_id)
        assert snap is not None
        summary = snap.summary
        assert (summary[SUMMARY_PIPELINE], summary[SUMMARY_BATCH_ID], summary[SUMMARY_RUN_ID]) == (PIPE, batch, run)
        assert content(table, "id", snapshot_id=wr.snapshot_id) == rows  # this snapshot holds the rows

    # Every metadata file that made a snapshot current carries the position of that very batch: the data
    # and the position were swapped in together, never one without the other.
    positions: dict[int | None, set[str | None]] = {}
    for md in all_metadata(table):
        positions.setdefault(md.current_snapshot_id, set()).add(md.properties.get(STATE_PREFIX + PIPE))
    assert positions[first.snapshot_id] == {json.dumps({"cursor": 2}, separators=(",", ":"))}
    assert positions[second.snapshot_id] == {json.dumps({"cursor": 3}, separators=(",", ":"))}
    assert positions.get(None, {None}) == {None}  # before the first data, no position
    assert read_position(table, PIPE) == {"cursor": 3}
    assert find_batch(table, "batch-1") == first.snapshot_id


def test_a_committed_batch_is_skipped(catalog):
    w = writer(catalog)
    first = w.commit(orders((1, "new")), "batch-1", {"cursor": 1}, "run-1")
    table = w.load()
    snapshots, location = len(table.metadata.snapshots), table.metadata_location
    again = w.commit(orders((1, "new")), "batch-1", {"cursor": 1}, "run-2")
    assert again.skipped is True
    assert again.snapshot_id == first.snapshot_id
    table = w.load()
    assert len(table.metadata.snapshots) == snapshots
    assert table.metadata_location == location
    assert content(table, "id") == [(1,)]


def test_batch_ids_are_deterministic():
    assert batch_id_for("p", "files:a.csv:None->1:abc") == batch_id_for("p", "files:a.csv:None->1:abc")
    assert batch_id_for("p", "k") != batch_id_for("q", "k")
    assert batch_id_for("p", "k1") != batch_id_for("p", "k2")


def test_snapshots_of_other_writers_do_not_confuse_the_batch_lookup(catalog):
    w = writer(catalog)
    w.commit(orders((1, "new")), "batch-1", {"cursor": 1}, "run-1")
    w.load().append(orders((2, "other writer")))  # no icefield summary at all
    assert find_batch(w.load(), "batch-1") is not None
    res = w.commit(orders((3, "new")), "batch-2", {"cursor": 3}, "run-2")
    assert not res.skipped
    assert content(w.load(), "id") == [(1,), (2,), (3,)]


def test_quarantine_style_commit_without_position_sets_no_property(catalog):
    w = writer(catalog)
    w.commit(orders((1, "new")), "batch-1", None, "run-1")
    table = w.load()
    assert read_position(table, PIPE) is None
    assert table.current_snapshot().summary[SUMMARY_BATCH_ID] == "batch-1"


# ------------------------------------------------------------------ merge


MERGE = {"mode": "merge", "keys": ["id"]}


def test_merge_updates_and_inserts(catalog):
    w = writer(catalog, **MERGE)
    w.commit(orders((1, "new"), (2, "new"), (3, "new")), "b1", None, "r")
    res = w.commit(orders((2, "paid"), (4, "new")), "b2", None, "r")
    assert content(w.load(), "id", "status") == [(1, "new"), (2, "paid"), (3, "new"), (4, "new")]
    assert res.rows_deleted == 0


def test_merge_deletes_by_delete_column(catalog):
    w = writer(catalog, **MERGE, delete_column="deleted")
    w.create(orders(names=("id", "status")).schema)
    names = ("id", "status", "deleted")
    w.commit(orders((1, "new", False), (2, "new", False), (3, "new", False), names=names), "b1", None, "r")
    res = w.commit(orders((2, "paid", False), (3, None, True), (9, None, True), (4, "new", None), names=names), "b2", None, "r")
    table = w.load()
    assert content(table, "id", "status") == [(1, "new"), (2, "paid"), (4, "new")]
    assert res.rows_deleted == 1
    assert "deleted" not in table.schema().as_arrow().names


def test_three_versions_of_a_key_in_one_batch_give_the_newest_by_order_by(catalog):
    w = writer(catalog, **MERGE, order_by="ts")
    names = ("id", "status", "ts")
    t = [dt.datetime(2024, 1, 1, h) for h in range(6)]
    # Into an empty table: the newest version is neither the first nor the last of the batch.
    w.commit(orders((7, "mid", t[2]), (7, "newest", t[3]), (7, "old", t[1]), (8, "only", t[1]), names=names), "b1", None, "r")
    assert content(w.load(), "id", "status") == [(7, "newest"), (8, "only")]
    # Into an existing row.
    w.commit(orders((8, "b", t[5]), (8, "c", t[4]), (8, "a", t[2]), names=names), "b2", None, "r")
    assert content(w.load(), "id", "status", "ts") == [(7, "newest", t[3]), (8, "b", t[5])]


def test_a_version_without_order_by_value_is_not_the_newest(catalog):
    w = writer(catalog, **MERGE, order_by="v")
    names = ("id", "status", "v")
    w.commit(orders((1, "two", 2), (1, "unknown", None), (1, "one", 1), names=names), "b1", None, "r")
    assert content(w.load(), "id", "status") == [(1, "two")]


def test_newest_version_being_a_delete_removes_the_key(catalog):
    w = writer(catalog, **MERGE, order_by="v", delete_column="deleted")
    w.create(orders(names=("id", "status", "v")).schema)
    names = ("id", "status", "v", "deleted")
    w.commit(orders((1, "a", 1, False), (2, "a", 1, False), names=names), "b1", None, "r")
    w.commit(orders((1, "b", 2, False), (1, None, 3, True), (2, None, 2, True), (2, "c", 3, False), names=names), "b2", None, "r")
    assert content(w.load(), "id", "status") == [(2, "c")]


def test_merge_of_a_key_held_twice_leaves_one_row(catalog):
    """A key that an earlier writer appended twice (in two data files) ends up exactly once."""
    w = writer(catalog, **MERGE)
    w.load() or w.create(orders().schema)
    w.load().append(orders((1, "dup-a")))
    w.load().append(orders((1, "dup-b"), (2, "x")))
    w.commit(orders((1, "merged")), "b1", None, "r")
    assert content(w.load(), "id", "status") == [(1, "merged"), (2, "x")]


def test_columns_stored_under_sanitized_names_keep_their_values_in_a_merge_and_in_sql(catalog):
    """pyiceberg stores a name that is not a valid Avro name under another (``order-amount`` as
    ``order_x2Damount``): reads must match such columns by field id. Matched by name, a copy-on-write
    merge rewrote every untouched row of them as NULL and the SQL view showed NULLs."""
    import duckdb

    from icefield.query import register_table

    w = TableWriter(catalog, TargetConfig(table="shop.orders", mode="merge", keys=["id"]), PIPE, LocalEngine())
    first = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "order-amount": [10.0, 20.0, 30.0], "info": [{"zip-code": "a"}] * 3})
    w.commit(first, "b1", None, "r")
    w.commit(pa.table({"id": pa.array([2], pa.int64()), "order-amount": [99.0], "info": [{"zip-code": "b"}]}), "b2", None, "r")
    table = w.load()
    assert content(table, "id", "order-amount") == [(1, 10.0), (2, 99.0), (3, 30.0)]
    assert content(table, "id", "info") == [(1, {"zip-code": "a"}), (2, {"zip-code": "b"}), (3, {"zip-code": "a"})]
    con = duckdb.connect()
    register_table(con, table, ("shop", "orders"))
    assert con.sql('SELECT id, "order-amount", info[\'zip-code\'] FROM shop.orders ORDER BY id').fetchall() == [(1, 10.0, "a"), (2, 99.0, "b"), (3, 30.0, "a")]


def long_keys(numbers: Any, v: str, key_type: pa.DataType) -> pa.Table:
    # Keys longer than the 16 characters pyiceberg keeps of string bounds, all sharing those 16.
    return pa.table({"k": pa.array([f"customer-region-eu-{i:08d}" for i in numbers], key_type), "v": [v] * len(numbers)})


def test_merge_finds_long_string_keys_despite_truncated_bounds(catalog):
    w = TableWriter(catalog, TargetConfig(table="shop.customers", mode="merge", keys=["k"]), PIPE, LocalEngine())
    w.commit(long_keys(range(0, 5), "a", pa.large_string()), "b1", None, "r")
    w.commit(long_keys(range(5, 10), "a", pa.large_string()), "b2", None, "r")
    w.commit(long_keys([3, 7, 20], "b", pa.large_string()), "b3", None, "r")
    rows = content(w.load(), "k", "v")
    assert len(rows) == 11
    assert [k[-2:] for k, v in rows if v == "b"] == ["03", "07", "20"]


def test_merge_of_string_keys_typed_as_string(catalog):
    w = TableWriter(catalog, TargetConfig(table="shop.customers", mode="merge", keys=["k"]), PIPE, LocalEngine())
    w.commit(long_keys(range(0, 3), "a", pa.string()), "b1", None, "r")
    w.commit(long_keys([1, 5], "b", pa.string()), "b2", None, "r")
    assert [v for _, v in content(w.load(), "k", "v")] == ["a", "b", "a", "b"]


def test_merge_model_with_a_text_key_runs_twice(lake, store):
    from icefield import run_model

    lk = lake({"c": {"source": {"type": "files", "path": "drops/*.jsonl"}, "target": {"table": "shop.events"}}}, store.project())
    (lk.root / "models").mkdir()
    (lk.root / "models" / "latest.sql").write_text(
        "-- target: shop.latest\n-- mode: merge\n-- keys: [sku]\nselect sku, max(v) as v from shop.events group by sku\n"
    )
    (lk.root / "drops").mkdir()
    (lk.root / "drops" / "a.jsonl").write_text("".join(json.dumps({"sku": f"sku-{i}", "v": 1}) + "\n" for i in range(3)))
    lk.run("c")
    run_model(lk.project(), "latest", catalog=lk.catalog)
    (lk.root / "drops" / "b.jsonl").write_text(json.dumps({"sku": "sku-1", "v": 2}) + "\n")
    lk.run("c")
    run_model(lk.project(), "latest", catalog=lk.catalog)
    assert [(r["sku"], r["v"]) for r in lk.rows("shop.latest", "sku")] == [("sku-0", 1), ("sku-1", 2), ("sku-2", 1)]


# ------------------------------------------------------------------ overwrite


def day_rows(*rows: tuple[int, str, int]) -> pa.Table:
    return orders(*[(i, s, dt.datetime(2024, 3, d, 12)) for i, s, d in rows], names=("id", "status", "ts"))


def test_overwrite_with_day_partitions_replaces_only_the_touched_partitions(catalog):
    w = writer(catalog, mode="overwrite", partition_by=["day(ts)"])
    w.commit(day_rows((1, "d1", 1), (2, "d2", 2), (3, "d2", 2), (4, "d3", 3)), "b1", None, "r")
    res = w.commit(day_rows((5, "d2-new", 2), (6, "d4", 4)), "b2", None, "r")
    table = w.load()
    assert content(table, "id", "status") == [(1, "d1"), (4, "d3"), (5, "d2-new"), (6, "d4")]
    assert res.files_removed == 1
    assert [str(f.transform) for f in table.spec().fields] == ["day"]


def test_overwrite_table_replaces_everything(catalog):
    w = writer(catalog, mode="overwrite", overwrite="table", partition_by=["day(ts)"])
    w.commit(day_rows((1, "d1", 1), (2, "d2", 2)), "b1", None, "r")
    w.commit(day_rows((3, "d2", 2)), "b2", None, "r")
    assert content(w.load(), "id") == [(3,)]


def test_overwrite_of_an_unpartitioned_table_replaces_everything(catalog):
    w = writer(catalog, mode="overwrite")
    w.commit(orders((1, "a"), (2, "a")), "b1", None, "r")
    w.commit(orders((3, "b")), "b2", None, "r")
    assert content(w.load(), "id", "status") == [(3, "b")]


# ------------------------------------------------------------------ conservation through a run


def test_rows_in_equal_committed_plus_quarantined_plus_filtered(lake, store):
    body = {
        "source": {"type": "files", "path": "drops/*.jsonl"},
        "target": {"table": "shop.events"},
        "checks": [
            {"not_null": ["kind"]},
            {"filter": "kind <> 'heartbeat'"},
            {"accepted_values": {"column": "kind", "values": ["click", "view", "heartbeat"]}},
            {"range": {"column": "n", "min": 0}},
        ],
    }
    lk = lake({"events": body}, store.project())
    lines = [
        {"id": 1, "kind": "click", "n": 1},
        {"id": 2, "kind": "heartbeat", "n": 1},  # filtered
        {"id": 3, "kind": None, "n": 1},  # not_null
        {"id": 4, "kind": "buy", "n": 1},  # accepted_values
        {"id": 5, "kind": "view", "n": -1},  # range
        {"id": 6, "kind": "heartbeat", "n": -1},  # filtered, though it also fails range
        {"id": 7, "kind": None, "n": -1},  # not_null only, though the filter drops nulls too
        '{"id": 8, "kind": "click", "n": "x"}',  # type
        "not json",  # decode
        {"id": 10, "kind": "view", "n": 2},
    ]
    (lk.root / "drops").mkdir()
    (lk.root / "drops" / "a.jsonl").write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    (lk.root / "drops" / "b.jsonl").write_text(json.dumps({"id": 11, "kind": "click", "n": "12abc"}) + "\n")
    res = lk.run("events")
    assert res.conserved
    assert (res.rows_in, res.rows_committed, res.rows_quarantined, res.rows_filtered) == (11, 2, 7, 2)
    for batch in res.batches:
        assert batch.rows_in == batch.rows_committed + batch.rows_quarantined + batch.rows_filtered
    # The counts are what the tables hold.
    assert [r["id"] for r in lk.rows("shop.events", "id")] == [1, 10]
    assert lk.table("shop.events").location().startswith(store.uri), "the table lives in the store"
    quarantine = lk.rows("shop.events__quarantine", "source")
    assert len(quarantine) == res.rows_quarantined
    assert sorted(q["check"] for q in quarantine) == ["accepted_values", "decode", "not_null", "not_null", "range", "type", "type"]


# ------------------------------------------------------------------ copy-on-write: streamed rewrite per file


def test_probe_finds_the_same_rows_by_binary_search_as_by_hashing() -> None:
    """A sorted integer or time key column is searched by binary search (duplicates included); an
    unsorted one, or strings, by a hash probe: both give every matching row, in ascending order."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StringType, TimestampType

    from icefield.engines.local import _Probe

    class File:  # a data file without bounds: every value is probed
        lower_bounds: dict[int, bytes] = {}
        upper_bounds: dict[int, bytes] = {}

    def expected(column: list[Any], wanted: list[Any]) -> list[int]:
        return [i for i, v in enumerate(column) if v in set(wanted)]

    t0 = dt.datetime(2026, 1, 1)
    cases: list[tuple[Any, pa.DataType, list[Any], list[Any]]] = [
        (LongType(), pa.int64(), [1, 3, 3, 3, 5, 8, 9, 12], [3, 8, 10, 12, 0]),  # sorted, a key held three times
        (LongType(), pa.int64(), [9, 1, 5, 3, 12, 3], [3, 12]),  # unsorted
        (TimestampType(), pa.timestamp("us"), [t0 + dt.timedelta(seconds=s) for s in (0, 5, 9, 9, 30)], [t0 + dt.timedelta(seconds=9)]),
        (StringType(), pa.large_string(), ["b", "a", "c", "a"], ["a", "z"]),
    ]
    for iceberg_type, arrow_type, column, wanted in cases:
        schema = Schema(NestedField(1, "k", iceberg_type, required=False))
        probe = _Probe(schema, "k", pa.chunked_array([pa.array(wanted, arrow_type)]))
        stored = pa.chunked_array([pa.array(column[:3], arrow_type), pa.array(column[3:], arrow_type)])
        found = probe.positions(stored, File())
        assert found.type == pa.int64()
        assert found.to_pylist() == expected(column, wanted), (arrow_type, column)


def test_copy_on_write_rewrites_only_the_files_holding_a_key_each_in_key_order(catalog):
    """Each file that holds a changed key is rewritten on its own, sorted by key with the new versions in
    place, so its key range stays as tight as it was; files holding no key are kept as they are."""
    w = writer(catalog, **MERGE, delete_column="deleted")
    names = ("id", "status", "deleted")
    for lo in (0, 100, 200, 300):  # four files of 50 keys each: lo, lo + 2, ..., lo + 98
        w.commit(orders(*((i, "old", False) for i in range(lo, lo + 100, 2)), names=names), f"load-{lo}", None, "r")
    before = {f.file.file_path for f in w.load().scan().plan_files()}
    res = w.commit(orders((102, "new", False), (105, "inserted", False), (310, None, True), (500, "appended", False), names=names), "b", None, "r")
    table = w.load()
    rows = dict(content(table, "id", "status"))
    assert rows[102] == "new" and rows[105] == "inserted" and rows[500] == "appended" and 310 not in rows
    assert len(rows) == 200 - 1 + 2
    import pyarrow.parquet as pq

    files = {f.file.file_path: pq.read_table(table.io.new_input(f.file.file_path).open(), columns=["id"]).column("id").to_pylist() for f in table.scan().plan_files()}
    assert all(ids == sorted(ids) for ids in files.values())
    spans = {(min(ids), max(ids)): path in before for path, ids in files.items()}
    # The files of keys 0-98 and 200-298 are kept; those holding 102 and 310 are rewritten with their
    # range; the new keys (105 and 500) go to a new file.
    assert spans == {(0, 98): True, (100, 198): False, (200, 298): True, (300, 398): False, (105, 500): False}
    assert res.rows_deleted == 1 and res.files_removed == 2 and res.files_added == 3


def test_a_merging_run_takes_the_files_it_wrote_from_memory_with_the_same_rows_as_from_parquet(catalog, monkeypatch):
    """While a run keeps them (``RECENT.hold``), a copy-on-write merge takes the files this process wrote
    from memory instead of reading the Parquet: the table ends up the same as without it, through updates,
    deletes, a dictionary-encoded column and a column added later. A file of another size is read from
    disk, and releasing the hold forgets every file."""
    import pyarrow.parquet as pq

    from icefield.iceberg.datafiles import RECENT

    statuses = ["new", "paid", "shipped"]

    def batch(lo: int, hi: int, version: int, extra: bool = False) -> pa.Table:
        ids = list(range(lo, hi))
        cols: dict[str, Any] = {
            "id": pa.array(ids, pa.int64()),
            "status": pa.array([statuses[(i + version) % 3] for i in ids], pa.string()),
            "deleted": pa.array([i % 7 == version for i in ids]),
        }
        if extra:
            cols["note"] = pa.array([f"v{version}-{i}" for i in ids], pa.string())
        return pa.table(cols)

    batches = [batch(0, 3000, 0), batch(1000, 4000, 1), batch(0, 500, 2, extra=True), batch(2500, 3500, 3, extra=True)]
    reads: list[str] = []
    real = pq.ParquetFile

    def counting(source: Any, *a: Any, **k: Any) -> Any:
        reads.append(str(source))
        return real(source, *a, **k)

    monkeypatch.setattr(pq, "ParquetFile", counting)
    results = {}
    for name, held in (("shop.plain", False), ("shop.held", True)):
        w = TableWriter(catalog, TargetConfig(table=name, mode="merge", keys=["id"], delete_column="deleted"), PIPE, LocalEngine())
        w.create(batches[0].drop(["deleted"]).schema)
        reads.clear()
        if held:
            RECENT.hold()
        try:
            for i, b in enumerate(batches):
                if "note" in b.column_names:
                    w.evolve(w.load(), b.drop(["deleted"]).schema)
                w.commit(b, f"b{i}", None, "r")
            if held:
                live = [t.file for t in w.load().scan().plan_files()]
                assert all(RECENT.get(f.file_path, f.file_size_in_bytes) is not None for f in live)
                assert RECENT.get(live[0].file_path, live[0].file_size_in_bytes + 1) is None
        finally:
            if held:
                RECENT.release()
        results[name] = (content(w.load(), "id", "status", "note"), len(reads))
    assert results["shop.held"][0] == results["shop.plain"][0]
    expected: dict[int, tuple[Any, ...]] = {}
    for b in batches:
        for r in b.to_pylist():
            if r["deleted"]:
                expected.pop(r["id"], None)
            else:
                expected[r["id"]] = (r["id"], r["status"], r.get("note"))
    assert results["shop.plain"][0] == sorted(expected.values())
    assert results["shop.plain"][1] > 0 and results["shop.held"][1] == 0
    assert RECENT.get(live[0].file_path, live[0].file_size_in_bytes) is None


def test_tombstones_are_recorded_during_the_merge_and_before_the_data_commit(catalog, monkeypatch):
    """The batch's deletes go to the tombstone table in a thread of their own while the data files are
    written, and always land first: the data commit waits for them, a failed tombstone commit fails the
    batch with nothing of it in the table, and a failed merge raises its own error."""
    w = writer(catalog, **MERGE, order_by="v", keep_newest=True, delete_column="deleted")
    names = ("id", "status", "v", "deleted")
    w.create(orders(names=("id", "status", "v")).schema)
    w.commit(orders((1, "a", 1, False), (2, "a", 1, False), names=names), "b1", None, "r")
    graves_table = "shop.orders" + TOMBSTONE_SUFFIX
    from pyiceberg.table import Transaction

    threads: list[str] = []
    landed: list[str] = []
    real_commit = TableWriter.commit
    real_land = Transaction.commit_transaction

    def commit(self: TableWriter, data: pa.Table, batch_id: str, *a: Any, **k: Any) -> Any:
        import threading

        threads.append(f"{batch_id} in {threading.current_thread().name.split('_')[0]}")
        return real_commit(self, data, batch_id, *a, **k)

    def land(self: Transaction) -> Any:
        landed.append(self._table.name()[-1])
        return real_land(self)

    monkeypatch.setattr(TableWriter, "commit", commit)
    monkeypatch.setattr(Transaction, "commit_transaction", land)
    w.commit(orders((1, None, 2, True), (2, "b", 2, False), names=names), "b2", None, "r")
    assert threads == ["b2 in MainThread", "b2#tombstones in tombstones"]
    assert landed == ["orders" + TOMBSTONE_SUFFIX, "orders"]
    assert content(w.load(), "id", "status") == [(2, "b")]
    assert content(catalog.load_table(graves_table), "id", "v") == [(1, 2)]

    def failing(self: TableWriter, data: pa.Table, batch_id: str, *a: Any, **k: Any) -> Any:
        if batch_id.endswith("#tombstones"):
            raise TransientError("tombstone commit failed")
        return real_commit(self, data, batch_id, *a, **k)

    monkeypatch.setattr(TableWriter, "commit", failing)
    with pytest.raises(TransientError, match="tombstone commit failed"):
        w.commit(orders((2, None, 3, True), names=names), "b3", None, "r")
    assert content(w.load(), "id", "status") == [(2, "b")] and find_batch(w.load(), batch_id_for(PIPE, "b3")) is None

    monkeypatch.setattr(TableWriter, "commit", real_commit)
    real_merge = LocalEngine.merge

    def broken_merge(self: LocalEngine, table: Any, *a: Any, **k: Any) -> Any:
        if table.name()[-1] == "orders":
            k["on_tombstones"](pa.table({"id": pa.array([2], pa.int64()), "v": pa.array([3], pa.int64())}))
            raise RuntimeError("merge failed")
        return real_merge(self, table, *a, **k)

    monkeypatch.setattr(LocalEngine, "merge", broken_merge)
    with pytest.raises(RuntimeError, match="merge failed"):
        w.commit(orders((2, None, 3, True), names=names), "b4", None, "r")
    assert content(w.load(), "id", "status") == [(2, "b")]
