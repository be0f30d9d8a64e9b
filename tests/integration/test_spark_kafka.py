"""On ``engine: spark``, Spark reads a ``kafka`` source itself (markers ``spark``, ``kafka``).

Two projects read the same topic (4 partitions), one on each engine. On Spark, once the table exists, the
messages between the table's position and the end offsets are read by Spark's Kafka source (one task per
partition) and decoded in Spark's Python workers by icefield's own decoder with the table's types; only the
messages it cannot decode as the table is (poison, a bad value, a new field) and the rows a check may refuse
come back to the run, to be decoded and decided as on the local engine. The tables, the quarantined records
(check, reason, raw message, topic/partition/offset), the counts and the positions are the same; a new field
evolves the table on both.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from stack import Kafka

from icefield import Project, load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.iceberg.history import read_position

pytestmark = [
    pytest.mark.spark,
    pytest.mark.kafka,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(r"ignore:unclosed <socket\.socket:ResourceWarning"),
]


def _project(root: Path, engine: str, kafka: Kafka, topic: str) -> Project:
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "kspark", "engine": engine, "spark": {"master": "local[2]", "memory": "1g"}}))
    pipeline = {
        "name": "events",
        "source": {"type": "kafka", "bootstrap_servers": kafka.bootstrap_servers, "topic": topic, "group_id": f"icefield-{engine}"},
        "target": {"table": "raw.events"},
        "batch_size": 600,
        "checks": [{"range": {"column": "amount", "min": 0}}],
    }
    (root / "pipelines" / "events.yaml").write_text(yaml.safe_dump(pipeline))
    project = load_project(root)
    open_catalog(project)
    return project


def _produce(kafka: Kafka, topic: str, values: list[bytes | None]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 5})
    for i, value in enumerate(values):
        producer.produce(topic, value=value, key=str(i).encode())
        producer.poll(0)
    assert producer.flush(30) == 0


def _events(start: int, n: int) -> list[bytes | None]:
    return [json.dumps({"id": i, "user": f"u{i % 17}", "amount": round(i * 0.25, 2), "ok": i % 3 == 0}).encode() for i in range(start, start + n)]


def _rows(project: Project, table: str) -> list[tuple[Any, ...]]:
    data = open_catalog(project).load_table(table).scan().to_arrow()
    return sorted(tuple(r.values()) for r in data.to_pylist())


def _quarantine(project: Project) -> list[tuple[Any, ...]]:
    data = open_catalog(project).load_table("raw.events__quarantine").scan().to_arrow()
    # batch ids differ: Spark takes a batch's messages from every partition alike, the local reader as they come
    return sorted((r["check"], r["reason"], r["raw"], r["source"]) for r in data.to_pylist())


def test_spark_reads_and_decodes_kafka_as_the_local_engine_does(
    tmp_path: Path, kafka_server: Kafka, kafka_topic: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    from icefield.engines.spark_session import project_session

    topic = kafka_topic(partitions=4)
    projects = {e: _project(tmp_path / e, e, kafka_server, topic) for e in ("local", "spark")}
    session = project_session(projects["spark"])
    try:
        def run_both() -> dict[str, Any]:
            results = {}
            for engine, project in projects.items():
                caplog.clear()
                started = time.monotonic()
                with caplog.at_level(logging.INFO, logger="icefield.engines.spark"):
                    results[engine] = run_pipeline(project, "events")
                print(f"{engine}: {time.monotonic() - started:.1f}s {len(results[engine].batches)} batches")
                assert results[engine].status == "success", results[engine].error
                assert results[engine].conserved
                results[engine + "_log"] = [r.getMessage() for r in caplog.records]
            for key in ("rows_in", "rows_committed", "rows_quarantined"):
                assert getattr(results["spark"], key) == getattr(results["local"], key), key
            assert _rows(projects["spark"], "raw.events") == _rows(projects["local"], "raw.events")
            positions = [read_position(open_catalog(p).load_table("raw.events"), "events") for p in projects.values()]
            assert positions[0] == positions[1] is not None
            return results

        # The first run creates the table (the local reader on both: Spark needs the table's types).
        _produce(kafka_server, topic, _events(0, 200))
        run_both()
        # Then 2,000 messages with poison among them: not JSON, a tombstone, a text amount, a negative amount (a
        # check), and a field the table does not have (the table gains it on both).
        poison: list[bytes | None] = [b"not json", None, b'{"id": 9001, "amount": "12abc"}', b'{"id": 9002, "amount": -4.5}',
                                      b'{"id": 9003, "amount": 1.5, "note": "new"}']
        _produce(kafka_server, topic, _events(200, 1000) + poison + _events(1200, 1000))
        results = run_both()
        assert results["spark"].rows_in == 2005 and results["spark"].rows_quarantined == 4
        read = [re.match(r"spark read (\d+) messages of (\d+) partition", m) for m in results["spark_log"]]
        assert sum(int(m[1]) for m in read if m) == 2005, results["spark_log"]
        assert "note" in open_catalog(projects["spark"]).load_table("raw.events").schema().column_names
        assert _quarantine(projects["spark"]) == _quarantine(projects["local"])
        # Nothing new: nothing read.
        results = run_both()
        assert results["spark"].rows_in == 0
    finally:
        session.stop()
