"""docs/reliability.md B3: writers while compaction, expiry and orphan cleanup run, each in its own process: no
file a snapshot reaches is deleted, no row is lost or duplicated.

Two writers commit batches (one appends new keys, one merges, copy-on-write, over a small hot key range),
a compactor rewrites the table's files again and again, an expirer expires every snapshot but the newest
(``older_than=0``) and an orphan cleaner runs in a loop. The cleaner's guard is the start of the concurrent
window: every file older than it (the whole table as it was, and the planted files of a failed commit) may
be taken as soon as nothing reaches it, while the files of commits in flight, all written during the
window, are protected, as a guard longer than a commit protects them in production. The race this tests
is reachability: a file the cleaner sees unreached must not become reached by a commit landing meanwhile
(a new snapshot reuses its parent's manifests and files, a compaction replaces them). A guard of ``0s``
beside writers is unsafe by design (it takes the files of a commit in flight): the docs say so.

Runs on a local folder and on the S3 server (``tests/stores.py``). An object store keeps a file's time to
the whole second (S3's LastModified), so the window opens on a whole second and the cleaner's guard is one
second longer than the window: a file written inside it never looks older than the guard, and one written
before it (the failed commit's) always does, on either store.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from tests.stores import STORES, Store, make_store

WORKER = r"""
import json, sys, time
from pathlib import Path
from typing import Any

import pyarrow as pa
from icefield.catalog import sql_catalog
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.errors import TransientError
from icefield.write import TableWriter

root, role, guard_from, batches, store = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
cat = sql_catalog("b3", f"sqlite:///{root / 'catalog.db'}", store["uri"], **store["props"])
stop = root / "stop"
schema = pa.schema([("k", pa.int64()), ("v", pa.string())])

def retried(fn):
    for _ in range(50):
        try:
            return fn()
        except TransientError:
            time.sleep(0.05)
    raise SystemExit(f"{role}: 50 transient failures in a row")

if role == "append":
    w = TableWriter(cat, TargetConfig(table="t.b3", mode="append"), "append", LocalEngine())
    for b in range(batches):
        rows = pa.table({"k": list(range(b * 20, b * 20 + 20)), "v": [f"a{b}"] * 20}, schema=schema)
        retried(lambda: w.commit(rows, f"append-{b}", {"b": b}, "r"))
elif role == "merge":
    w = TableWriter(cat, TargetConfig(table="t.b3", mode="merge", keys=["k"]), "merge", LocalEngine())
    for b in range(batches):
        keys = [100000 + (b * 7 + i) % 40 for i in range(10)]
        rows = pa.table({"k": keys, "v": [f"m{b}"] * 10}, schema=schema)
        retried(lambda: w.commit(rows, f"merge-{b}", {"b": b}, "r"))
else:
    from icefield.write.compact import compact_table
    from icefield.write.expire import expire_table
    from icefield.write.orphans import remove_orphans
    runs = deleted = 0
    while not stop.exists():
        try:
            if role == "compact":
                compact_table(cat, "t.b3", sort_by=["k"], min_input_files=2)
            elif role == "expire":
                expire_table(cat, "t.b3", older_than=0, retain_last=1)
            else:
                deleted += remove_orphans(cat, "t.b3", older_than=time.time() - guard_from).files_deleted
            runs += 1
        except TransientError:
            pass
        time.sleep(0.1)
    print(f"{role} runs={runs} deleted={deleted}")
