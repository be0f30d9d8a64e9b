"""The Iceberg REST catalog, against a real server (Apache Iceberg's reference REST catalog, started natively).

icefield lands an append pipeline and merge pipelines (both merge modes) through the server, a rerun
commits nothing, ``icefield sql`` and ``icefield tables`` read through it, and a refused token or an
unreachable server gives the documented exit code (2 and 75) without showing the token.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from stack import RestCatalog

from icefield import load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.cli import EXIT_TRANSIENT, EXIT_USAGE, cli

pytestmark = pytest.mark.rest


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _project(root: Path, uri: str, login: str = "token: '${env:ICEFIELD_TEST_REST_TOKEN}'") -> Path:
    _write(root, "icefield.yaml", f"name: restproj\ncatalog: {{type: rest, name: lake, uri: '{uri}', {login}}}\n")
    return root


def _token(server: RestCatalog) -> str:
    assert server.token is not None
    return server.token


def _credential(server: RestCatalog) -> str:
    assert server.credential is not None
    return server.credential


def _cli(root: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["--project", str(root), *args])
    return res.exit_code, res.output


def test_append_pipeline_lands_once_through_the_rest_catalog(
    tmp_path: Path, rest_server: RestCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICEFIELD_TEST_REST_TOKEN", _token(rest_server))
    root = _project(tmp_path / "p", rest_server.url())
    _write(root, "pipelines/ev.yaml", "name: ev\nsource: {type: files, path: 'data/*.csv'}\ntarget: {table: app.ev, partition_by: [kind]}\n")
    _write(root, "data/a.csv", "id,kind,amount\n1,x,1.5\n2,y,2.5\n3,x,-1\n")
    project = load_project(root)
    first = run_pipeline(project, "ev")
    assert first.rows_committed == 3 and first.conserved
    assert run_pipeline(project, "ev").snapshots == [], "a rerun commits nothing"
    _write(root, "data/b.csv", "id,kind,amount\n4,y,4\n")
    assert run_pipeline(project, "ev").rows_committed == 1

    # The table lives in the server's catalog (and its warehouse), not in a catalog of the project's.
    table = open_catalog(project).load_table("app.ev")
    assert table.metadata_location.startswith(str(rest_server.warehouse))
    assert len(table.metadata.snapshots) == 2
    assert not (root / ".icefield" / "catalog.db").exists()

    code, out = _cli(root, "--json", "tables")
    assert code == 0, out
    listed = {t["table"]: t for t in json.loads(out)["tables"]}
    assert listed["app.ev"]["rows"] == 4 and listed["app.ev"]["snapshots"] == 2
    code, out = _cli(root, "--json", "sql", "select id, kind from app.ev order by id")
    assert code == 0, out
    assert [(r["id"], r["kind"]) for r in json.loads(out)["rows"]] == [(1, "x"), (2, "y"), (3, "x"), (4, "y")]


@pytest.mark.parametrize("merge_mode", ["copy-on-write", "merge-on-read"])
def test_merge_pipeline_through_the_rest_catalog_with_an_oauth2_credential(
    tmp_path: Path, rest_server: RestCatalog, monkeypatch: pytest.MonkeyPatch, merge_mode: str
) -> None:
    monkeypatch.setenv("ICEFIELD_TEST_REST_CREDENTIAL", _credential(rest_server))
    root = _project(tmp_path / "p", rest_server.url(), "credential: '${env:ICEFIELD_TEST_REST_CREDENTIAL}'")
    table = f"shop.orders_{merge_mode.replace('-', '_')}"
    _write(
        root,
        "pipelines/orders.yaml",
        "name: orders\nsource: {type: files, path: 'data/*.csv'}\n"
        f"target: {{table: {table}, mode: merge, keys: [id], properties: {{write.merge.mode: {merge_mode}}}}}\n",
    )
    _write(root, "data/1.csv", "id,status\n1,new\n2,new\n")
    project = load_project(root)
    assert run_pipeline(project, "orders").rows_committed == 2
    _write(root, "data/2.csv", "id,status\n2,paid\n3,new\n")
    assert run_pipeline(project, "orders").rows_committed == 2
    assert run_pipeline(project, "orders").snapshots == [], "a rerun commits nothing"

    code, out = _cli(root, "--json", "sql", f"select id, status from {table} order by id")
    assert code == 0, out
    assert [(r["id"], r["status"]) for r in json.loads(out)["rows"]] == [(1, "new"), (2, "paid"), (3, "new")]
    loaded = open_catalog(project).load_table(table)
    assert loaded.properties.get("write.merge.mode") == merge_mode


def test_a_held_lease_stops_a_second_run_through_the_rest_catalog(
    tmp_path: Path, rest_server: RestCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server has no database of icefield's: the writer lease lives in the project's lease database."""
    from icefield.catalog import leases

    monkeypatch.setenv("ICEFIELD_TEST_REST_TOKEN", _token(rest_server))
    root = _project(tmp_path / "p", rest_server.url())
    _write(root, "pipelines/ev.yaml", "name: ev\nsource: {type: files, path: 'data/*.csv'}\ntarget: {table: lease.ev}\n")
    _write(root, "data/a.csv", "id\n1\n")
    project = load_project(root)
    held = leases.acquire(open_catalog(project), "lease.ev", "run-elsewhere", "pipeline ev")
    try:
        with pytest.raises(leases.LeaseHeldError, match="run run-elsewhere of pipeline ev"):
            run_pipeline(project, "ev")
    finally:
        held.release()
    assert (root / ".icefield" / "leases.db").is_file()
    assert run_pipeline(project, "ev").rows_committed == 1


def test_a_refused_token_is_a_config_error_that_does_not_show_it(
    tmp_path: Path, rest_server: RestCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-token-" + _token(rest_server)[::-1]
    monkeypatch.setenv("ICEFIELD_TEST_REST_TOKEN", wrong)
    root = _project(tmp_path / "p", rest_server.url())
    code, out = _cli(root, "tables")
    assert code == EXIT_USAGE, out
    assert "refused the login" in out and "catalog.token" in out
    assert wrong not in out


def test_a_refused_credential_is_a_config_error(tmp_path: Path, rest_server: RestCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICEFIELD_TEST_REST_CREDENTIAL", "icefield-test-client:not-the-secret")
    root = _project(tmp_path / "p", rest_server.url(), "credential: '${env:ICEFIELD_TEST_REST_CREDENTIAL}'")
    code, out = _cli(root, "tables")
    assert code == EXIT_USAGE, out
    assert "refused the login" in out and "not-the-secret" not in out


def test_an_unreachable_rest_server_is_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "icefield-unreachable-token-7f3a"
    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        monkeypatch.setenv("ICEFIELD_TEST_REST_TOKEN", token)
        root = _project(tmp_path / "p", f"http://127.0.0.1:{port}")
        code, out = _cli(root, "tables")
    assert code == EXIT_TRANSIENT, out
    assert "unreachable" in out and token not in out
