"""Merge-on-read (``write.merge.mode: merge-on-read``): a merge marks the rows it replaces or deletes in
position delete files and writes only the new versions, instead of rewriting the files that hold them.
Each data file keeps at most one delete file; a copy-on-write rewrite or a truncate takes the delete files
of the data files it removes with them; bad settings get an error that names the fix. Each test runs on a
local folder and on the S3 server (``tests/stores.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from tests.stores import STORES, Store, make_store

from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.errors import ConfigError
from icefield.write import TableWriter

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string()), ("seq", pa.int64()), ("_deleted", pa.bool_())])


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


def _writer(root: Path, store: Store, mode: str = "merge-on-read", **target: Any) -> TableWriter:
    catalog = store.catalog(root / "c.db")
    cfg = TargetConfig(table="t.m", mode="merge", keys=["k"], delete_column="_deleted", properties={"write.merge.mode": mode}, **target)
    return TableWriter(catalog, cfg, "p", LocalEngine())


def _batch(ops: list[tuple[int, str | None]], seq: int = 1) -> pa.Table:
    return pa.table(
        {"k": [k for k, _ in ops], "v": [v or "" for _, v in ops], "seq": [seq] * len(ops), "_deleted": [v is None for _, v in ops]},
        schema=SCHEMA,
    )


def _rows(w: TableWriter) -> dict[int, str]:
    t = w.load()
    assert t is not None
    return {r["k"]: r["v"] for r in t.scan().to_arrow().to_pylist()}


def _layout(w: TableWriter) -> dict[str, list[str]]:
    """Each live data file's name -> the names of its delete files."""
    t = w.load()
    assert t is not None
    return {Path(task.file.file_path).name: sorted(Path(d.file_path).name for d in task.delete_files) for task in t.scan().plan_files()}


def test_a_merge_marks_rows_in_delete_files_and_rewrites_nothing(tmp_path: Path, store: Store) -> None:
    w = _writer(tmp_path, store)
    w.commit(_batch([(k, "a") for k in range(10)]), "b0", None, "r")
    w.commit(_batch([(k, "b") for k in range(10, 20)]), "b1", None, "r")
    before = _layout(w)
    assert len(before) == 2 and not any(before.values())

    res = w.commit(_batch([(1, "new"), (12, None), (30, "ins")]), "b2", None, "r")
    assert (res.files_removed, res.rows_deleted) == (0, 1)
    after = _layout(w)
    assert set(before) < set(after), "the old data files stay; one new file holds the new version and the insert"
    assert [len(after[f]) for f in before] == [1, 1], "each touched file got one delete file"
    assert set(after) | {d for ds in after.values() for d in ds} <= store.names(), "every live file is in the store"
    t = w.load()
    assert t is not None
    summary = t.current_snapshot().summary  # type: ignore[union-attr]
    assert summary.operation.value == "overwrite"
    assert summary["added-position-deletes"] == "2" and "deleted-data-files" not in summary.additional_properties
    expected = {k: "a" for k in range(10)} | {k: "b" for k in range(10, 20)} | {1: "new", 30: "ins"}
    del expected[12]
    assert _rows(w) == expected


def test_a_data_file_keeps_one_delete_file_holding_every_marked_row(tmp_path: Path, store: Store) -> None:
    w = _writer(tmp_path, store)
    w.commit(_batch([(k, "a") for k in range(10)]), "b0", None, "r")
    w.commit(_batch([(1, None)]), "b1", None, "r")
    first = _layout(w)
    w.commit(_batch([(2, None), (3, "c")]), "b2", None, "r")
    w.commit(_batch([(3, None)]), "b3", None, "r")  # a row of a file written by a merge-on-read merge
    layout = _layout(w)
    assert all(len(d) <= 1 for d in layout.values())
    base = next(iter(first))
    assert layout[base] != first[base], "the base file's delete file was replaced, not joined by a second"
    t = w.load()
    assert t is not None
    deleted = t.scan().to_arrow().num_rows
    assert _rows(w) == {k: "a" for k in range(10) if k not in (1, 2, 3)} and deleted == 7
    summary = t.current_snapshot().summary  # type: ignore[union-attr]
    # the base file: rows 1, 2 and the old version of 3, in one file; the new version of 3: one more
    assert summary["total-position-deletes"] == "4" and summary["total-delete-files"] == "2"


