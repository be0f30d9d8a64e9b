"""The stack's Kafka and Kafka Connect launchers against the real servers: KRaft broker lifecycle, and
PostgreSQL changes captured by Debezium through Connect's REST API into Kafka topics."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from stack import Connect, Kafka, Postgres
from stack.base import LOCALHOST, StackError, pid_alive, port_open
from stack.kafka import metadata_brokers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


@pytest.mark.kafka
def test_broker_answers_metadata_on_localhost(kafka_server: Kafka) -> None:
    state = kafka_server.status()
    assert state.running and state.pid is not None and pid_alive(state.pid)
    assert kafka_server.url() == f"127.0.0.1:{kafka_server.port}"
    assert (LOCALHOST, kafka_server.port) in metadata_brokers(LOCALHOST, kafka_server.port)
    assert kafka_server.start() is False, "a second start finds the running broker"
    conf = kafka_server.config_file.read_text()
    assert f"listeners=PLAINTEXT://127.0.0.1:{kafka_server.port},CONTROLLER://127.0.0.1:{kafka_server.controller_port}" in conf


@pytest.mark.kafka
def test_broker_lifecycle_in_its_own_state_dir(tmp_path: Path) -> None:
    kafka = Kafka(tmp_path / "stack", port=free_port(), controller_port=free_port())
    assert not kafka.status().running
    assert kafka.up(timeout=120) is True
    try:
        pid = kafka.status().pid
        assert pid is not None and (kafka.data_dir / "meta.properties").is_file()
        assert "Kafka Server started" in kafka.log_file.read_text()
    finally:
        assert kafka.stop() is True
    assert not pid_alive(pid) and not kafka.status().running
    assert not port_open(LOCALHOST, kafka.port)
    assert kafka.stop() is False


def _consume(kafka: Kafka, topic: str, want: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The first ``want`` change events of ``topic`` (JSON envelopes; tombstones as None payloads)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"probe-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            value = msg.value()
            out.append({"key": json.loads(msg.key()) if msg.key() else None, "value": json.loads(value) if value else None})
    finally:
        consumer.close()
    return out


@pytest.mark.connect
def test_debezium_captures_inserts_updates_and_deletes(
    connect_server: Connect, kafka_server: Kafka, pg_server: Postgres, pg_url: str, debezium_capture: Any
) -> None:
    db = pg_url.rsplit("/", 1)[1]
    pg_server.psql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2), note text)", db)
    pg_server.psql("CREATE TABLE other (id int PRIMARY KEY)", db)
    topics = debezium_capture(pg_url, ["public.orders"])
    topic = topics["public.orders"]
    state = connect_server.connector_status(connect_server.connectors()[0])
    assert state is not None and state["connector"]["state"] == "RUNNING"

    pg_server.psql(
        "BEGIN; INSERT INTO orders VALUES (1, 9.50, 'a'), (2, 20, 'b'); INSERT INTO other VALUES (1); COMMIT;"
        "UPDATE orders SET note = 'a2' WHERE id = 1;"
        "DELETE FROM orders WHERE id = 2;",
        db,
    )
    # c, c, u, d and the delete's tombstone.
    events = _consume(kafka_server, topic, 5)
    envelopes = [e["value"]["payload"] for e in events if e["value"] is not None]
    assert [(p["op"], (p["after"] or p["before"])["id"]) for p in envelopes] == [("c", 1), ("c", 2), ("u", 1), ("d", 2)]
    assert events[-1]["value"] is None and events[-1]["key"]["payload"] == {"id": 2}, "a delete is followed by a tombstone"
    assert envelopes[2]["after"]["note"] == "a2" and envelopes[3]["after"] is None
    for p in envelopes:
        source = p["source"]
        assert source["db"] == db and source["table"] == "orders"
        commit_lsn, lsn = json.loads(source["sequence"])
        assert int(lsn) == source["lsn"], "source.sequence is [last commit LSN, LSN]"
    lsns = [p["source"]["lsn"] for p in envelopes]
    assert lsns == sorted(lsns)
    # Only the captured table has a topic; the publication is filtered to it.
    assert pg_server.psql("SELECT string_agg(tablename, ',') FROM pg_publication_tables", db) == "orders"


@pytest.mark.connect
def test_a_bad_connector_config_is_refused_with_the_workers_message(connect_server: Connect) -> None:
    with pytest.raises(StackError, match="refused connector"):
        connect_server.register_connector("broken", {"connector.class": "io.example.NoSuchConnector"}, timeout=20)
    assert "broken" not in connect_server.connectors()
    assert connect_server.delete_connector("broken") is False
