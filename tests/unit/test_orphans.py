"""Orphan cleanup (``icefield orphans``) and the statistics files of expiry: the files of a failed commit
leave the storage once older than the guard; nothing any snapshot, branch, tag, held audit batch, metadata
or statistics file reaches is ever deleted."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

from icefield.catalog import sql_catalog
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.errors import ConfigError
from icefield.iceberg.datafiles import write_data_files
from icefield.iceberg.history import unpublished
from icefield.write import TableWriter
from icefield.write.branches import cut_branch, publish
from icefield.write.compact import compact_table
from icefield.write.expire import expire_table
from icefield.write.orphans import remove_orphans

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string())])
OLD = time.time() - 10 * 86400


def _writer(root: Path, **target: Any) -> TableWriter:
    catalog = sql_catalog("icefield", f"sqlite:///{root / 'c.db'}", (root / "wh").resolve().as_uri())
    return TableWriter(catalog, TargetConfig(table="t.e", mode="merge", keys=["k"], **target), "p", LocalEngine())


def _merge(w: TableWriter, keys: range, label: str, branch: str | None = None) -> None:
    data = pa.table({"k": list(keys), "v": [f"{label}{i}" for i in keys]}, schema=SCHEMA)
    w.commit(data, label, {"at": label}, "r", **({"branch": branch} if branch else {}))


def _files(root: Path) -> set[Path]:
    return {p for p in (root / "wh").rglob("*") if p.is_file()}


def _age_everything(root: Path) -> None:
    for p in _files(root):
        os.utime(p, (OLD, OLD))


def _every_snapshot(w: TableWriter) -> dict[int, list[tuple[int, str]]]:
    t = w.load()
    assert t is not None
    return {s.snapshot_id: sorted((r["k"], r["v"]) for r in t.scan(snapshot_id=s.snapshot_id).to_arrow().to_pylist()) for s in t.metadata.snapshots}


def _failed_commit(w: TableWriter, label: str) -> list[Path]:
    """Write a data file the way a commit does and never commit it (the process died)."""
    t = w.load()
    assert t is not None
    files = write_data_files(t, pa.table({"k": [999], "v": [label]}, schema=SCHEMA))
    return [Path(f.file_path.removeprefix("file://")) for f in files]


def test_a_failed_commits_files_go_once_older_than_the_guard_and_fresh_ones_stay(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    _merge(w, range(10), "a")
    _merge(w, range(5, 15), "b")
    before = _every_snapshot(w)
    old_orphans = _failed_commit(w, "old")
    junk_manifest = Path(w.load().metadata.location.removeprefix("file://")) / "metadata" / "snap-crashed.avro"  # type: ignore[union-attr]
    junk_manifest.write_bytes(b"x" * 100)
    checksum = junk_manifest.parent / f".{Path(w.load().metadata_location).name}.crc"  # type: ignore[union-attr]
    checksum.write_bytes(b"crc")  # Hadoop's checksum of a reached file: kept with it
    for p in [*old_orphans, junk_manifest, checksum]:
        os.utime(p, (OLD, OLD))
    fresh = _failed_commit(w, "fresh")  # a commit in flight: unreached, but new
    on_disk = _files(tmp_path)

    dry = remove_orphans(w.catalog, "t.e", dry_run=True)
    assert (dry.orphans, dry.too_young, dry.files_deleted) == (len(old_orphans) + 1, len(fresh), 0)
    assert dry.orphan_bytes == sum(p.stat().st_size for p in [*old_orphans, junk_manifest])
    assert _files(tmp_path) == on_disk, "a dry run deletes nothing"

    res = remove_orphans(w.catalog, "t.e")  # the default guard, 3 days
    assert res.files_deleted == len(old_orphans) + 1 and res.bytes_deleted == dry.orphan_bytes
    assert _files(tmp_path) == on_disk - {*old_orphans, junk_manifest}
    assert all(p.exists() for p in fresh), "a file newer than the guard is never taken"
    assert checksum.exists()
    assert _every_snapshot(w) == before
    assert remove_orphans(w.catalog, "t.e").files_deleted == 0, "a second cleanup finds nothing"


def test_nothing_reachable_is_deleted_even_with_no_age_guard(tmp_path: Path) -> None:
    from pyiceberg.table.statistics import PartitionStatisticsFile, StatisticsFile
    from pyiceberg.table.update import SetPartitionStatisticsUpdate

    w = _writer(tmp_path, properties={"write.merge.mode": "merge-on-read"})
    for b in range(3):
        _merge(w, range(b * 5, b * 5 + 20), f"m{b}")  # data files and position delete files
    compact_table(w.catalog, "t.e", sort_by=["k"])
    _merge(w, range(3), "after")
    t = w.load()
    assert t is not None
    first = t.metadata.snapshots[0].snapshot_id
    t.manage_snapshots().create_tag(first, "v1").commit()  # a tag on the oldest snapshot
    meta = Path(t.metadata.location.removeprefix("file://")) / "metadata"
    puffin, part_stats = meta / "stats-1.puffin", meta / "partition-stats-1.parquet"
    puffin.write_bytes(b"PFA1" * 10)
    part_stats.write_bytes(b"PAR1" * 10)
    t = w.load()
    assert t is not None
    current = t.metadata.current_snapshot_id
    assert current is not None
    with t.transaction() as tx:
        tx.update_statistics().set_statistics(
            StatisticsFile(**{"snapshot-id": current, "statistics-path": puffin.as_uri(), "file-size-in-bytes": 40, "file-footer-size-in-bytes": 4, "blob-metadata": []})
        ).commit()
        tx._apply((SetPartitionStatisticsUpdate(**{"partition-statistics": PartitionStatisticsFile(**{"snapshot-id": current, "statistics-path": part_stats.as_uri(), "file-size-in-bytes": 40})}),))
    before = _every_snapshot(w)
    garbage = _failed_commit(w, "lost")
    _age_everything(tmp_path)
    reachable = _files(tmp_path) - set(garbage)

    res = remove_orphans(w.catalog, "t.e", older_than="0s")
    assert res.files_deleted == len(garbage) and res.files_reachable == len(reachable)
    assert _files(tmp_path) == reachable, "every metadata file, manifest, data and delete file and statistics file stays"
    assert _every_snapshot(w) == before, "every snapshot, the tagged oldest one too, reads the same rows"


def test_a_held_audit_branch_keeps_its_files(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    _merge(w, range(10), "a")
    cut_branch(w.load(), "icefield-audit-p")  # type: ignore[arg-type]
    _merge(w, range(3), "held", branch="icefield-audit-p")
    _age_everything(tmp_path)
    kept = _files(tmp_path)

    assert remove_orphans(w.catalog, "t.e", older_than=0).files_deleted == 0
    assert _files(tmp_path) == kept
    t = w.load()
    assert t is not None and len(unpublished(t, "icefield-audit-p")) == 1
    publish(t, "icefield-audit-p")
    rows = {r["k"]: r["v"] for r in w.load().scan().to_arrow().to_pylist()}  # type: ignore[union-attr]
    assert rows[0] == "held0" and rows[9] == "a9"


def test_expiry_deletes_the_statistics_files_only_expired_snapshots_reference(tmp_path: Path) -> None:
    from pyiceberg.table.statistics import PartitionStatisticsFile, StatisticsFile
    from pyiceberg.table.update import SetPartitionStatisticsUpdate

    w = _writer(tmp_path)
    _merge(w, range(10), "a")
    _merge(w, range(10), "b")
    t = w.load()
    assert t is not None
    old_id, new_id = (s.snapshot_id for s in t.metadata.snapshots)
    meta = Path(t.metadata.location.removeprefix("file://")) / "metadata"
    paths = {name: meta / name for name in ("old.puffin", "new.puffin", "old-part.parquet", "shared.puffin")}
    for p in paths.values():
        p.write_bytes(b"x" * 16)

    def stats(snapshot: int, path: Path) -> Any:
        return StatisticsFile(**{"snapshot-id": snapshot, "statistics-path": path.as_uri(), "file-size-in-bytes": 16, "file-footer-size-in-bytes": 4, "blob-metadata": []})

    with t.transaction() as tx:
        tx.update_statistics().set_statistics(stats(old_id, paths["old.puffin"])).commit()
    with w.load().transaction() as tx:  # type: ignore[union-attr]
        tx.update_statistics().set_statistics(stats(new_id, paths["new.puffin"])).commit()
        tx._apply((SetPartitionStatisticsUpdate(**{"partition-statistics": PartitionStatisticsFile(**{"snapshot-id": old_id, "statistics-path": paths["old-part.parquet"].as_uri(), "file-size-in-bytes": 16})}),))

    dry = expire_table(w.catalog, "t.e", older_than=0, dry_run=True)
    res = expire_table(w.catalog, "t.e", older_than=0)
    assert res.snapshots_expired == 1 and res.metadata_files_deleted == dry.metadata_files_deleted
    assert not paths["old.puffin"].exists() and not paths["old-part.parquet"].exists()
    assert paths["new.puffin"].exists(), "the kept snapshot's statistics stay"
    t = w.load()
    assert t is not None
    assert [s.snapshot_id for s in t.metadata.statistics] == [new_id]
    assert t.metadata.partition_statistics == [], "the expired snapshot's partition statistics entry left with it"


def test_the_command_reports_counts_as_one_json_document_and_bad_ages_name_the_fix(tmp_path: Path, make_project: Any) -> None:
    from icefield.cli import EXIT_USAGE, cli

    root = make_project({"e": {
        "source": {"type": "files", "path": "data/*.jsonl", "format": "jsonl", "columns": {"id": "long"}},
        "target": {"table": "raw.e", "mode": "append"},
    }})
    (root / "data").mkdir()
    (root / "data" / "a.jsonl").write_text('{"id": 1}\n')
    assert CliRunner().invoke(cli, ["--project", str(root), "run"]).exit_code == 0
    junk = next((root / ".icefield" / "warehouse").rglob("data")) / "crashed.parquet"
    junk.write_bytes(b"PAR1")
    os.utime(junk, (OLD, OLD))

    res = CliRunner().invoke(cli, ["--project", str(root), "orphans", "raw.e", "--dry-run", "--json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 0 and (doc["orphans"], doc["files_deleted"], doc["dry_run"]) == (1, 0, True) and junk.exists()
    res = CliRunner().invoke(cli, ["--project", str(root), "orphans", "raw.e", "--json"])
    assert json.loads(res.stdout)["files_deleted"] == 1 and not junk.exists()

    res = CliRunner().invoke(cli, ["--project", str(root), "orphans", "raw.e", "--older-than", "soon", "--json"])
    assert res.exit_code == EXIT_USAGE and "'soon'" in json.loads(res.stdout)["error"]
    with pytest.raises(ConfigError, match="no table 'raw.nope'"):
        remove_orphans(_writer(tmp_path).catalog, "raw.nope")


def test_maintenance_removes_orphans_after_expiry_and_says_so(lake: Any) -> None:
    from icefield.observe.events import MaintenanceDone

    lk = lake({"e": {
        "source": {"type": "files", "path": "data/*.jsonl", "format": "jsonl", "columns": {"id": "long"}},
        "target": {"table": "raw.e", "mode": "append", "maintenance": {"compact_every": 1, "expire_older_than": "0s", "orphans_older_than": "1h"}},
        "batch_size": 1,
    }})
    (lk.root / "data").mkdir()
    (lk.root / "data" / "a.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    lk.run("e")
    junk = next((lk.root / ".icefield" / "warehouse").rglob("data")) / "crashed.parquet"
    junk.write_bytes(b"PAR1")
    os.utime(junk, (OLD, OLD))
    (lk.root / "data" / "b.jsonl").write_text('{"id": 3}\n{"id": 4}\n{"id": 5}\n')
    seen: list[Any] = []
    lk.run("e", observers=[seen.append])
    done = [e for e in seen if isinstance(e, MaintenanceDone) and e.operation == "orphans"]
    assert done and sum(e.files_removed for e in done) == 1 and not junk.exists()
    assert sorted(r["id"] for r in lk.rows("raw.e")) == [1, 2, 3, 4, 5]


def test_orphans_in_maintenance_need_a_compaction_and_an_age(make_project: Any) -> None:
    from icefield.config import load_project

    source = {"type": "files", "path": "data/*.jsonl", "format": "jsonl", "columns": {"id": "long"}}
    for maintenance, expected in (({"orphans_older_than": "3d"}, "set 'compact_every' too"), ({"compact_every": 5, "orphans_older_than": "later"}, "'later'")):
        root = make_project({"e": {"source": source, "target": {"table": "raw.e", "maintenance": maintenance}}})
        with pytest.raises(ConfigError, match=expected):
            load_project(root, env={})


def test_a_location_another_table_shares_is_refused_and_nothing_is_deleted(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    _merge(w, range(5), "a")
    t = w.load()
    assert t is not None
    w.catalog.register_table(("t", "twin"), t.metadata_location)  # a second name for the same files
    twin = TableWriter(w.catalog, TargetConfig(table="t.twin", mode="append"), "p2", LocalEngine())
    twin.commit(pa.table({"k": [100], "v": ["twin"]}, schema=SCHEMA), "x", None, "r")  # files t.e does not reach
    _age_everything(tmp_path)
    kept = _files(tmp_path)

    with pytest.raises(ConfigError, match="table t.twin keeps its metadata under this table's location"):
        remove_orphans(w.catalog, "t.e", older_than=0)
    assert _files(tmp_path) == kept
    assert sorted(r["k"] for r in w.catalog.load_table("t.twin").scan().to_arrow().to_pylist()) == [0, 1, 2, 3, 4, 100]


def test_a_table_that_lost_a_manifest_list_is_refused_not_cleaned(tmp_path: Path) -> None:
    from icefield.errors import TerminalError

    w = _writer(tmp_path)
    _merge(w, range(5), "a")
    _merge(w, range(5), "b")
    t = w.load()
    assert t is not None
    Path(t.metadata.snapshots[0].manifest_list.removeprefix("file://")).unlink()  # a broken history
    _age_everything(tmp_path)
    kept = _files(tmp_path)
    with pytest.raises(TerminalError, match="missing"):
        remove_orphans(w.catalog, "t.e", older_than=0)
    assert _files(tmp_path) == kept
