"""``engine: spark`` on an Iceberg REST catalog and on a Hive Metastore (markers ``spark``, ``rest``, ``hive``).

The Spark session's Iceberg catalog is Iceberg's ``RESTCatalog`` on the project's server with the project's
login (the bearer token, from a secret): Spark writes each batch on the staging branch through the server and
icefield moves ``main`` there with the position, through the server too. An append with a quarantined row and
a merge land as on the local engine (a second project on the same server, in another namespace). The same
on a Hive Metastore (Iceberg's ``HiveCatalog``, with the Hive client pyspark ships).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from stack import HiveMetastore, RestCatalog

from icefield import Project, load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.iceberg.history import read_position

pytestmark = [
    pytest.mark.spark,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(r"ignore:unclosed <socket\.socket:ResourceWarning"),
]


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _project(root: Path, engine: str, catalog: str) -> Project:
    ns = f"{engine}_ns"
    _write(root, "icefield.yaml", f"name: serverspark\nengine: {engine}\ncatalog: {catalog}\nspark: {{master: 'local[2]', memory: 1g}}\n")
    _write(
        root, "pipelines/app.yaml",
        f"name: app\nsource: {{type: files, path: 'data/app/*.csv', format: csv}}\ntarget: {{table: {ns}.app}}\n"
        "checks:\n  - range: {column: amount, min: 0}\n",
    )
    _write(
        root, "pipelines/acc.yaml",
        f"name: acc\nsource: {{type: files, path: 'data/acc/*.csv', format: csv, file_column: null}}\n"
        f"target: {{table: {ns}.acc, mode: merge, keys: [id], delete_column: deleted}}\n",
    )
    return load_project(root)


def _rows(project: Project, table: str) -> list[tuple[Any, ...]]:
    data = open_catalog(project).load_table(table).scan().to_arrow()
    names = [c for c in data.column_names if not c.startswith("_")]
    return sorted(tuple(r[c] for c in names) for r in data.to_pylist())


def _same_on_both(projects: dict[str, Project], kind: str) -> None:
    from icefield.engines.spark_session import project_session

    session = project_session(projects["spark"])
    try:
        assert session.conf.get("spark.sql.catalog.lake.type") == kind
        for project in projects.values():
            _write(project.root, "data/app/1.csv", "id,kind,amount,deleted\n" + "".join(f"{i},a,{i}.5,false\n" for i in range(1, 21)) + "21,bad,-1,false\n")
            _write(project.root, "data/acc/1.csv", "id,kind,amount,deleted\n" + "".join(f"{i},x,{i},false\n" for i in range(1, 11)))
        for rnd in (1, 2):
            if rnd == 2:
                for project in projects.values():
                    _write(project.root, "data/acc/2.csv", "id,kind,amount,deleted\n3,d,0,true\n4,u,40,false\n30,n,30,false\n")
            for name in ("app", "acc"):
                for engine, project in projects.items():
                    started = time.monotonic()
                    result = run_pipeline(project, name)
                    print(f"{name} on {engine}: {time.monotonic() - started:.1f}s")
                    assert result.status == "success", result.error
                tables = {e: f"{e}_ns.{name}" for e in projects}
                assert _rows(projects["spark"], tables["spark"]) == _rows(projects["local"], tables["local"])
                positions = [read_position(open_catalog(p).load_table(tables[e]), name) for e, p in projects.items()]
                assert positions[0] == positions[1] is not None
        tbl = open_catalog(projects["spark"]).load_table("spark_ns.acc")
        assert tbl.current_snapshot().summary.additional_properties.get("engine-name") == "spark"  # type: ignore[union-attr]
        assert len(_rows(projects["spark"], "spark_ns.acc")) == 10
        assert len(_rows(projects["spark"], "spark_ns.app__quarantine")) == 1
    finally:
        session.stop()


@pytest.mark.rest
def test_spark_lands_through_a_rest_catalog_as_the_local_engine_does(
    tmp_path: Path, rest_server: RestCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rest_server.token is not None
    monkeypatch.setenv("ICEFIELD_TEST_REST_TOKEN", rest_server.token)
    catalog = f"{{type: rest, name: lake, uri: '{rest_server.url()}', token: '${{env:ICEFIELD_TEST_REST_TOKEN}}'}}"
    _same_on_both({e: _project(tmp_path / e, e, catalog) for e in ("local", "spark")}, "rest")


@pytest.mark.hive
def test_spark_lands_through_a_hive_metastore_as_the_local_engine_does(tmp_path: Path, hive_server: HiveMetastore) -> None:
    catalog = f"{{type: hive, name: lake, uri: '{hive_server.url()}'}}"
    _same_on_both({e: _project(tmp_path / e, e, catalog) for e in ("local", "spark")}, "hive")
