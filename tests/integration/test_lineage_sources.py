"""OpenLineage names of real sources (issue 19, item 4): a pipeline from a PostgreSQL table and one from a
Kafka topic send events whose input is named by the OpenLineage naming conventions (``postgres://host:port``
and ``database.schema.table``; ``kafka://host:port`` and the topic) and validate against the schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
import yaml
from stack import Kafka
from tests.openlineage_schemas import validate_event

from icefield.catalog import open_catalog
from icefield.config import load_project
from icefield.observe.configured import configured_observers
from icefield.pipeline import run_plan
from icefield.pipeline.plan import build_plan


def _project(root: Path, source: dict[str, Any]) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "sources", "lineage": {"transport": "file"}}), encoding="utf-8")
    pipe = {"name": "load", "source": source, "target": {"table": "raw.load", "mode": "overwrite" if source["type"] == "sql" else "append"}}
    (root / "pipelines" / "load.yaml").write_text(yaml.safe_dump(pipe), encoding="utf-8")
    return root


def _run(root: Path) -> list[dict[str, Any]]:
    project = load_project(root)
    catalog = open_catalog(project)
    try:
        done = run_plan(project, build_plan(project), catalog, observers=configured_observers(project))
    finally:
        catalog.engine.dispose()
    assert done.error is None, done.failures
    path = root / ".icefield" / "lineage.jsonl"
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for e in events:
        validate_event(e)
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    return events


@pytest.mark.postgres
def test_a_postgres_source_is_named_postgres_host_port_and_database_schema_table(tmp_path: Path, pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as con:
            con.execute(sa.text("create schema sales"))
            con.execute(sa.text("create table sales.orders (order_id bigint primary key, amount numeric(10,2))"))
            con.execute(sa.text("insert into sales.orders values (1, 2.50), (2, 4.00)"))
    finally:
        engine.dispose()
    root = _project(tmp_path / "proj", {"type": "sql", "url": pg_url, "schema": "sales", "table": "orders"})
    events = _run(root)
    url = urlsplit(pg_url)
    for e in events:
        assert [(i["namespace"], i["name"]) for i in e["inputs"]] == [(f"postgres://{url.hostname}:{url.port}", f"{url.path.lstrip('/')}.sales.orders")]
        assert "@" not in e["inputs"][0]["namespace"]  # no user, no password
    assert events[1]["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 2


@pytest.mark.kafka
def test_a_kafka_source_is_named_kafka_bootstrap_and_topic(tmp_path: Path, kafka_server: Kafka, kafka_topic: Any) -> None:
    from confluent_kafka import Producer

    topic = kafka_topic(partitions=1)
    producer = Producer({"bootstrap.servers": kafka_server.bootstrap_servers})
    for i in range(3):
        producer.produce(topic, value=json.dumps({"id": i}).encode(), key=str(i).encode())
    assert producer.flush(30) == 0
    root = _project(tmp_path / "proj", {"type": "kafka", "bootstrap_servers": kafka_server.bootstrap_servers, "topic": topic})
    events = _run(root)
    first = kafka_server.bootstrap_servers.split(",")[0]
    for e in events:
        assert [(i["namespace"], i["name"]) for i in e["inputs"]] == [(f"kafka://{first}", topic)]
    assert events[1]["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 3
