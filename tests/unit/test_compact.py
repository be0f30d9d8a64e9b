"""Compaction (``icefield compact``): small files and files with deletes are rewritten into fewer files in
one ``replace`` snapshot, without changing a row; a concurrent merge that removes or marks a file being
rewritten makes the compaction replan instead of losing that merge. Each test runs on a local folder and on
the S3 server (``tests/stores.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.stores import STORES, Store, make_store

from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.errors import ConfigError
from icefield.write import TableWriter
from icefield.write.compact import compact_table, plan

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string()), ("day", pa.int32()), ("_deleted", pa.bool_())])


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


def _writer(root: Path, store: Store, mode: str = "merge-on-read", **target: Any) -> TableWriter:
    catalog = store.catalog(root / "c.db")
    cfg = TargetConfig(table="t.m", mode="merge", keys=["k"], delete_column="_deleted", properties={"write.merge.mode": mode}, **target)
    return TableWriter(catalog, cfg, "p", LocalEngine())


def _batch(ops: list[tuple[int, str | None]]) -> pa.Table:
    return pa.table(
        {"k": [k for k, _ in ops], "v": [v or "" for _, v in ops], "day": [k % 3 for k, _ in ops], "_deleted": [v is None for _, v in ops]},
        schema=SCHEMA,
    )


def _rows(w: TableWriter) -> list[dict[str, Any]]:
    t = w.load()
    assert t is not None
    return sorted(t.scan().to_arrow().to_pylist(), key=lambda r: r["k"])


def _files(w: TableWriter) -> tuple[int, int]:
    t = w.load()
    assert t is not None
    tasks = list(t.scan().plan_files())
    return len(tasks), len({d.file_path for task in tasks for d in task.delete_files})


def _history(w: TableWriter, n: int) -> TableWriter:
    """``n`` merge batches: inserts, then updates and deletes of earlier keys, each its own small files."""
    for b in range(n):
        ops: list[tuple[int, str | None]] = [(b * 10 + i, f"v{b}") for i in range(10)]
        if b:
            ops += [((b - 1) * 10 + 1, f"u{b}"), ((b - 1) * 10 + 2, None)]
        w.commit(_batch(ops), f"b{b}", {"n": b}, "r")
    return w


def test_compaction_rewrites_small_files_and_deletes_into_one_file_and_changes_no_row(tmp_path: Path, store: Store) -> None:
    w = _history(_writer(tmp_path, store), 6)
    before_rows = _rows(w)
    files, deletes = _files(w)
    assert files >= 6 and deletes >= 5

    res = compact_table(w.catalog, "t.m", sort_by=["k"])
    assert (res.files_removed, res.delete_files_removed, res.files_added) == (files, deletes, 1)
    assert res.rows == len(before_rows) and res.rows_purged == 10, "the 5 updated and 5 deleted rows are dropped"
    assert _files(w) == (1, 0)
    assert _rows(w) == before_rows
    t = w.load()
    assert t is not None
    snap = t.current_snapshot()
    assert snap is not None and snap.summary is not None
    assert snap.summary.operation.value == "replace" and snap.summary["icefield.operation"] == "compact"
    assert snap.summary["total-records"] == str(len(before_rows)) and snap.summary["total-position-deletes"] == "0"
    # The pipeline's position and history stay readable; the rewritten file is sorted by the key.
    assert json.loads(t.metadata.properties["icefield.state.p"]) == {"n": 5}
    (task,) = t.scan().plan_files()
    assert store.exists(task.file.file_path)
    keys = pq.read_table(t.io.new_input(task.file.file_path).open()).column("k").to_pylist()
    assert keys == sorted(keys)

    again = compact_table(w.catalog, "t.m")
    assert (again.files_removed, again.snapshot_id) == (0, None), "nothing left to compact: no new snapshot"
    # Merging goes on on top of the compacted table.
    w.commit(_batch([(3, "after"), (4, None)]), "b9", None, "r")
    expected = {r["k"]: r["v"] for r in before_rows if r["k"] != 4} | {3: "after"}
    assert {r["k"]: r["v"] for r in _rows(w)} == expected


def test_a_partitioned_table_is_compacted_per_partition_and_large_files_are_left_alone(tmp_path: Path, store: Store) -> None:
    w = _history(_writer(tmp_path, store, mode="copy-on-write", partition_by=["day"]), 4)
    t = w.load()
    assert t is not None
    before_rows = _rows(w)
    by_day: dict[int, int] = {}
    for task in t.scan().plan_files():
        by_day[task.file.partition[0]] = by_day.get(task.file.partition[0], 0) + 1
    res = compact_table(w.catalog, "t.m")
    assert res.partitions == 3 and res.files_added == 3
    t = w.load()
    assert t is not None
    assert sorted(task.file.partition[0] for task in t.scan().plan_files()) == [0, 1, 2]
    assert _rows(w) == before_rows

    # With a target smaller than every file, no file is small: nothing to do.
    assert plan(t, target=1, min_input_files=2) == []
    assert compact_table(w.catalog, "t.m", target_file_size=1).files_removed == 0


def test_dry_run_commits_nothing_and_bad_options_name_the_fix(tmp_path: Path, store: Store) -> None:
    w = _history(_writer(tmp_path, store), 3)
    t = w.load()
    assert t is not None
    head = t.current_snapshot().snapshot_id  # type: ignore[union-attr]
    res = compact_table(w.catalog, "t.m", dry_run=True)
    assert res.dry_run and res.files_removed == 3 and res.snapshot_id is None
    assert w.load().current_snapshot().snapshot_id == head  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="'nope'|nope not in table t.m"):
        compact_table(w.catalog, "t.m", sort_by=["nope"])
    with pytest.raises(ConfigError, match="min_input_files=0"):
        compact_table(w.catalog, "t.m", min_input_files=0)


def test_a_group_that_fails_leaves_no_file_of_any_group_and_the_table_as_it_was(tmp_path: Path, store: Store) -> None:
    """Small groups are rewritten two at a time: when one fails, the files the others wrote (before or
    after the failure) are deleted and the error is raised; nothing is committed."""
    from icefield import failpoints

    w = _history(_writer(tmp_path, store), 6)
    t = w.load()
    assert t is not None
    target = 2 * max(task.file.file_size_in_bytes for task in t.scan().plan_files())
    assert len(plan(t, target)) >= 3, "several small groups"
    before_rows, before_files = _rows(w), store.files()
    head = t.current_snapshot().snapshot_id  # type: ignore[union-attr]
    hits: list[str] = []

    def injector(name: str) -> None:
        if name == "rewrite-before-group":
            hits.append(name)
            if len(hits) == 2:
                raise RuntimeError("injected: the second group fails")

    previous = failpoints.install(injector)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            compact_table(w.catalog, "t.m", target_file_size=target)
    finally:
        failpoints.install(previous)
    assert len(hits) >= 2
    assert store.files() == before_files, "no file of any group is left behind"
    assert w.load().current_snapshot().snapshot_id == head  # type: ignore[union-attr]
    assert _rows(w) == before_rows
    res = compact_table(w.catalog, "t.m", target_file_size=target)
    assert res.files_added >= 3 and _rows(w) == before_rows


@pytest.mark.parametrize("rival", ["merge-on-read", "copy-on-write"])
def test_a_merge_committed_during_the_compaction_is_kept(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch, rival: str
) -> None:
    """A merge that marks (merge-on-read) or rewrites (copy-on-write) a file while the compaction rewrites it
    lands first; the compaction's commit then fails its validation, replans on the new snapshot and keeps
    the merge's changes."""
    import icefield.write.compact as compact

    w = _history(_writer(tmp_path, store), 3)
    rival_writer = _writer(tmp_path, store, mode=rival)
    if rival == "copy-on-write":
        t = w.load()
        assert t is not None
        with t.transaction() as tx:
            tx.set_properties({"write.merge.mode": "copy-on-write"})
    real = compact._rewrite
    calls: list[list[str]] = []

    def rewrite_then_race(table: Any, groups: Any, target: int, sort_by: list[str], result: Any) -> Any:
        added = real(table, groups, target, sort_by, result)
        calls.append([f.file_path for f in added])
        if len(calls) == 1:  # the merge lands between the compaction's read and its commit
            rival_writer.commit(_batch([(0, "raced"), (11, None)]), "race", None, "r")
        return added

    monkeypatch.setattr(compact, "_rewrite", rewrite_then_race)
    res = compact_table(w.catalog, "t.m", sort_by=["k"])
    assert len(calls) == 2, "the first commit conflicted and the compaction replanned"
    rows = {r["k"]: r["v"] for r in _rows(w)}
    assert rows[0] == "raced" and 11 not in rows
    assert res.snapshot_id is not None
    assert calls[0] and calls[1]
    assert not any(store.exists(f) for f in calls[0]), "the files of the attempt that lost were removed"
    assert all(store.exists(f) for f in calls[1])


