"""Kafka consumer lag (issue 19, items 1 and 2) against a real broker: after batches that land only part of a
topic, the lag a following run serves on /metrics and the lag a batch run pushes to the Pushgateway are, per
partition, the partition's high watermark (messages produced while the run goes on included) minus the offset
the table committed; once the rest lands it is 0, and Prometheus holds what was pushed."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from stack import Kafka
from tests.conftest import free_port
from tests.integration.conftest import PrometheusStack
from tests.integration.test_kafka_source import high_watermarks, produce

from icefield.catalog import open_catalog
from icefield.config import load_project
from icefield.iceberg.history import read_position
from icefield.observe.metrics import run_metrics
from icefield.pipeline.runner import run_pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.prometheus]

LAG = "icefield_kafka_consumer_lag_messages"
JOB = "icefield-lag-test"


def _project(root: Path, kafka: Kafka, topic: str, gateway: str, port: int, batch_size: int) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text(
        yaml.safe_dump({"name": "lag", "metrics": {"pushgateway": gateway, "job": JOB, "port": port}}), encoding="utf-8"
    )
    pipe = {
        "name": "events",
        # A batch closes at batch_size long before max_wait_seconds: each batch holds exactly batch_size messages.
        "source": {"type": "kafka", "bootstrap_servers": kafka.bootstrap_servers, "topic": topic, "max_wait_seconds": 30},
        "target": {"table": "raw.events"},
        "batch_size": batch_size,
    }
    (root / "pipelines" / "events.yaml").write_text(yaml.safe_dump(pipe), encoding="utf-8")
    return root


def _lag_in(text: str, **labels: str) -> dict[str, float]:
    """The consumer lag per partition in Prometheus' text format ``text``, of the series with ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        s.labels["partition"]: s.value
        for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == LAG and all(s.labels.get(k) == v for k, v in labels.items())
    }


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def _left(root: Path, kafka: Kafka, topic: str) -> dict[str, float]:
    """What the table has not landed yet, per partition: high watermark minus the table's position."""
    catalog = open_catalog(load_project(root))
    try:
        position = read_position(catalog.load_table("raw.events"), "events")
    finally:
        catalog.engine.dispose()
    assert position is not None
    committed = position["topics"][topic]
    return {p: float(end - committed[p]) for p, end in high_watermarks(kafka, topic).items()}


def test_the_lag_served_and_pushed_is_what_is_left_per_partition_then_zero(
    tmp_path: Path, kafka_server: Kafka, kafka_topic: Any, prometheus_stack: PrometheusStack
) -> None:
    stack = prometheus_stack
    topic = kafka_topic(partitions=3)
    produce(kafka_server, topic, [json.dumps({"id": i}).encode() for i in range(90)])
    port = free_port()
    root = _project(tmp_path / "proj", kafka_server, topic, stack.pushgateway.url(), port, batch_size=30)
    project = load_project(root)

    # A following run lands a batch of 30; 30 more messages arrive; it lands another 30. Its /metrics says, per
    # partition, what is left: up to the high watermarks after the new messages (120), not those it began at (90).
    landed: list[Any] = []

    def on_batch(res: Any) -> None:
        landed.append(res)
        if len(landed) == 1:
            produce(kafka_server, topic, [json.dumps({"id": i}).encode() for i in range(90, 120)])
            time.sleep(1.0)  # the consumer's next fetch response carries the new high watermarks

    with run_metrics(project.config.metrics, project.root, follow=True) as observers:
        first = run_pipeline(project, "events", observers=observers, follow=True, max_batches=2, on_batch=on_batch)
        served = _lag_in(_get(f"http://127.0.0.1:{port}/metrics"), pipeline="events", topic=topic)
    assert first.status == "success" and first.rows_committed == 60
    left = _left(root, kafka_server, topic)
    assert sum(left.values()) == 60 and set(left) == {"0", "1", "2"}
    assert served == left

    # A batch run lands 30 more and pushes when it ends: 30 left.
    with run_metrics(project.config.metrics, project.root) as observers:
        second = run_pipeline(project, "events", observers=observers, max_batches=1)
    assert second.rows_committed == 30
    left = _left(root, kafka_server, topic)
    assert sum(left.values()) == 30
    pushed = f"{stack.pushgateway.url()}/metrics"
    assert _lag_in(_get(pushed), job=JOB, pipeline="events", topic=topic) == left

    # The rest lands: 0 on every partition, in the Pushgateway and in Prometheus.
    with run_metrics(project.config.metrics, project.root) as observers:
        third = run_pipeline(project, "events", observers=observers)
    assert third.rows_committed == 30
    assert _lag_in(_get(pushed), job=JOB, pipeline="events", topic=topic) == {"0": 0.0, "1": 0.0, "2": 0.0}
    query = f'{LAG}{{job="{JOB}",pipeline="events",topic="{topic}"}}'
    deadline = time.monotonic() + 30
    while True:
        url = f"{stack.prometheus.url()}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        rows = json.loads(_get(url))["data"]["result"]
        if {r["metric"]["partition"]: float(r["value"][1]) for r in rows} == {"0": 0.0, "1": 0.0, "2": 0.0}:
            break
        assert time.monotonic() < deadline, f"Prometheus holds {rows} for {query}"
        time.sleep(0.5)
