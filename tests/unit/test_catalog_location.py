"""Where the catalog and the warehouse are (issue 13: F18, F19's catalog part, F6).

- A SQLite catalog URI is refused when it is in memory (every run forgot its tables and orphaned its
  files) or another application's database (it got the catalog's tables and WAL for good), and a file
  or a folder that is no database is a clear configuration error; a relative path, in the URI or in a
  ``${file:...}`` it comes from, is relative to the project, whatever the current directory.
- A catalog server that cannot be reached is transient (exit 75); everything else is configuration.
- A project in a folder whose path needs escaping in a URI (a space, ``%``) keeps its warehouse inside
  the project, at locations that pyarrow, pyiceberg and a reader in another process all take to the files.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from icefield import ConfigError, load_project, run_pipeline
from icefield.catalog import open_catalog, sql_catalog
from icefield.errors import TransientError

PIPE = {"source": {"type": "files", "path": "data/*.jsonl"}, "target": {"table": "raw.t"}}


def project(make_project: Any, root: Path | None = None, **catalog: Any) -> Path:
    root = make_project({"p": PIPE}, {"name": "t", "catalog": catalog} if catalog else None, root=root)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "a.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    return root


def journal_mode(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return str(con.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        con.close()


def test_another_applications_database_is_refused_and_left_as_it_was(make_project, tmp_path):
    """F18: a catalog URI pointing at an application's SQLite database added ``iceberg_tables`` to it and
    switched it to WAL for good."""
    app = tmp_path / "app.db"
    con = sqlite3.connect(app)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    root = project(make_project, uri=f"sqlite:///{app}")
    with pytest.raises(ConfigError, match=r"holds tables that are not a catalog's \(users\)"):
        open_catalog(load_project(root, env={}))
    con = sqlite3.connect(app)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["users"]
    con.close()
    assert journal_mode(app) == "delete"


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:mem?mode=memory&uri=true"])
def test_an_in_memory_catalog_is_refused(make_project, uri):
    """F18: every run wrote data files and forgot them at exit."""
    root = project(make_project, uri=uri)
    with pytest.raises(ConfigError, match=r"in-memory SQLite database"):
        open_catalog(load_project(root, env={}))


@pytest.mark.parametrize(("make", "says"), [(lambda p: p.write_text("hello\n"), "is not a SQLite database"), (lambda p: p.mkdir(), "is a folder")])
def test_a_catalog_file_that_is_no_database_is_a_config_error(make_project, tmp_path, make, says):
    """F17: raw ``sqlite3.DatabaseError`` / ``OperationalError`` tracebacks."""
    target = tmp_path / "thing.db"
    make(target)
    root = project(make_project, uri=f"sqlite:///{target}")
    with pytest.raises(ConfigError, match=says):
        open_catalog(load_project(root, env={}))


def test_relative_catalog_paths_are_relative_to_the_project(make_project, tmp_path, monkeypatch):
    """F18: ``sqlite:///relative.db`` and a relative ``${file:...}`` in the catalog URI were resolved
    against the current directory: another directory opened another (empty) catalog."""
    root = project(make_project, uri="${file:secrets/catalog_uri}")
    (root / "secrets").mkdir()
    (root / "secrets" / "catalog_uri").write_text("sqlite:///state/cat.db\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    catalog = open_catalog(load_project(root, env={}))
    run_pipeline(load_project(root, env={}), "p", catalog)
    catalog.engine.dispose()
    assert (root / "state" / "cat.db").is_file() and list(elsewhere.iterdir()) == []
    monkeypatch.chdir(root)
    again = open_catalog(load_project(root, env={}))
    assert len(again.load_table("raw.t").scan().to_arrow()) == 2
    again.engine.dispose()


def test_an_icefield_catalog_database_is_accepted(make_project, tmp_path):
    db = tmp_path / "shared.db"
    first = sql_catalog("c", f"sqlite:///{db}", (tmp_path / "wh").as_uri())
    first.create_namespace("n")
    first.engine.dispose()
    sql_catalog("c", f"sqlite:///{db}", (tmp_path / "wh").as_uri()).engine.dispose()


def test_an_unreachable_catalog_server_is_transient_and_hides_the_password(tmp_path):
    """F19: an unreachable catalog server exited 2 (configuration); a retry may succeed: 75."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    uri = f"postgresql+psycopg2://icefield:hunter2secret@127.0.0.1:{port}/lake"
    with pytest.raises(TransientError) as info:
        sql_catalog("c", uri, (tmp_path / "wh").as_uri())
    assert "unreachable" in str(info.value) and "hunter2secret" not in str(info.value)


