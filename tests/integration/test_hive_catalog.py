"""The Hive catalog, against a real Hive Metastore (Hive's standalone metastore 3.1, started natively).

icefield lands an append pipeline and a merge pipeline through the metastore, a rerun commits nothing,
``icefield sql`` and ``icefield tables`` read through it, the writer lease lives in the project's lease
database, and an unreachable metastore exits 75 naming its URI.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from stack import HiveMetastore

from icefield import load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.cli import EXIT_TRANSIENT, cli

pytestmark = pytest.mark.hive


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _project(root: Path, uri: str) -> Path:
    _write(root, "icefield.yaml", f"name: hiveproj\ncatalog: {{type: hive, name: lake, uri: '{uri}'}}\n")
    return root


def _cli(root: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["--project", str(root), *args])
    return res.exit_code, res.output


def test_append_pipeline_lands_once_through_the_hive_metastore(tmp_path: Path, hive_server: HiveMetastore) -> None:
    root = _project(tmp_path / "p", hive_server.url())
    _write(root, "pipelines/ev.yaml", "name: ev\nsource: {type: files, path: 'data/*.csv'}\ntarget: {table: app.ev, partition_by: [kind]}\n")
    _write(root, "data/a.csv", "id,kind,amount\n1,x,1.5\n2,y,2.5\n3,x,-1\n")
    project = load_project(root)
    first = run_pipeline(project, "ev")
    assert first.rows_committed == 3 and first.conserved
    assert run_pipeline(project, "ev").snapshots == [], "a rerun commits nothing"
    _write(root, "data/b.csv", "id,kind,amount\n4,y,4\n")
    assert run_pipeline(project, "ev").rows_committed == 1
    assert run_pipeline(project, "ev").snapshots == [], "a rerun commits nothing"

    # The table is the metastore's (under the database folder it gave app), not a catalog of the project's.
    table = open_catalog(project).load_table("app.ev")
    assert Path(table.metadata_location.removeprefix("file:")).resolve().is_relative_to(hive_server.warehouse.resolve())
    assert len(table.metadata.snapshots) == 2
    assert not (root / ".icefield" / "catalog.db").exists()
    assert (root / ".icefield" / "leases.db").is_file(), "the writer leases live in the project's lease database"

    code, out = _cli(root, "--json", "tables")
    assert code == 0, out
    listed = {t["table"]: t for t in json.loads(out)["tables"]}
    assert listed["app.ev"]["rows"] == 4 and listed["app.ev"]["snapshots"] == 2
    code, out = _cli(root, "--json", "sql", "select id, kind, amount from app.ev order by id")
    assert code == 0, out
    assert [(r["id"], r["kind"], r["amount"]) for r in json.loads(out)["rows"]] == [
        (1, "x", 1.5), (2, "y", 2.5), (3, "x", -1.0), (4, "y", 4.0)
    ]


def test_merge_pipeline_lands_once_through_the_hive_metastore(tmp_path: Path, hive_server: HiveMetastore) -> None:
    root = _project(tmp_path / "p", hive_server.url())
    _write(
        root,
        "pipelines/orders.yaml",
        "name: orders\nsource: {type: files, path: 'data/*.csv'}\ntarget: {table: shop.orders, mode: merge, keys: [id]}\n",
    )
    _write(root, "data/1.csv", "id,status\n1,new\n2,new\n")
    project = load_project(root)
    assert run_pipeline(project, "orders").rows_committed == 2
    _write(root, "data/2.csv", "id,status\n2,paid\n3,new\n")
    assert run_pipeline(project, "orders").rows_committed == 2
    snapshots = len(open_catalog(project).load_table("shop.orders").metadata.snapshots)
    assert run_pipeline(project, "orders").snapshots == [], "a rerun commits nothing"
    assert len(open_catalog(project).load_table("shop.orders").metadata.snapshots) == snapshots

    code, out = _cli(root, "--json", "sql", "select id, status from shop.orders order by id")
    assert code == 0, out
    assert [(r["id"], r["status"]) for r in json.loads(out)["rows"]] == [(1, "new"), (2, "paid"), (3, "new")]


def test_a_held_lease_stops_a_second_run_through_the_hive_metastore(tmp_path: Path, hive_server: HiveMetastore) -> None:
    """The metastore has no table of icefield's: the writer lease lives in the project's lease database."""
    from icefield.catalog import leases

    root = _project(tmp_path / "p", hive_server.url())
    _write(root, "pipelines/ev.yaml", "name: ev\nsource: {type: files, path: 'data/*.csv'}\ntarget: {table: lease.ev}\n")
    _write(root, "data/a.csv", "id\n1\n")
    project = load_project(root)
    held = leases.acquire(open_catalog(project), "lease.ev", "run-elsewhere", "pipeline ev")
    try:
        with pytest.raises(leases.LeaseHeldError, match="run run-elsewhere of pipeline ev"):
            run_pipeline(project, "ev")
    finally:
        held.release()
    assert run_pipeline(project, "ev").rows_committed == 1


def test_an_unreachable_metastore_is_transient_and_named(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        uri = f"thrift://127.0.0.1:{s.getsockname()[1]}"
        root = _project(tmp_path / "p", uri)
        code, out = _cli(root, "tables")
    assert code == EXIT_TRANSIENT, out
    assert uri in out and "unreachable" in out
