"""Trino without a server: the launcher's files, the catalog it writes for a project, ``trino:`` in
icefield.yaml and what ``icefield sql --engine trino`` refuses before it connects."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from stack import StackError, Trino
from stack.base import ServiceNotInstalled
from stack.trino import TRINO_JAVA_ENV, _kept, find_trino_java

from icefield.cli import cli


def _props(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def _project(root: Path, yaml: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "icefield.yaml").write_text(yaml)
    return root


def test_only_the_iceberg_plugin_is_unpacked() -> None:
    assert _kept("lib/trino-main-476.jar") and _kept("bin/launcher") and _kept("plugin/") and _kept("plugin")
    assert _kept("plugin/iceberg/trino-iceberg-476.jar")
    assert not _kept("plugin/hive/trino-hive-476.jar") and not _kept("plugin/iceberg-extra/x.jar")


def test_the_server_listens_on_localhost_with_its_catalogs(tmp_path: Path) -> None:
    server = Trino(tmp_path, port=18555)
    server._server = tmp_path / "server"  # what install() finds
    server.prepare()
    config, node = _props(server.config_file), _props(server.etc_dir / "node.properties")
    assert config["http-server.http.port"] == "18555" and config["discovery.uri"] == "http://127.0.0.1:18555"
    assert node["node.bind-ip"] == "127.0.0.1" and config["catalog.config-dir"] == str(server.etc_dir / "catalog")
    assert "-Xmx2g" in (server.etc_dir / "jvm.config").read_text().split()


def test_a_project_catalog_shares_icefields_catalog_name_database_and_warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPW", "s3cr:et")
    root = _project(
        tmp_path / "p",
        "catalog: {name: lake, uri: 'postgresql+psycopg2://app:${env:PGPW}@127.0.0.1:5544/lakedb'}\nwarehouse: wh\n",
    )
    server = Trino(tmp_path / "stack", port=18556)
    props = _props(server.add_project_catalog(root))
    assert props["connector.name"] == "iceberg" and props["iceberg.catalog.type"] == "jdbc"
    assert props["iceberg.jdbc-catalog.catalog-name"] == "lake"  # the catalog_name column icefield writes
    assert props["iceberg.jdbc-catalog.connection-url"] == "jdbc:postgresql://127.0.0.1:5544/lakedb"
    assert (props["iceberg.jdbc-catalog.connection-user"], props["iceberg.jdbc-catalog.connection-password"]) == ("app", "s3cr:et")
    assert props["iceberg.jdbc-catalog.default-warehouse-dir"] == (root / "wh").resolve().as_uri()
    assert props["fs.native-local.enabled"] == "true" and props["local.location"] == "/"
    assert server.catalog_file("lake").stat().st_mode & 0o077 == 0  # it holds the password


def test_a_sqlite_catalog_cannot_be_shared_with_trino(tmp_path: Path) -> None:
    root = _project(tmp_path / "p", "name: p\n")
    with pytest.raises(StackError, match="PostgreSQL"):
        Trino(tmp_path / "stack", port=18557).add_project_catalog(root)
    with pytest.raises(StackError, match="lowercase"):
        Trino(tmp_path / "stack", port=18557).add_catalog("Lake-1", "jdbc:postgresql://h/d", "u", "p", tmp_path)


def test_a_java_home_older_than_24_is_refused_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRINO_JAVA_ENV, str(tmp_path / "no-jdk"))
    with pytest.raises(ServiceNotInstalled, match=f"Java 24\\+.*{TRINO_JAVA_ENV}"):
        find_trino_java()


@pytest.mark.parametrize(
    ("trino", "message"),
    [
        ("{uri: 'ftp://x'}", "not a server URL"),
        ("{uri: 'http://127.0.0.1:18080', password: pw}", "https only"),
    ],
)
def test_a_bad_trino_section_is_a_config_error(tmp_path: Path, trino: str, message: str) -> None:
    root = _project(tmp_path / "p", f"trino: {trino}\n")
    res = CliRunner().invoke(cli, ["--project", str(root), "sql", "--engine", "trino", "SELECT 1"])
    assert res.exit_code == 2 and message in res.output


def test_sql_on_trino_needs_a_server_and_sends_only_reads(tmp_path: Path) -> None:
    root = _project(tmp_path / "p", "name: p\n")
    res = CliRunner().invoke(cli, ["--project", str(root), "sql", "--engine", "trino", "SELECT 1"])
    assert res.exit_code == 2 and "trino:" in res.output
    (root / "icefield.yaml").write_text("trino: {uri: 'http://127.0.0.1:9'}\n")
    for statement in ("DELETE FROM a.b", "/* x */ INSERT INTO a.b VALUES 1", "EXPLAIN ANALYZE DELETE FROM a.b"):
        res = CliRunner().invoke(cli, ["--project", str(root), "sql", "--engine", "trino", statement])
        assert res.exit_code == 2 and "--unrestricted" in res.output, statement


def test_sql_on_trino_is_refused_under_an_access_policy(tmp_path: Path) -> None:
    from icefield import load_project
    from icefield.errors import QueryRefusedError
    from icefield.query import view_policy
    from icefield.query.trino import trino_rows

    class MaskNothing:
        def rule(self, view: object) -> None:
            return None

    project = load_project(_project(tmp_path / "p", "trino: {uri: 'http://127.0.0.1:9'}\n"))
    with view_policy(MaskNothing()), pytest.raises(QueryRefusedError, match="Trino does not apply it"):
        trino_rows(project, "SELECT 1")
