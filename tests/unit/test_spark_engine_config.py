"""``engine: spark`` in the configuration, without starting Spark: the project and pipeline settings, the catalog
properties Spark is given (the same database and warehouse as icefield's catalog), and what is refused before
any Spark work, with the fix in the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from icefield import load_project
from icefield.engines import get_engine
from icefield.engines.spark import SparkEngine
from icefield.engines.spark_session import catalog_settings, find_jars, jdbc_url_from_sqlalchemy
from icefield.errors import ConfigError


def _project(root: Path, yaml: str, pipeline: str = "") -> object:
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text(yaml)
    (root / "pipelines" / "p.yaml").write_text(
        "name: p\nsource: {type: files, path: 'data/*.csv'}\ntarget: {table: raw.p}\n" + pipeline
    )
    return load_project(root)


def test_a_project_and_a_pipeline_choose_the_spark_engine(tmp_path: Path) -> None:
    project = _project(
        tmp_path / "a",
        "name: a\nengine: spark\nspark: {master: 'spark://127.0.0.1:7077', memory: 4g, conf: {spark.executor.cores: '2'}}\n",
    )
    cfg = project.config  # type: ignore[attr-defined]
    assert cfg.engine == "spark" and cfg.spark.master == "spark://127.0.0.1:7077" and cfg.spark.conf == {"spark.executor.cores": "2"}
    engine = get_engine(cfg.engine, project)  # type: ignore[arg-type]
    assert isinstance(engine, SparkEngine) and engine.capabilities.supports_merge and engine.capabilities.distributed

    local = _project(tmp_path / "b", "name: b\n", pipeline="engine: spark\n")
    assert local.pipeline("p").engine == "spark" and local.config.engine == "local"  # type: ignore[attr-defined]


def test_the_spark_engine_needs_the_project(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="engine spark needs the project"):
        get_engine("spark")


def test_spark_is_given_the_catalog_database_and_warehouse_of_icefield(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    settings = catalog_settings("icefield", f"sqlite:///{db}", str(tmp_path / "wh"))
    assert settings["spark.sql.catalog.icefield"] == "org.apache.iceberg.spark.SparkCatalog"
    assert settings["spark.sql.catalog.icefield.type"] == "jdbc"
    assert settings["spark.sql.catalog.icefield.uri"] == f"jdbc:sqlite:{db}"
    assert settings["spark.sql.catalog.icefield.warehouse"] == (tmp_path / "wh").as_uri()
    assert settings["spark.sql.catalog.icefield.cache-enabled"] == "false"
    assert settings["spark.sql.catalog.icefield.jdbc.schema-version"] == "V1"
    url, user, password = jdbc_url_from_sqlalchemy("postgresql+psycopg2://ice:s%40cret@db.local:5433/cat?sslmode=require")
    assert (url, user, password) == ("jdbc:postgresql://db.local:5433/cat?sslmode=require", "ice", "s@cret")
    with pytest.raises(ConfigError, match="in-memory SQLite catalog cannot be shared"):
        jdbc_url_from_sqlalchemy("sqlite://")


def test_missing_jars_are_named_with_the_command_that_fetches_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"iceberg-spark-runtime-4\.1_2\.13-1\.11\.0\.jar.*python -m stack\.spark jars"):
        find_jars(tmp_path)


def test_an_s3_warehouse_reads_and_writes_through_iceberg_s3fileio_with_the_projects_storage_settings() -> None:
    storage = {"s3.endpoint": "http://127.0.0.1:9000", "s3.region": "eu-west-1", "s3.access-key-id": "k",
               "s3.secret-access-key": "s", "s3.path-style-access": "true"}
    conf = catalog_settings("lake", "sqlite:////tmp/c.db", "s3://bucket/wh", storage)
    p = "spark.sql.catalog.lake"
    assert conf[f"{p}.io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    assert conf[f"{p}.client.region"] == "eu-west-1"
    assert (conf[f"{p}.s3.endpoint"], conf[f"{p}.s3.access-key-id"], conf[f"{p}.s3.secret-access-key"]) == ("http://127.0.0.1:9000", "k", "s")
    assert conf[f"{p}.s3.path-style-access"] == "true" and conf[f"{p}.warehouse"] == "s3://bucket/wh"
    assert f"{p}.io-impl" not in catalog_settings("lake", "sqlite:////tmp/c.db", "/tmp/wh")