def test_copy_on_write_takes_a_rewritten_files_delete_file_with_it(tmp_path: Path, store: Store) -> None:
    w = _writer(tmp_path, store)
    w.commit(_batch([(k, "a") for k in range(10)]), "b0", None, "r")
    w.commit(_batch([(k, "b") for k in range(10, 20)]), "b1", None, "r")
    w.commit(_batch([(1, None), (11, None)]), "b2", None, "r")
    t = w.load()
    assert t is not None
    with t.transaction() as tx:
        tx.set_properties({"write.merge.mode": "copy-on-write"})
    w.commit(_batch([(2, "cow")]), "b3", None, "r")
    layout = _layout(w)
    assert sorted(len(d) for d in layout.values()) == [0, 1], "the rewritten file's deletes went with it; the other keeps its own"
    t = w.load()
    assert t is not None
    assert t.current_snapshot().summary["total-delete-files"] == "1"  # type: ignore[union-attr]
    assert _rows(w) == {k: ("cow" if k == 2 else "a") for k in range(10) if k != 1} | {k: "b" for k in range(10, 20) if k != 11}


def test_a_truncate_removes_the_delete_files_too(tmp_path: Path, store: Store) -> None:
    w = _writer(tmp_path, store, order_by="seq", keep_newest=True)
    w.commit(_batch([(k, "a") for k in range(5)], seq=1), "b0", None, "r")
    w.commit(_batch([(1, None)], seq=2), "b1", None, "r")
    w.commit(_batch([(9, "after")], seq=4), "b2", None, "r", truncate_at=[3])
    t = w.load()
    assert t is not None
    summary = t.current_snapshot().summary  # type: ignore[union-attr]
    assert summary["total-delete-files"] == "0" and summary["total-data-files"] == "1"
    assert _rows(w) == {9: "after"}


def test_older_versions_never_replace_newer_ones(tmp_path: Path, store: Store) -> None:
    w = _writer(tmp_path, store, order_by="seq", keep_newest=True)
    w.commit(_batch([(1, "v5"), (2, "v5")], seq=5), "b0", None, "r")
    res = w.commit(pa.concat_tables([_batch([(1, "v3")], seq=3), _batch([(2, "v7")], seq=7)]), "b1", None, "r")
    assert res.rows_written == 1
    assert _rows(w) == {1: "v5", 2: "v7"}
    w.commit(_batch([(2, None)], seq=6), "b2", None, "r")  # a delete older than the stored version
    assert _rows(w) == {1: "v5", 2: "v7"}
    assert all(len(d) <= 1 for d in _layout(w).values())


def test_bad_merge_mode_settings_name_the_fix(tmp_path: Path, store: Store) -> None:
    w = _writer(tmp_path, store, mode="merge-on-write")
    with pytest.raises(ConfigError, match=r"write.merge.mode='merge-on-write'.*'copy-on-write' or 'merge-on-read'"):
        w.commit(_batch([(1, "a")]), "b0", None, "r")
        w.commit(_batch([(1, "b")]), "b1", None, "r")

    v1 = TableWriter(w.catalog, w.target.model_copy(update={"table": "t.v1", "properties": {"format-version": "1", "write.merge.mode": "merge-on-read"}}), "p", LocalEngine())
    v1.commit(_batch([(1, "a")]), "b0", None, "r")
    with pytest.raises(ConfigError, match="needs Iceberg format version 2"):
        v1.commit(_batch([(1, "b")]), "b1", None, "r")


def test_sql_reads_the_files_directly_without_the_deleted_rows(tmp_path: Path, store: Store) -> None:
    import duckdb

    from icefield.query import register_table

    w = _writer(tmp_path, store)
    w.commit(_batch([(k, f"v{k}") for k in range(50)]), "b0", None, "r")
    w.commit(_batch([(3, None), (4, "four"), (60, "sixty")]), "b1", None, "r")
    t = w.load()
    assert t is not None
    con = duckdb.connect()
    register_table(con, t, ("t", "m"))
    got = dict(con.sql('select k, v from t.m').fetchall())
    assert got == _rows(w) and 3 not in got and got[4] == "four" and got[60] == "sixty"
    views = con.execute("select sql from duckdb_views() where view_name = 'm'").fetchall()
    assert len(views) == 1 and "read_parquet" in views[0][0] and "ANTI JOIN" in views[0][0], "the files are read directly, not copied"


def test_row_counts_come_from_the_manifests_less_the_distinct_deleted_rows(tmp_path: Path, store: Store) -> None:
    from icefield.quality.gates import snapshot_row_count

    w = _writer(tmp_path, store)
    w.commit(_batch([(k, "a") for k in range(30)]), "b0", None, "r")
    w.commit(_batch([(1, None), (2, "b"), (40, "c")]), "b1", None, "r")
    w.commit(_batch([(2, None), (3, None), (1, "back")]), "b2", None, "r")
    t = w.load()
    assert t is not None
    for snap in t.metadata.snapshots:
        assert snapshot_row_count(t, snap.snapshot_id) == t.scan(snapshot_id=snap.snapshot_id).to_arrow().num_rows
    assert snapshot_row_count(t, t.current_snapshot().snapshot_id) == 29  # type: ignore[union-attr]