def test_kafka_file_references_are_relative_to_the_project(tmp_path, monkeypatch):
    """F18: a Kafka source's ``properties`` and ``bootstrap_servers`` read a relative ``${file:...}``
    from the current directory."""
    from icefield.config.models import KafkaSourceConfig
    from icefield.ingest.kafka import consumer_config

    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("s3cret-pass\n")
    (tmp_path / "secrets" / "servers").write_text("broker:9092\n")
    monkeypatch.chdir("/")
    cfg = KafkaSourceConfig(type="kafka", topic="t", bootstrap_servers="${file:secrets/servers}", properties={"sasl.password": "${file:secrets/pw}"})
    conf = consumer_config(cfg, "p", "source", base_dir=tmp_path)
    assert conf["bootstrap.servers"] == "broker:9092" and conf["sasl.password"] == "s3cret-pass"


# ------------------------------------------------------------------------------------------- F6


_READER = """
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
catalog = SqlCatalog("icefield", uri=sys.argv[1])
table = catalog.load_table("raw.t")
print(json.dumps({"ids": sorted(r["id"] for r in table.scan().to_arrow().to_pylist()),
                  "location": table.location(), "files": [t.file.file_path for t in table.scan().plan_files()]}))
"""


@pytest.mark.parametrize("folder", ["sp ace", "per%20cent"])
def test_a_project_path_that_needs_escaping_keeps_its_warehouse_inside(make_project, tmp_path, folder):
    """F6: in ``…/sp ace/p`` the Parquet and metadata files landed in a new sibling folder
    ``…/sp%20ace/p/.icefield/warehouse`` (a percent-encoded URI taken as a path), and the stored
    locations pointed to a folder that held no files for standards-following readers."""
    root = project(make_project, root=tmp_path / folder / "proj")
    catalog = open_catalog(load_project(root, env={}))
    res = run_pipeline(load_project(root, env={}), "p", catalog)
    assert res.rows_committed == 2
    catalog.engine.dispose()
    outside = [p for p in tmp_path.rglob("*.parquet") if not p.resolve().is_relative_to(root.resolve())]
    assert outside == [] and list((root / ".icefield" / "warehouse").rglob("*.parquet"))
    uri = f"sqlite:///{(root / '.icefield' / 'catalog.db').as_posix()}"
    done = subprocess.run([sys.executable, "-c", _READER, uri], capture_output=True, text=True, check=True, timeout=120)
    seen = json.loads(done.stdout)
    assert seen["ids"] == [1, 2]
    for location in [seen["location"], *seen["files"]]:
        fs, path = pafs.FileSystem.from_uri(location)
        assert Path(path).resolve().is_relative_to(root.resolve()), location
    assert all(pafs.FileSystem.from_uri(f)[0].get_file_info(pafs.FileSystem.from_uri(f)[1]).is_file for f in seen["files"])


def test_a_catalog_whose_driver_is_missing_names_the_package_to_install(tmp_path: Path) -> None:
    """F19: a `mysql://` catalog said `pip install icefield[postgres]` (and Rich swallowed `[postgres]`)."""
    from click.testing import CliRunner

    from icefield.cli import cli

    root = tmp_path / "p"
    root.mkdir()
    (root / "icefield.yaml").write_text("name: p\ncatalog: {uri: 'mysql://u:pw@127.0.0.1:1/lake'}\n")
    res = CliRunner().invoke(cli, ["--project", str(root), "tables"])
    assert res.exit_code == 2, res.output
    assert "pip install mysqlclient" in res.output and "postgres" not in res.output
