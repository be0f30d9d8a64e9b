"""``engine: spark`` on a warehouse in an S3 bucket (markers ``spark``, ``s3``).

Spark's Iceberg catalog reads and writes the object store through Iceberg's ``S3FileIO`` (the AWS bundle on
``spark.jars``) with the project's ``storage:`` settings, under Java's property names. The same pipelines run
on a local-engine project in another prefix of the bucket: the tables, quarantines and positions are the same,
and pyiceberg (the local engine's reader) reads what Spark wrote.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from stack.s3 import S3Settings

from icefield import Project, load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.iceberg.history import read_position

pytestmark = [
    pytest.mark.spark,
    pytest.mark.s3,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(r"ignore:unclosed <socket\.socket:ResourceWarning"),
]


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _project(root: Path, engine: str, warehouse: str, s3: S3Settings) -> Project:
    _write(
        root, "icefield.yaml",
        f"name: s3spark\nengine: {engine}\nwarehouse: {warehouse}\nstorage: {json.dumps(s3.storage())}\n"
        "spark: {master: 'local[2]', memory: 1g}\n",
    )
    _write(
        root, "pipelines/app.yaml",
        "name: app\nsource: {type: files, path: 'data/app/*.csv', format: csv}\n"
        "target: {table: raw.app}\nchecks:\n  - range: {column: amount, min: 0}\n",
    )
    _write(
        root, "pipelines/acc.yaml",
        "name: acc\nsource: {type: files, path: 'data/acc/*.csv', format: csv, file_column: null}\n"
        "target: {table: raw.acc, mode: merge, keys: [id], delete_column: deleted, properties: {write.merge.mode: merge-on-read}}\n",
    )
    project = load_project(root)
    open_catalog(project)
    return project


def _feed(projects: dict[str, Project], rel: str, rows: list[tuple[Any, ...]]) -> None:
    text = "id,kind,amount,deleted\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows)
    for project in projects.values():
        _write(project.root, rel, text)


def _rows(project: Project, table: str) -> list[tuple[Any, ...]]:
    data = open_catalog(project).load_table(table).scan().to_arrow()
    names = [c for c in data.column_names if not c.startswith("_")]
    return sorted(tuple(r[c] for c in names) for r in data.to_pylist())


def test_spark_lands_on_an_s3_warehouse_as_the_local_engine_does(tmp_path: Path, s3_server: S3Settings, s3_prefix: str) -> None:
    from icefield.engines.spark_session import project_session

    projects = {e: _project(tmp_path / e, e, f"{s3_prefix}/{e}", s3_server) for e in ("local", "spark")}
    session = project_session(projects["spark"])
    try:
        conf = session.conf
        assert conf.get("spark.sql.catalog.icefield.io-impl") == "org.apache.iceberg.aws.s3.S3FileIO"
        assert conf.get("spark.sql.catalog.icefield.s3.endpoint") == s3_server.endpoint
        _feed(projects, "data/app/1.csv", [(i, "a", float(i), "false") for i in range(1, 21)] + [(21, "bad", -1.0, "false")])
        _feed(projects, "data/acc/1.csv", [(i, "x", float(i), "false") for i in range(1, 11)])
        for name, table in (("app", "raw.app"), ("acc", "raw.acc")):
            results = {}
            for engine, project in projects.items():
                started = time.monotonic()
                results[engine] = run_pipeline(project, name)
                print(f"{name} on {engine}: {time.monotonic() - started:.1f}s")
                assert results[engine].status == "success", results[engine].error
            assert _rows(projects["spark"], table) == _rows(projects["local"], table)
            positions = [read_position(open_catalog(p).load_table(table), name) for p in projects.values()]
            assert positions[0] == positions[1] is not None
            tbl = open_catalog(projects["spark"]).load_table(table)
            assert tbl.current_snapshot().summary.additional_properties.get("engine-name") == "spark"  # type: ignore[union-attr]
            assert tbl.location().startswith(f"{s3_prefix}/spark/")
        # A merge with a delete and an update: merge-on-read delete files written by Spark on S3.
        _feed(projects, "data/acc/2.csv", [(3, "d", 0.0, "true"), (4, "u", 40.0, "false"), (30, "n", 30.0, "false")])
        for project in projects.values():
            assert run_pipeline(project, "acc").status == "success"
        assert _rows(projects["spark"], "raw.acc") == _rows(projects["local"], "raw.acc")
        assert len(_rows(projects["spark"], "raw.acc")) == 10
        assert len(_rows(projects["spark"], "raw.app__quarantine")) == 1
    finally:
        session.stop()
