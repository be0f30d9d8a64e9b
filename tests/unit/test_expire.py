"""Snapshot expiry (``icefield expire``): old snapshots leave the metadata and the files only they reached
leave the storage; the current rows, the kept history, held audit branches and pipeline positions stay.
Each test runs on a local folder and on the S3 server (``tests/stores.py``): expiry deletes objects there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from tests.stores import STORES, Store, make_store

from icefield.config.ages import parse_age
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.errors import ConfigError
from icefield.iceberg.history import head_id, read_position, unpublished
from icefield.write import TableWriter
from icefield.write.branches import cut_branch
from icefield.write.compact import compact_table
from icefield.write.expire import expire_table

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string())])


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


def _writer(root: Path, store: Store, **target: Any) -> TableWriter:
    catalog = store.catalog(root / "c.db")
    return TableWriter(catalog, TargetConfig(table="t.e", mode="merge", keys=["k"], **target), "p", LocalEngine())


def _merge(w: TableWriter, n: int, label: str) -> None:
    w.commit(pa.table({"k": list(range(n)), "v": [f"{label}{i}" for i in range(n)]}, schema=SCHEMA), label, {"at": label}, "r")


def _on_disk(store: Store) -> set[str]:
    return {n for n in store.names() if not n.endswith(".metadata.json")}


def _live(w: TableWriter, snapshot_id: int | None = None) -> set[str]:
    """Names of the files the table's (or a snapshot's) state reaches: data, deletes, manifests, list."""
    t = w.load()
    assert t is not None
    snap = t.snapshot_by_id(snapshot_id) if snapshot_id else t.current_snapshot()
    assert snap is not None
    names = {Path(snap.manifest_list).name}
    for m in snap.manifests(t.io):
        names.add(Path(m.manifest_path).name)
        names.update(Path(e.data_file.file_path).name for e in m.fetch_manifest_entry(t.io, discard_deleted=True))
    return names


def test_expiry_keeps_the_current_state_and_deletes_only_what_old_snapshots_reached(tmp_path: Path, store: Store) -> None:
    w = _writer(tmp_path, store, properties={"write.merge.mode": "merge-on-read"})
    for b in range(4):  # each merge replaces every row: merge-on-read adds files and delete files
        _merge(w, 50, f"m{b}")
    compact_table(w.catalog, "t.e", sort_by=["k"])  # the old files now live only in old snapshots
    rows = sorted(w.load().scan().to_arrow().to_pylist(), key=lambda r: r["k"])  # type: ignore[union-attr]
    before = _on_disk(store)
    assert len(w.load().metadata.snapshots) == 5  # type: ignore[union-attr]

    dry = expire_table(w.catalog, "t.e", older_than=0, dry_run=True)
    assert dry.snapshots_expired == 4 and dry.data_files_deleted > 0 and _on_disk(store) == before

    res = expire_table(w.catalog, "t.e", older_than="0s")
    assert (res.snapshots_expired, res.snapshots_kept) == (4, 1)
    assert (res.data_files_deleted, res.metadata_files_deleted) == (dry.data_files_deleted, dry.metadata_files_deleted)
    after = _on_disk(store)
    assert after == _live(w), "exactly the files the current snapshot reaches are left"
    assert len(before - after) == res.data_files_deleted + res.metadata_files_deleted
    t = w.load()
    assert t is not None and len(t.metadata.snapshots) == 1
    assert sorted(t.scan().to_arrow().to_pylist(), key=lambda r: r["k"]) == rows
    assert read_position(t, "p") == {"at": "m3"}, "the pipeline's position is a table property: it stays"

    _merge(w, 60, "m9")  # writing goes on
    assert w.load().scan().to_arrow().num_rows == 60  # type: ignore[union-attr]


def test_retain_last_keeps_time_travel_and_new_snapshots_are_kept(tmp_path: Path, store: Store) -> None:
    w = _writer(tmp_path, store)
    for b in range(3):  # copy-on-write: each merge rewrites the one file
        _merge(w, 20, f"c{b}")
    t = w.load()
    assert t is not None
    previous = t.current_snapshot().parent_snapshot_id  # type: ignore[union-attr]
    assert expire_table(w.catalog, "t.e", older_than="7d").snapshots_expired == 0, "all are younger than 7 days"

    res = expire_table(w.catalog, "t.e", older_than=0, retain_last=2)
    assert (res.snapshots_expired, res.snapshots_kept) == (1, 2)
    t = w.load()
    assert t is not None
    assert t.scan(snapshot_id=previous).to_arrow().column("v").to_pylist()[0] == "c10"
    assert _on_disk(store) == _live(w) | _live(w, previous)


def test_a_held_audit_branch_survives_expiry_and_can_still_be_published(tmp_path: Path, store: Store) -> None:
    from icefield.write.branches import publish

    w = _writer(tmp_path, store)
    _merge(w, 10, "a")
    _merge(w, 10, "b")
    t = cut_branch(w.load(), "audit_p")  # type: ignore[arg-type]
    w.commit(pa.table({"k": [1], "v": ["held"]}, schema=SCHEMA), "h1", {"at": "h1"}, "r", branch="audit_p")
    t = w.load()
    assert t is not None and len(unpublished(t, "audit_p")) == 1

    res = expire_table(w.catalog, "t.e", older_than=0)
    assert res.snapshots_expired == 1, "only main's older snapshot goes; the held one stays"
    t = w.load()
    assert t is not None and len(unpublished(t, "audit_p")) == 1
    publish(t, "audit_p")
    t = w.load()
    assert t is not None and head_id(t) == head_id(t, "audit_p")
    got = {r["k"]: r["v"] for r in t.scan().to_arrow().to_pylist()}
    assert got[1] == "held" and got[2] == "b2" and read_position(t, "p") == {"at": "h1"}


def test_bad_settings_name_the_fix(tmp_path: Path, store: Store) -> None:
    w = _writer(tmp_path, store)
    _merge(w, 5, "a")
    with pytest.raises(ConfigError, match="retain_last=0"):
        expire_table(w.catalog, "t.e", retain_last=0)
    with pytest.raises(ConfigError, match="'soon' is not an age"):
        expire_table(w.catalog, "t.e", older_than="soon")
    with pytest.raises(ConfigError, match="no table 't.nope'"):
        expire_table(w.catalog, "t.nope")
    assert parse_age("90m") == 5400 and parse_age("2w") == 1_209_600 and parse_age(0) == 0
