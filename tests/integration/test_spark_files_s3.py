"""On ``engine: spark`` with the warehouse in an S3 bucket, Spark reads a ``files`` source's local files itself
(markers ``spark``, ``s3``): the files are read through ``file://`` paths while Spark's Iceberg catalog writes the
bucket through ``S3FileIO``. The tables, quarantines and positions are those of a local-engine project in another
prefix of the bucket.
"""

from __future__ import annotations

import json
import logging
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


def _project(root: Path, engine: str, warehouse: str, s3: S3Settings, drop: Path) -> Project:
    root.mkdir(parents=True)
    (root / "icefield.yaml").write_text(
        f"name: s3files\nengine: {engine}\nwarehouse: {warehouse}\nstorage: {json.dumps(s3.storage())}\n"
        "spark: {master: 'local[2]', memory: 1g}\n"
    )
    (root / "pipelines").mkdir()
    source = {"type": "files", "path": f"{drop}/*.csv", "roots": [str(drop)]}
    (root / "pipelines" / "app.yaml").write_text(
        f"name: app\nsource: {json.dumps(source)}\ntarget: {{table: raw.app}}\nbatch_size: 50\n"
        "checks:\n  - range: {column: amount, min: 0}\n"
    )
    project = load_project(root)
    open_catalog(project)
    return project


def _rows(project: Project, name: str, columns: tuple[str, ...] | None = None) -> list[tuple[Any, ...]]:
    rows = open_catalog(project).load_table(name).scan().to_arrow().to_pylist()
    return sorted(tuple(r[c] for c in columns) if columns else tuple(r.values()) for r in rows)


def _csv(path: Path, start: int, n: int, bad: dict[int, str] | None = None) -> None:
    lines = ["id,kind,amount"] + [f"{i},k{i % 3},{(bad or {}).get(i, str(i + 0.5))}" for i in range(start, start + n)]
    path.write_text("\n".join(lines) + "\n")


def test_spark_reads_local_files_into_an_s3_warehouse(
    tmp_path: Path, s3_server: S3Settings, s3_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from icefield.engines.spark_session import project_session

    drop = tmp_path / "drop"
    drop.mkdir()
    projects = {e: _project(tmp_path / e, e, f"{s3_prefix}/{e}", s3_server, drop) for e in ("local", "spark")}
    session = project_session(projects["spark"])
    try:
        assert session.conf.get("spark.sql.catalog.icefield.io-impl") == "org.apache.iceberg.aws.s3.S3FileIO"
        _csv(drop / "1.csv", 0, 20)
        for project in projects.values():  # the table is created by the run on both engines
            assert run_pipeline(project, "app").status == "success"
        _csv(drop / "2.csv", 100, 80, bad={105: "-1.5", 170: "oops"})
        results = {}
        for engine, project in projects.items():
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="icefield.ingest.files"):
                results[engine] = run_pipeline(project, "app")
            assert results[engine].status == "success", results[engine].error
            read = [r.getMessage() for r in caplog.records if r.getMessage().startswith("the engine read ")]
            assert read == (["the engine read 1 of 1 files (80 records)"] if engine == "spark" else [])
        assert [b.rows_in for b in results["spark"].batches] == [50, 30] and results["spark"].rows_quarantined == 2
        assert _rows(projects["spark"], "raw.app") == _rows(projects["local"], "raw.app")
        fields = ("batch_id", "check", "reason", "raw", "source")
        quarantined = [_rows(p, "raw.app__quarantine", fields) for p in projects.values()]
        assert quarantined[0] == quarantined[1] and len(quarantined[0]) == 2
        positions = [read_position(open_catalog(p).load_table("raw.app"), "app") for p in projects.values()]
        assert positions[0] == positions[1] is not None
        assert open_catalog(projects["spark"]).load_table("raw.app").location().startswith(f"{s3_prefix}/spark/")
    finally:
        session.stop()
