"""Catalog backup, restore, verify and register (``icefield catalog ...``): a lost catalog database comes
back from a backup and every pipeline resumes exactly once; a table whose catalog row was lost comes back
from its newest metadata file; verify tells a faithful backup from a stale or broken one."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.stores import STORES, Store, make_store

from icefield.catalog import open_catalog
from icefield.cli import EXIT_FAILED, EXIT_USAGE, cli
from icefield.config import load_project

PIPELINES = {
    "events": {
        "source": {"type": "files", "path": "data/events/*.jsonl", "format": "jsonl", "columns": {"id": "long", "v": "string"}},
        "target": {"table": "raw.events", "mode": "append"},
    },
    "users": {
        "source": {"type": "files", "path": "data/users/*.jsonl", "format": "jsonl", "columns": {"id": "long", "v": "string"}},
        "target": {"table": "raw.users", "mode": "merge", "keys": ["id"]},
    },
}


def _invoke(root: Path, *args: str) -> tuple[int, Any]:
    res = CliRunner().invoke(cli, ["--project", str(root), *args, "--json"])
    try:
        return res.exit_code, json.loads(res.stdout)
    except ValueError:
        return res.exit_code, res.output


def _drop(root: Path, folder: str, name: str, rows: list[tuple[int, str]]) -> None:
    d = root / "data" / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.jsonl").write_text("".join(json.dumps({"id": i, "v": v}) + "\n" for i, v in rows))


def _rows(root: Path, table: str) -> list[tuple[int, str]]:
    catalog = open_catalog(load_project(root, env={}))
    try:
        return sorted((r["id"], r["v"]) for r in catalog.load_table(table).scan().to_arrow().to_pylist())
    finally:
        catalog.engine.dispose()  # type: ignore[attr-defined]


def _ran(root: Path) -> dict[str, Any]:
    code, doc = _invoke(root, "run")
    assert code == 0, doc
    return {r["pipeline"]: r for r in doc["results"]}


def _destroy_catalog(root: Path) -> None:
    for p in (root / ".icefield").glob("catalog.db*"):
        p.unlink()


def _project(make_project: Any, store: Store | None = None) -> Path:
    root: Path = make_project(PIPELINES, store.project() if store is not None else None)
    _drop(root, "events", "a", [(1, "a1"), (2, "a2")])
    with (root / "data" / "events" / "a.jsonl").open("a") as f:
        f.write('{"id": "not a number", "v": "bad"}\n')  # quarantined: raw.events__quarantine exists
    _drop(root, "users", "a", [(1, "u1"), (2, "u2")])
    _ran(root)
    return root


@pytest.fixture
def project(make_project: Any) -> Path:
    return _project(make_project)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


def test_backup_destroy_restore_and_every_pipeline_resumes_exactly_once(make_project: Any, store: Store, tmp_path: Path) -> None:
    """On a local warehouse with a local backup folder, and on S3 with the backups under an S3 prefix."""
    project = _project(make_project, store)
    backups = store.location("backups") if store.kind == "s3" else str(tmp_path / "backups")
    code, backup = _invoke(project, "catalog", "backup", backups)
    assert code == 0, backup
    assert backup["tables"] == 3, "raw.events, raw.users and the bookkeeping table raw.events__quarantine"
    _destroy_catalog(project)
    code, doc = _invoke(project, "tables")
    assert code == 0 and doc["tables"] == [], "the catalog database is gone: no table is known"

    code, restored = _invoke(project, "catalog", "restore", backups)  # the folder (prefix): its newest backup
    assert code == 0, restored
    assert {t["status"] for t in restored["tables"]} == {"restored"}

    _drop(project, "events", "b", [(3, "b3")])
    _drop(project, "users", "b", [(2, "u2-new"), (4, "u4")])
    results = _ran(project)
    assert (results["events"]["rows_in"], results["users"]["rows_in"]) == (1, 2), "only the second batch is read: the first is not re-landed"
    assert _rows(project, "raw.events") == [(1, "a1"), (2, "a2"), (3, "b3")]
    assert _rows(project, "raw.users") == [(1, "u1"), (2, "u2-new"), (4, "u4")]
    code, quarantine = _invoke(project, "quarantine", "show", "raw.events")
    assert code == 0 and quarantine["total"] == 1, "the quarantine came back with its row, once"
    again = _ran(project)
    assert all(r["rows_in"] == 0 for r in again.values()), "a rerun finds nothing new"


def test_backups_are_versioned_files_never_overwritten_and_restore_refuses_a_catalog_with_tables(project: Path, tmp_path: Path) -> None:
    dest = tmp_path / "b"
    first = _invoke(project, "catalog", "backup", str(dest))[1]
    second = _invoke(project, "catalog", "backup", str(dest))[1]
    assert first["path"] != second["path"] and len(list(dest.glob("icefield-catalog-*.json"))) == 2
    doc = json.loads(Path(first["path"]).read_text())
    assert doc["format"] == "icefield-catalog-backup" and doc["format_version"] == 1 and doc["created_at"].endswith("Z")
    (users,) = [t for t in doc["tables"] if t["table"] == "raw.users"]
    assert users["metadata_location"].endswith(".metadata.json") and "icefield.state.users" in users["properties"]
    assert {tuple(n["namespace"]) for n in doc["namespaces"]} >= {("raw",)}

    code, err = _invoke(project, "catalog", "restore", first["path"])
    assert code == EXIT_USAGE and "--force" in err["error"] and "raw.events" in err["error"]
    code, forced = _invoke(project, "catalog", "restore", first["path"], "--force")
    assert code == 0 and {t["status"] for t in forced["tables"]} == {"unchanged"}

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**doc, "tables": [{"table": "raw.users"}]}))
    code, err = _invoke(project, "catalog", "restore", str(broken), "--force")
    assert code == EXIT_USAGE and "metadata_location" in err["error"]
    broken.write_text(json.dumps({**doc, "format_version": 99}))
    code, err = _invoke(project, "catalog", "verify", str(broken))
    assert code == EXIT_USAGE and "newer icefield" in err["error"]

    into = tmp_path / "other.db"
    code, other = _invoke(project, "catalog", "restore", first["path"], "--into", f"sqlite:///{into}")
    assert code == 0 and {t["status"] for t in other["tables"]} == {"restored"}
    con = sqlite3.connect(into)
    assert {r[0] for r in con.execute("select table_name from iceberg_tables")} >= {"events", "users"}
    con.close()


def test_a_commit_during_the_backup_does_not_tear_it(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SQL catalog's tables are read in one statement: a commit that lands while the backup reads the
    metadata files leaves the backup at the instant of that statement."""
    from pyiceberg.serializers import FromInputFile

    import icefield.write.backups as backups

    catalog = open_catalog(load_project(project, env={}))
    before = catalog.load_table("raw.users").metadata_location
    real = FromInputFile.table_metadata
    reads: list[str] = []

    def read_and_commit_once(input_file: Any, encoding: str = "utf-8") -> Any:
        reads.append(input_file.location)
        if len(reads) == 1:
            _drop(project, "users", "c", [(9, "c9")])
            _ran(project)  # raw.users commits while the backup reads
        return real(input_file, encoding)

    monkeypatch.setattr(FromInputFile, "table_metadata", staticmethod(read_and_commit_once))
    res = backups.backup_catalog(catalog, tmp_path / "b")
    monkeypatch.undo()
    assert res.rounds == 1
    (users,) = [t for t in json.loads(Path(res.path).read_text())["tables"] if t["table"] == "raw.users"]
    assert users["metadata_location"] == before != catalog.load_table("raw.users").metadata_location
    catalog.engine.dispose()  # type: ignore[attr-defined]