"""


def _reached_files_exist(table: object) -> int:
    """Checks every file every snapshot of ``table`` reaches exists; returns how many were checked."""
    md = table.metadata  # type: ignore[attr-defined]
    io = table.io  # type: ignore[attr-defined]
    paths: set[str] = set()
    for snap in md.snapshots:
        paths.add(snap.manifest_list)
        for m in snap.manifests(io):
            paths.add(m.manifest_path)
            paths.update(e.data_file.file_path for e in m.fetch_manifest_entry(io, discard_deleted=True))
    missing = sorted(p for p in paths if not io.new_input(p).exists())
    assert not missing, f"{len(missing)} reached files were deleted: {missing[:3]}"
    return len(paths)


RESOLUTION = 1.0
"""Seconds: how finely a store keeps a file's time (S3's LastModified is whole seconds)."""


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


@pytest.mark.timeout(300)
def test_b3_writers_beside_compaction_expiry_and_orphan_cleanup_lose_nothing(tmp_path: Path, store: Store) -> None:
    from icefield.catalog import sql_catalog
    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.iceberg.datafiles import write_data_files
    from icefield.write import TableWriter
    from icefield.write.orphans import remove_orphans

    batches = 30
    cat = sql_catalog("b3", f"sqlite:///{tmp_path / 'catalog.db'}", store.uri, **store.props)
    schema = pa.schema([("k", pa.int64()), ("v", pa.string())])
    w = TableWriter(cat, TargetConfig(table="t.b3", mode="merge", keys=["k"]), "seed", LocalEngine())
    w.commit(pa.table({"k": list(range(200000, 200050)), "v": ["seed"] * 50}, schema=schema), "seed", None, "r")
    table = w.load()
    assert table is not None and table.metadata.location.startswith(store.uri)
    planted = [f.file_path for f in write_data_files(table, pa.table({"k": [-1], "v": ["lost"]}, schema=schema))]
    assert planted and all(store.exists(p) for p in planted)
    # The concurrent window opens on a whole second, more than the resolution after the planted files were
    # written: every file written from then on is a commit's in flight, every file before it older than the guard.
    start = math.floor(time.time()) + 1.0 + RESOLUTION
    guard_from = start - RESOLUTION  # the cleaner may take an unreached file whose time is before this
    time.sleep(start - time.time())

    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}

    def spawn(role: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), role, repr(guard_from), str(batches), json.dumps({"uri": store.uri, "props": store.props})],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    maintainers = [spawn(r) for r in ("compact", "expire", "orphans")]
    writers = [spawn(r) for r in ("append", "merge")]
    outcomes = [(c.returncode, out, err) for c, (out, err) in ((c, c.communicate(timeout=240)) for c in writers)]
    (tmp_path / "stop").touch()
    outcomes += [(c.returncode, out, err) for c, (out, err) in ((c, c.communicate(timeout=60)) for c in maintainers)]
    for code, _, err in outcomes:  # every child waited for before the first assertion
        assert code == 0, err[-3000:]
    report = " ".join(out.strip() for _, out, _ in outcomes if out.strip())
    elapsed = time.time() - start

    table = cat.load_table("t.b3")
    checked = _reached_files_exist(table)
    for snap in table.metadata.snapshots:  # every snapshot left reads whole
        table.scan(snapshot_id=snap.snapshot_id).to_arrow()
    expected = {k: "seed" for k in range(200000, 200050)}
    expected.update({k: f"a{b}" for b in range(batches) for k in range(b * 20, b * 20 + 20)})
    for b in range(batches):
        expected.update({100000 + (b * 7 + i) % 40: f"m{b}" for i in range(10)})
    rows = table.scan().to_arrow().to_pylist()
    got: dict[int, str] = {}
    duplicated = 0
    for r in rows:
        duplicated += r["k"] in got
        got[r["k"]] = r["v"]
    lost = len(expected.keys() - got.keys())
    unexpected = len(got.keys() - expected.keys())
    divergent = sum(1 for k in expected.keys() & got.keys() if expected[k] != got[k])
    compactions = sum(1 for s in table.metadata.snapshots if s.summary and s.summary["icefield.operation"] == "compact")
    print(
        f"B3: {elapsed:.1f} s, {len(rows)} rows, {len(table.metadata.snapshots)} snapshots left, {checked} reached files present; "
        f"{report}; lost={lost} duplicated={duplicated} unexpected={unexpected} divergent={divergent}"
    )
    assert (lost, duplicated, unexpected, divergent) == (0, 0, 0, 0)
    assert "orphans runs=" in report and "compact runs=" in report and compactions + len(table.metadata.snapshots) > 0

    remove_orphans(cat, "t.b3", older_than=time.time() - guard_from)  # once more, now that everything is quiet
    assert not any(store.exists(p) for p in planted), "the failed commit's files, older than the window, were taken"
    _reached_files_exist(cat.load_table("t.b3"))
    cat.engine.dispose()  # type: ignore[attr-defined]


def test_orphan_cleanup_reads_again_when_expiry_deletes_a_manifest_it_has_opened(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race B3 found on S3: the cleaner opens an old snapshot's manifest (S3: a HEAD), expiry deletes it, the
    read that follows fails (S3: NoSuchKey from the GET; a local file once open stays readable). The cleaner
    reads the table again and goes on, deleting nothing a snapshot reaches."""
    from pyiceberg.io.pyarrow import PyArrowFile

    from icefield.catalog import sql_catalog
    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.write import TableWriter
    from icefield.write.expire import expire_table
    from icefield.write.orphans import remove_orphans

    cat = sql_catalog("b3", f"sqlite:///{tmp_path / 'catalog.db'}", store.uri, **store.props)
    schema = pa.schema([("k", pa.int64()), ("v", pa.string())])
    w = TableWriter(cat, TargetConfig(table="t.b3", mode="merge", keys=["k"]), "p", LocalEngine())
    for label in ("a", "b"):  # the second merge replaces every row: the first snapshot's manifest is its alone
        w.commit(pa.table({"k": list(range(20)), "v": [label] * 20}, schema=schema), label, None, "r")
    table = w.load()
    assert table is not None and len(table.metadata.snapshots) == 2
    first, second = table.metadata.snapshots
    doomed = {m.manifest_path for m in first.manifests(table.io)} - {m.manifest_path for m in second.manifests(table.io)}
    assert doomed

    real_open = PyArrowFile.open
    opened: list[str] = []

    def open_then_expire(self: PyArrowFile, seekable: bool = True) -> Any:
        stream = real_open(self, seekable)
        if self.location in doomed and not opened:
            opened.append(self.location)
            expire_table(cat, "t.b3", older_than=0, retain_last=1)  # deletes the manifest just opened
        return stream

    monkeypatch.setattr(PyArrowFile, "open", open_then_expire)
    result = remove_orphans(cat, "t.b3", older_than=0)
    monkeypatch.undo()
    assert opened and not store.exists(opened[0]), "expiry deleted the manifest between its opening and its reading"
    table = cat.load_table("t.b3")
    assert len(table.metadata.snapshots) == 1 and result.files_listed > 0
    assert _reached_files_exist(table) > 0
    assert sorted(r["v"] for r in table.scan().to_arrow().to_pylist()) == ["b"] * 20
    cat.engine.dispose()  # type: ignore[attr-defined]
