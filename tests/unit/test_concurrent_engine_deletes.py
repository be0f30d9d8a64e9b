"""Another engine's merge-on-read delete committed while an icefield merge or compaction is in flight is
never undone (interop finding D1).

A copy-on-write merge or a compaction replaces whole data files. When another writer (Spark's ``DELETE``
in merge-on-read mode, say) marks a row of one of those files in a position delete file meanwhile, and
one more commit lands after that delete, the replacing commit must still see the delete and replan:
otherwise the rewritten file brings the deleted row back. The check covers every snapshot since the
operation planned, not only the newest one. The rival engine runs in a process of its own; icefield's
operation is held between its plan and its commit while the rival commits. The last test checks the
producers' validation itself, as Iceberg's commit retry runs it (icefield's writers commit once and
replan on a conflict, so the end-to-end tests pass by that replan too).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from icefield.catalog import sql_catalog
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.write import TableWriter

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string())])

# The other engine: a merge-on-read delete (a position delete file in a ``delete`` snapshot, as Spark's
# DELETE writes it) or an append, committed from its own process on the same catalog.
RIVAL = r"""
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.table.snapshots import Operation

from icefield.catalog import sql_catalog
from icefield.iceberg.schema import conform_to_table
from icefield.iceberg.deletes import write_position_deletes
from icefield.iceberg.producers import RowDelta

root, table_name, action, key = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
catalog = sql_catalog("icefield", f"sqlite:///{root / 'c.db'}", (root / "wh").resolve().as_uri())
table = catalog.load_table(tuple(table_name.split(".")))
if action == "append":
    table.append(conform_to_table(table, pa.table({"k": pa.array([key], pa.int64()), "v": ["appended"]})))
    sys.exit(0)
marks = []
for task in table.scan().plan_files():
    keys = pq.read_table(task.file.file_path.removeprefix("file://"), columns=["k"]).column("k")
    positions = pc.indices_nonzero(pc.equal(keys, key))
    if len(positions):
        marks.append((task.file, positions))
assert marks, f"key {key} is in no data file"
deletes = write_position_deletes(table, marks)
tx = table.transaction()
producer = RowDelta(operation=Operation.DELETE, transaction=tx, io=table.io, branch="main", snapshot_properties={"engine": "rival"})
producer.referenced = {f for f, _ in marks}
with producer as p:
    for d in deletes:
        p.append_data_file(d)
tx.commit_transaction()
"""


def _catalog(root: Path) -> Any:
    return sql_catalog("icefield", f"sqlite:///{root / 'c.db'}", (root / "wh").resolve().as_uri())


def _writer(root: Path, **properties: str) -> TableWriter:
    target = TargetConfig(table="t.m", mode="merge", keys=["k"], properties={"write.merge.mode": "copy-on-write", **properties})
    return TableWriter(_catalog(root), target, "p", LocalEngine())


def _batch(keys: range | list[int], value: str) -> pa.Table:
    return pa.table({"k": pa.array(list(keys), pa.int64()), "v": [f"{value}{k}" for k in keys]}, schema=SCHEMA)


def _two_files(root: Path, **properties: str) -> TableWriter:
    """The table ``t.m`` with two data files: keys 1-100 and 101-200."""
    w = _writer(root, **properties)
    w.commit(_batch(range(1, 101), "a"), "b1", None, "r")
    w.commit(_batch(range(101, 201), "a"), "b2", None, "r")
    t = w.load()
    assert t is not None and len(list(t.scan().plan_files())) == 2
    return w


def _rival(root: Path, *steps: tuple[str, int]) -> None:
    for action, key in steps:
        done = subprocess.run([sys.executable, "-c", RIVAL, str(root), "t.m", action, str(key)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr


def _versions(w: TableWriter) -> dict[int, list[str]]:
    t = w.load()
    assert t is not None
    out: dict[int, list[str]] = {}
    for r in t.scan().to_arrow().to_pylist():
        out.setdefault(r["k"], []).append(r["v"])
    return out


def _hold_merge_commit(monkeypatch: pytest.MonkeyPatch, root: Path, *steps: tuple[str, int]) -> Counter[str]:
    """Let the rival commit ``steps`` when the merge first reaches its commit (its plan made, files written)."""
    from icefield.testing import failpoints

    hits: Counter[str] = Counter()
    real = failpoints.hit

    def hit(name: str) -> None:
        hits[name] += 1
        if name == "before-commit" and hits[name] == 1:
            _rival(root, *steps)
        real(name)

    monkeypatch.setattr(failpoints, "hit", hit)
    failpoints.arm()
    return hits


@pytest.mark.parametrize(
    ("isolation", "second"),
    [("serializable", ("delete", 170)), ("snapshot", ("append", 999))],
    ids=["r2-delete-then-delete", "r3-delete-then-insert-snapshot-isolation"],
)
def test_a_delete_committed_during_a_copy_on_write_merge_stays_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolation: str, second: tuple[str, int]
) -> None:
    """D1 r2/r3: a copy-on-write merge of key 10 rewrites the file of keys 1-100. Meanwhile the other
    engine deletes key 20 (same file, merge-on-read), then commits once more (a delete in the other file,
    or an insert under snapshot isolation). The merge must replan: key 20 stays deleted."""
    levels = {f"write.{op}.isolation-level": isolation for op in ("merge", "update", "delete")}
    w = _two_files(tmp_path, **levels)
    hits = _hold_merge_commit(monkeypatch, tmp_path, ("delete", 20), second)

    result = w.commit(_batch([10], "merged"), "m1", None, "r")

    assert not result.skipped
    rows = _versions(w)
    assert 20 not in rows, "the other engine's delete of key 20 was undone"
    assert all(len(v) == 1 for v in rows.values()), {k: v for k, v in rows.items() if len(v) > 1}
    assert rows[10] == ["merged10"]
    assert hits["before-commit"] == 2, "the merge's first commit failed validation and it replanned"
    if second[0] == "delete":
        assert 170 not in rows and len(rows) == 198
    else:
        assert rows[999] == ["appended"] and len(rows) == 200


def test_a_merge_on_read_merge_after_another_engines_delete_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same interleaving with icefield's own merge-on-read merge held (its position deletes refer to
    the file the other engine marks): both deletes apply and each key has one version."""
    w = _two_files(tmp_path)
    t = w.load()
    assert t is not None
    with t.transaction() as tx:
        tx.set_properties({"write.merge.mode": "merge-on-read"})
    hits = _hold_merge_commit(monkeypatch, tmp_path, ("delete", 20), ("delete", 170))

    w.commit(_batch([10], "merged"), "m1", None, "r")

    assert hits["before-commit"] >= 1
    rows = _versions(w)
    assert 20 not in rows and 170 not in rows
    assert rows[10] == ["merged10"] and all(len(v) == 1 for v in rows.values()) and len(rows) == 198