def test_a_pipeline_with_compact_every_keeps_its_merge_on_read_table_compact(tmp_path: Path, store: Store) -> None:
    """``target.maintenance``: every ``compact_every`` commits the runner compacts between batches (and
    expires old snapshots); the rows are those of a run without maintenance, and the run never fails for
    it."""
    import yaml

    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.pipeline.runner import run_pipeline

    def project(name: str, maintenance: dict[str, Any] | None) -> Any:
        root = tmp_path / name
        (root / "pipelines").mkdir(parents=True)
        (root / "drop").mkdir()
        for b in range(6):
            ops = [{"k": b * 10 + i, "v": f"v{b}", "_deleted": False} for i in range(10)]
            if b:
                ops += [{"k": (b - 1) * 10 + 1, "v": f"u{b}", "_deleted": False}, {"k": (b - 1) * 10 + 2, "v": "", "_deleted": True}]
            (root / "drop" / f"b{b}.jsonl").write_text("".join(json.dumps(o) + "\n" for o in ops))
        (root / "icefield.yaml").write_text(yaml.safe_dump(store.project(name=name, warehouse=store.location(name))))
        target: dict[str, Any] = {"table": "t.m", "mode": "merge", "keys": ["k"], "delete_column": "_deleted",
                                  "properties": {"write.merge.mode": "merge-on-read"}}
        if maintenance:
            target["maintenance"] = maintenance
        pipe = {"name": "p", "source": {"type": "files", "path": "drop/*.jsonl"}, "target": target}
        (root / "pipelines" / "p.yaml").write_text(yaml.safe_dump(pipe))
        return load_project(root)

    plain, kept = project("plain", None), project("kept", {"compact_every": 3, "expire_older_than": "0", "retain_last": 1})
    res_plain = run_pipeline(plain, "p")
    res = run_pipeline(kept, "p")
    assert (res.status, len(res.batches), res.compactions) == ("success", 6, 2)
    assert res_plain.compactions == 0

    def state(p: Any) -> tuple[list[tuple[int, str]], int, int, int]:
        t = open_catalog(p).load_table("t.m")
        rows = sorted((r["k"], r["v"]) for r in t.scan(selected_fields=("k", "v")).to_arrow().to_pylist())
        tasks = list(t.scan().plan_files())
        return rows, len(tasks), sum(len(x.delete_files) for x in tasks), len(t.metadata.snapshots)

    rows_plain, files_plain, deletes_plain, _ = state(plain)
    rows, files, deletes, snapshots = state(kept)
    assert rows == rows_plain
    assert (files, deletes) == (1, 0) and deletes_plain > 0 and files_plain > 3
    assert snapshots == 1, "each compaction was followed by an expiry of the older snapshots"

    with pytest.raises(Exception, match="compact_every"):
        project("bad", {"expire_older_than": "7d"})
    with pytest.raises(Exception, match="'soon' is not an age"):
        project("bad2", {"compact_every": 2, "expire_older_than": "soon"})