def test_other_catalogs_are_read_again_until_no_table_moved(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catalogs without one statement for all tables (REST, later): a table that moved between the read
    and the check makes the whole catalog read again."""
    import icefield.write.backups as backups

    catalog = open_catalog(load_project(project, env={}))
    loads: list[tuple[str, ...]] = []
    real = backups.load_table

    def load_and_commit_once(cat: Any, ident: tuple[str, ...]) -> Any:
        loads.append(ident)
        table = real(cat, ident)
        if ident == ("raw", "events") and loads.count(ident) == 1:
            _drop(project, "events", "c", [(9, "c9")])
            _ran(project)  # a commit lands after raw.events was read
        return table

    monkeypatch.setattr(backups, "load_table", load_and_commit_once)
    entries, rounds = backups._reread_tables(catalog)
    assert rounds == 2, "the moved table was noticed and the catalog read again"
    (events,) = [e for e in entries if e["table"] == "raw.events"]
    assert events["metadata_location"] == real(catalog, ("raw", "events")).metadata_location
    catalog.engine.dispose()  # type: ignore[attr-defined]


def test_register_recovers_a_table_whose_catalog_row_was_deleted(project: Path) -> None:
    before = _invoke(project, "show", "raw.users")[1]
    con = sqlite3.connect(project / ".icefield" / "catalog.db")
    con.execute("delete from iceberg_tables where table_name = 'users'")
    con.commit()
    con.close()
    code, err = _invoke(project, "show", "raw.users")
    assert code == EXIT_USAGE

    code, reg = _invoke(project, "catalog", "register", "raw.users")
    assert code == 0, reg
    assert reg["current_snapshot_id"] == before["snapshots"][-1]["snapshot_id"]
    code, err = _invoke(project, "catalog", "register", "raw.users")
    assert code == EXIT_USAGE and "already" in err["error"]

    _drop(project, "users", "b", [(5, "u5")])
    assert _ran(project)["users"]["rows_in"] == 1, "the position came back with the table"
    assert _rows(project, "raw.users") == [(1, "u1"), (2, "u2"), (5, "u5")]


def test_register_refuses_two_metadata_files_of_the_newest_version(project: Path) -> None:
    t = _invoke(project, "show", "raw.events")[1]
    meta = Path(t["location"].removeprefix("file://")) / "metadata"
    newest = max(meta.glob("*.metadata.json"))
    version = newest.name.split("-", 1)[0]
    shutil.copy(newest, meta / f"{version}-00000000-0000-0000-0000-000000000000.metadata.json")  # a lost race's file
    con = sqlite3.connect(project / ".icefield" / "catalog.db")
    con.execute("delete from iceberg_tables where table_name = 'events'")
    con.commit()
    con.close()
    code, err = _invoke(project, "catalog", "register", "raw.events")
    assert code == EXIT_USAGE and "--metadata-file" in err["error"] and version in err["error"]
    code, reg = _invoke(project, "catalog", "register", "raw.events", "--metadata-file", str(newest))
    assert code == 0 and reg["metadata_location"] == str(newest)


def test_verify_passes_a_fresh_backup_and_reports_moved_and_broken_tables(project: Path, tmp_path: Path) -> None:
    path = _invoke(project, "catalog", "backup", str(tmp_path / "b"))[1]["path"]
    code, ok = _invoke(project, "catalog", "verify", path)
    assert code == 0, ok
    assert {t["table"]: t["status"] for t in ok["tables"]}["raw.users"] == "ok"
    (users,) = [t for t in ok["tables"] if t["table"] == "raw.users"]
    assert users["restored_rows"] == users["live_rows"] == 2

    _drop(project, "events", "b", [(3, "b3")])
    _ran(project)  # raw.events moves on after the backup
    code, doc = _invoke(project, "catalog", "verify", path)
    assert code == EXIT_FAILED
    status = {t["table"]: t for t in doc["tables"]}
    assert status["raw.events"]["status"] == "moved" and "take a new backup" in status["raw.events"]["message"]
    assert status["raw.events"]["restored_rows"] == 2 and status["raw.users"]["status"] == "ok"

    backup = json.loads(Path(path).read_text())
    (u,) = [t for t in backup["tables"] if t["table"] == "raw.users"]
    Path(u["metadata_location"].removeprefix("file://")).unlink()  # the backup now points at a deleted file
    code, doc = _invoke(project, "catalog", "verify", path)
    status = {t["table"]: t for t in doc["tables"]}
    assert code == EXIT_FAILED and status["raw.users"]["status"] == "unreadable"
    assert "icefield catalog register raw.users" in status["raw.users"]["message"]
    code, doc = _invoke(project, "catalog", "restore", path, "--into", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    restored = {t["table"]: t["status"] for t in doc["tables"]}
    assert code == EXIT_FAILED and doc["status"] == "failed"
    assert restored == {"raw.events": "restored", "raw.events__quarantine": "restored", "raw.users": "failed"}, "one lost table does not stop the others"


def test_restore_newest_keeps_the_commits_made_after_the_backup(project: Path, tmp_path: Path) -> None:
    path = _invoke(project, "catalog", "backup", str(tmp_path / "b"))[1]["path"]
    _drop(project, "events", "b", [(3, "b3")])
    _ran(project)  # committed after the backup
    _destroy_catalog(project)

    code, restored = _invoke(project, "catalog", "restore", path, "--newest")
    assert code == 0, restored
    newer = {t["table"]: t["newer_than_backup"] for t in restored["tables"]}
    assert newer["raw.events"] is True and newer["raw.users"] is False
    assert _rows(project, "raw.events") == [(1, "a1"), (2, "a2"), (3, "b3")]
    assert _ran(project)["events"]["rows_in"] == 0, "b.jsonl is in the restored position: not read again"


def test_restoring_an_older_backup_lands_the_later_batches_again_exactly_once(project: Path, tmp_path: Path) -> None:
    path = _invoke(project, "catalog", "backup", str(tmp_path / "b"))[1]["path"]
    _drop(project, "events", "b", [(3, "b3")])
    _ran(project)  # committed after the backup: the restored table does not hold it
    _destroy_catalog(project)
    assert _invoke(project, "catalog", "restore", path)[0] == 0
    assert _rows(project, "raw.events") == [(1, "a1"), (2, "a2")]
    assert _ran(project)["events"]["rows_in"] == 1, "the restored position lacks b.jsonl: it is read again"
    assert _rows(project, "raw.events") == [(1, "a1"), (2, "a2"), (3, "b3")]


LOCKSTEP = r"""
import sys
from pathlib import Path
import pyarrow as pa
from icefield.catalog import sql_catalog
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.write import TableWriter
root, rounds = Path(sys.argv[1]), int(sys.argv[2])
cat = sql_catalog("icefield", f"sqlite:///{root / 'c.db'}", (root / "wh").as_uri())
writers = [TableWriter(cat, TargetConfig(table=f"t.{n}", mode="append"), n, LocalEngine()) for n in ("a", "b")]
for r in range(rounds):  # t.a always commits batch r before t.b does
    for w in writers:
        w.commit(pa.table({"r": pa.array([r], pa.int64())}), f"r{r}", {"r": r}, "run")
    (root / "progress").write_text(str(r))
"""


def test_backups_taken_while_another_process_commits_are_never_torn(tmp_path: Path) -> None:
    """A process commits to t.a then t.b, round after round; every backup taken meanwhile holds t.a at the
    same round as t.b or one ahead, never behind (a torn backup would read t.a before a round and t.b
    after it)."""
    import os
    import subprocess
    import sys
    import time

    from icefield.catalog import sql_catalog
    from icefield.write.backups import backup_catalog

    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    child = subprocess.Popen([sys.executable, "-c", LOCKSTEP, str(tmp_path), "40"], env=env, stderr=subprocess.PIPE, text=True)
    cat = sql_catalog("icefield", f"sqlite:///{tmp_path / 'c.db'}", (tmp_path / "wh").as_uri())
    gaps = []
    try:
        while child.poll() is None:
            if not (tmp_path / "progress").exists():
                time.sleep(0.05)
                continue
            doc = json.loads(Path(backup_catalog(cat, tmp_path / "backups").path).read_text())
            n = {t["table"]: len(t["snapshot_ids"]) for t in doc["tables"]}
            gaps.append(n["t.a"] - n["t.b"])
    finally:
        _, err = child.communicate(timeout=120)
        cat.engine.dispose()  # type: ignore[attr-defined]
    assert child.returncode == 0, err
    assert len(gaps) >= 3, f"only {len(gaps)} backups were taken while the writer ran"
    assert set(gaps) <= {0, 1}, f"torn backups: t.a minus t.b snapshots = {sorted(set(gaps))}"