def test_a_delete_committed_during_a_compaction_stays_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D1 r6: a compaction rewrites both files into one. Meanwhile the other engine deletes key 20
    (merge-on-read), then anything appends. The compaction must replan over the delete: key 20 stays
    deleted and no key gets two versions."""
    import icefield.write.compact as compact

    w = _two_files(tmp_path, **{"write.merge.mode": "merge-on-read"})
    w.commit(_batch([20], "updated"), "u20", None, "r")  # a merge-on-read update: a delete file and a new row
    real = compact.replace_files
    calls: list[int] = []

    def held(table: Any, tasks: Any, added: Any, operation: str) -> Any:
        calls.append(len(added))
        if len(calls) == 1:  # between the compaction's read and its commit
            _rival(tmp_path, ("delete", 30), ("append", 999))
        return real(table, tasks, added, operation)

    monkeypatch.setattr(compact, "replace_files", held)
    res = compact.compact_table(w.catalog, "t.m", sort_by=["k"])

    rows = _versions(w)
    assert 30 not in rows, "the other engine's delete of key 30 was undone by the compaction"
    assert rows[20] == ["updated20"] and all(len(v) == 1 for v in rows.values())
    assert rows[999] == ["appended"] and len(rows) == 200
    assert len(calls) == 2, "the compaction's first commit failed validation and it replanned"
    assert res.snapshot_id is not None


def test_the_held_merge_in_the_d1_finding_keeps_one_version_of_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D1, the reproduction without Spark: a compaction held; an icefield merge-on-read merge updates key 20
    (a delete file on the old file plus a new row); an append lands; the compaction is released. Key 20
    has one version, the updated one."""
    import icefield.write.compact as compact

    w = _two_files(tmp_path, **{"write.merge.mode": "merge-on-read"})
    real = compact.replace_files
    calls: list[int] = []

    def held(table: Any, tasks: Any, added: Any, operation: str) -> Any:
        calls.append(len(added))
        if len(calls) == 1:
            w.commit(_batch([20], "updated"), "u20", None, "r")
            _rival(tmp_path, ("append", 999))
        return real(table, tasks, added, operation)

    monkeypatch.setattr(compact, "replace_files", held)
    compact.compact_table(w.catalog, "t.m", sort_by=["k"])

    rows = _versions(w)
    assert rows[20] == ["updated20"], rows.get(20)
    assert all(len(v) == 1 for v in rows.values()) and len(rows) == 201
    assert len(calls) == 2, "the compaction replanned"


@pytest.mark.parametrize(
    ("producer", "second"),
    [("merge", ("delete", 170)), ("compaction", ("append", 999))],
)
def test_the_commit_validation_finds_a_delete_followed_by_another_commit(tmp_path: Path, producer: str, second: tuple[str, int]) -> None:
    """The producers' own check, as Iceberg's retry runs it (refresh, then validate against every snapshot
    since the base): a commit that replaces the file of keys 1-100 fails with ``ValidationException`` when
    another engine's delete in that file landed after the base, even with one more commit after it."""
    from pyiceberg.exceptions import ValidationException
    from pyiceberg.table.snapshots import Operation

    from icefield.iceberg.producers import Rewrite, merge_overwrite

    w = _two_files(tmp_path, **{"commit.retry.num-retries": "1", "commit.retry.min-wait-ms": "1"})
    table = w.load()
    assert table is not None
    (first,) = [t.file for t in table.scan().plan_files() if _holds(t.file, 20)]
    tx = table.transaction()
    if producer == "merge":
        cm = merge_overwrite(tx, {}, None)
    else:
        cm = Rewrite(operation=Operation.REPLACE, transaction=tx, io=table.io, branch="main", snapshot_properties={})
        cm.referenced = set()
    with cm as p:
        p.delete_data_file(first)
    _rival(tmp_path, ("delete", 20), second)

    # pyiceberg's own commit retries once here (the table says so): it refreshes and validates the window.
    with pytest.raises(ValidationException, match="found new delete for replaced data file"):
        tx.commit_transaction()
    rows = _versions(w)
    assert 20 not in rows and rows[1] == ["a1"]


def _holds(data_file: Any, key: int) -> bool:
    """Whether ``key`` is within the file's bounds of ``k`` (field id 1)."""
    from pyiceberg.conversions import from_bytes
    from pyiceberg.types import LongType

    low, high = data_file.lower_bounds[1], data_file.upper_bounds[1]
    return bool(from_bytes(LongType(), low) <= key <= from_bytes(LongType(), high))