def test_the_compaction_reads_a_group_as_pyiceberg_scans_it_after_renames_added_columns_and_deletes(tmp_path: Path, store: Store) -> None:
    """Compaction reads many small files at once (``read_group``) instead of through pyiceberg's scan; it
    must return what the scan returns: files without field ids read by the name mapping after a rename,
    a column added later read as nulls, two stored types of one column, position deletes applied."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan
    from pyiceberg.types import LongType

    from icefield.write.compact import read_group

    catalog = store.catalog(tmp_path / "c.db")
    catalog.create_namespace("t")
    table = catalog.create_table("t.r", schema=pa.schema([("k", pa.int64()), ("v", pa.string())]), properties={"write.merge.mode": "merge-on-read"})
    paths = []
    for i, vtype in enumerate([pa.string(), pa.string(), pa.large_string()]):
        path = f"{table.location()}/data/added-{i}.parquet"
        with table.io.new_output(path).create() as out:
            pq.write_table(pa.table({"k": pa.array(range(i * 10, i * 10 + 10), pa.int64()), "v": pa.array([f"s{i}"] * 10, vtype)}), out)
        paths.append(path)
    table.add_files(paths)  # Parquet files without field ids: read by the name mapping
    with table.update_schema() as update:
        update.rename_column("v", "w")
        update.add_column("x", LongType())
    changes = pa.table({"k": [1, 15, 29, 100], "w": ["u1", "u15", None, "new"], "x": [1, 2, None, 4], "_deleted": [False, False, True, False]})
    cfg = TargetConfig(table="t.r", mode="merge", keys=["k"], delete_column="_deleted")
    TableWriter(catalog, cfg, "p", LocalEngine()).commit(changes, "b1", None, "r")

    table = catalog.load_table("t.r")
    tasks = list(table.scan().plan_files())
    assert len(tasks) == 4 and sum(1 for t in tasks if t.delete_files) == 3
    expected = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue()).to_table(tasks)
    got = read_group(table, tasks)
    assert got.schema == expected.schema
    assert got.to_pylist() == expected.to_pylist()
    assert got.num_rows == 30 and {r["k"]: r["w"] for r in got.to_pylist()}[15] == "u15"
    assert sorted(r["k"] for r in got.to_pylist() if r["x"] is not None) == [1, 15, 100]
