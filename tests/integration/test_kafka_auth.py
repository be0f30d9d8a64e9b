"""A Kafka broker that refuses the login or the access is a configuration error, not a transient one
(issue 13, F19: "authentication failures are terminal, never 75").

Against a real Kafka 4 with a SASL_PLAINTEXT listener (PLAIN mechanism, users in its JAAS config) and the
KRaft ACL authorizer (``kafka_sasl_server``): a run of the ``kafka`` source, and of the ``debezium`` source
reading the same way, with a wrong password exits 2 within seconds, naming the ``sasl.*`` settings of
``source.properties`` and printing the password in no form; a user without ACLs on the topic, or on the
consumer group, exits 2 naming the ACLs; the right password loads the topic; a closed port stays a
transient error (75). Before the fix, a wrong password made librdkafka retry until the reader's timeout
and the run exited 75 ("cannot read Kafka"); a missing topic ACL exited 1 ("topic does not exist") and a
missing group ACL 75 (the committed offsets timed out).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from stack import Kafka

from icefield.catalog import open_catalog
from icefield.config import load_project

pytestmark = pytest.mark.kafka

KAFKA_SASL_USERS = {
    "icefield": "Ice!field#pw-5521",
    "nobody": "No!body#pw-7730",
    "reader": "Read!er#pw-1149",
    "describer": "Desc!riber#pw-3388",
}
"""The users of ``kafka_sasl_server`` and their passwords: ``icefield`` may do anything (a super user);
``nobody`` has no ACL; the others what :meth:`SaslKafka.grant` grants them."""

WRONG_PASSWORD = "Wr0ng!pass#word-4417"
FAST = 20.0
"""Seconds within which a refused login ends a run: the reader gives up on an unreachable broker only
after 30 s; the rest is the CLI's start-up on a loaded machine."""


class SaslKafka(Kafka):
    """A :class:`Kafka` with a SASL_PLAINTEXT (PLAIN) listener for :data:`KAFKA_SASL_USERS` and the KRaft
    ACL authorizer; its PLAINTEXT listener (``bootstrap_servers``, user ANONYMOUS) is a super user, for
    the tests' own producing and ACL changes."""

    def grant(self, user: str, topic: str, topic_operations: tuple[str, ...] = ("DESCRIBE", "READ"), group: str | None = None) -> None:
        """Allow ``user`` the ``topic_operations`` on ``topic`` and, if given, Read on consumer group ``group``."""
        from confluent_kafka.admin import (
            AclBinding,
            AclOperation,
            AclPermissionType,
            AdminClient,
            ResourcePatternType,
            ResourceType,
        )

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        acls = [
            AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, f"User:{user}", "*", AclOperation[op], AclPermissionType.ALLOW)
            for op in topic_operations
        ]
        if group is not None:
            acls.append(AclBinding(
                ResourceType.GROUP, group, ResourcePatternType.LITERAL, f"User:{user}", "*", AclOperation.READ, AclPermissionType.ALLOW
            ))
        for future in admin.create_acls(acls).values():
            future.result(timeout=60)


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def kafka_sasl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslKafka]:
    """A Kafka 4 of its own (fresh state, free ports, stopped afterwards) whose ``sasl_bootstrap_servers``
    listener takes SASL PLAIN logins of :data:`KAFKA_SASL_USERS` and checks ACLs (the KRaft controller
    and the ``bootstrap_servers`` listener stay PLAINTEXT). Fails (never skips) if it does not start."""
    ports = set()
    while len(ports) < 3:
        ports.add(free_port())
    port, controller_port, sasl_port = ports
    server = SaslKafka(
        tmp_path_factory.mktemp("kafka-sasl"),
        port=port,
        controller_port=controller_port,
        sasl_port=sasl_port,
        sasl_users=KAFKA_SASL_USERS,
        extra_properties={
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:ANONYMOUS;User:icefield",
        },
    )
    server.up(timeout=120)
    try:
        yield server
    finally:
        server.stop()


def make_topic(kafka: SaslKafka, partitions: int = 2) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"t-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30).values():
        future.result(timeout=60)
    return topic


def produce(kafka: SaslKafka, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for i, value in enumerate(values):
        producer.produce(topic, value=value, key=str(i).encode())
    assert producer.flush(30) == 0


def make_project(root: Path, source: dict[str, Any], user: str, bootstrap: str, target: dict[str, Any] | None = None) -> Path:
    """A project with pipeline ``events`` reading ``source`` as ``user`` (password in ``$KAFKA_PW``)."""
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text("name: kafka-auth\n")
    source = {
        **source,
        "bootstrap_servers": bootstrap,
        "properties": {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": user,
            "sasl.password": "${env:KAFKA_PW}",
        },
    }
    pipeline = {"name": "events", "source": source, "target": target or {"table": "raw.events"}}
    (root / "pipelines" / "events.yaml").write_text(yaml.safe_dump(pipeline))
    return root


def icefield(root: Path, password: str, *args: str) -> tuple[int, str, str, float]:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "icefield.cli", "--project", str(root), *args],
        capture_output=True, text=True, check=False, env={**os.environ, "KAFKA_PW": password}, timeout=300,
    )
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - began


def assert_no_password(password: str, *outputs: str) -> None:
    for text in outputs:
        for form in (password, quote(password, safe=""), quote(password), password.encode().hex()):
            assert form not in text, f"the password appears as {form!r} in:\n{text}"


def rows(root: Path, table: str) -> list[dict[str, Any]]:
    return open_catalog(load_project(root, env={})).load_table(table).scan().to_arrow().to_pylist()  # type: ignore[no-any-return]


def test_a_wrong_password_exits_2_at_once_naming_the_sasl_settings(tmp_path: Path, kafka_sasl_server: SaslKafka) -> None:
    topic = make_topic(kafka_sasl_server)
    produce(kafka_sasl_server, topic, [b'{"id": 1}'])
    assert kafka_sasl_server.sasl_bootstrap_servers is not None
    root = make_project(tmp_path / "p", {"type": "kafka", "topic": topic}, "icefield", kafka_sasl_server.sasl_bootstrap_servers)

    code, out, err, took = icefield(root, WRONG_PASSWORD, "run")
    assert code == 2, (code, out, err)
    assert took < FAST, f"a refused login took {took:.1f}s to end the run"
    assert "refused the login of user 'icefield'" in err, err
    assert "sasl.username and sasl.password in source.properties" in err, err
    assert_no_password(WRONG_PASSWORD, out, err)

    # With -v (librdkafka's own lines shown) and as JSON: the same exit code, the password in no form.
    code, out, err, _ = icefield(root, WRONG_PASSWORD, "-v", "--json", "run")
    assert code == 2, (code, out, err)
    doc = json.loads(out)
    assert doc["status"] == "failed" and doc["type"] == "ConfigError", doc
    assert "sasl.password" in doc["error"], doc
    assert_no_password(WRONG_PASSWORD, out, err)


def test_the_right_password_loads_the_topic(tmp_path: Path, kafka_sasl_server: SaslKafka) -> None:
    topic = make_topic(kafka_sasl_server)
    produce(kafka_sasl_server, topic, [json.dumps({"id": i, "name": f"n{i}"}).encode() for i in range(40)])
    assert kafka_sasl_server.sasl_bootstrap_servers is not None
    root = make_project(tmp_path / "p", {"type": "kafka", "topic": topic}, "icefield", kafka_sasl_server.sasl_bootstrap_servers)

    code, out, err, _ = icefield(root, KAFKA_SASL_USERS["icefield"], "run")
    assert code == 0, (code, out, err)
    assert sorted(r["id"] for r in rows(root, "raw.events")) == list(range(40))
    assert_no_password(KAFKA_SASL_USERS["icefield"], out, err)


def test_a_user_without_acls_exits_2_naming_the_acls(tmp_path: Path, kafka_sasl_server: SaslKafka) -> None:
    topic = make_topic(kafka_sasl_server)
    produce(kafka_sasl_server, topic, [b'{"id": 1}'])
    kafka_sasl_server.grant("reader", topic)
    kafka_sasl_server.grant("describer", topic, ("DESCRIBE",), group="icefield.events")
    assert kafka_sasl_server.sasl_bootstrap_servers is not None

    # No ACL at all: the topic is refused.
    root = make_project(tmp_path / "nobody", {"type": "kafka", "topic": topic}, "nobody", kafka_sasl_server.sasl_bootstrap_servers)
    code, out, err, took = icefield(root, KAFKA_SASL_USERS["nobody"], "run")
    assert code == 2, (code, out, err)
    assert f"refused user 'nobody' access to topic '{topic}'" in err and "the broker's ACLs" in err, err
    assert took < FAST, took

    # The topic may be read, but not the consumer group the offsets are kept in.
    root = make_project(tmp_path / "reader", {"type": "kafka", "topic": topic}, "reader", kafka_sasl_server.sasl_bootstrap_servers)
    code, out, err, took = icefield(root, KAFKA_SASL_USERS["reader"], "run")
    assert code == 2, (code, out, err)
    assert "refused user 'reader' access to consumer group 'icefield.events'" in err, err
    assert "source.group_id" in err and "the broker's ACLs" in err, err
    assert took < FAST, took

    # The topic and the group may be described, not read: the broker refuses the fetch, while polling.
    root = make_project(tmp_path / "describer", {"type": "kafka", "topic": topic}, "describer", kafka_sasl_server.sasl_bootstrap_servers)
    code, out, err, took = icefield(root, KAFKA_SASL_USERS["describer"], "run")
    assert code == 2, (code, out, err)
    assert f"refused user 'describer' access to topic '{topic}'" in err and "Read on the topic" in err, err
    assert took < FAST, took


def test_an_unreachable_broker_stays_transient(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", {"type": "kafka", "topic": "events"}, "icefield", f"127.0.0.1:{free_port()}")
    code, out, err, _ = icefield(root, WRONG_PASSWORD, "run")
    assert code == 75, (code, out, err)
    assert "cannot read Kafka at" in err, err
    assert_no_password(WRONG_PASSWORD, out, err)


def debezium_event(i: int) -> bytes:
    source = {
        "version": "3.6.1.Final", "connector": "postgresql", "name": "app", "ts_ms": 1_790_000_000_000, "snapshot": "true",
        "db": "app", "sequence": json.dumps([None, str(100 + i)]), "schema": "public", "table": "users",
        "txId": 700, "lsn": 100 + i, "xmin": None,
    }  # fmt: skip
    return json.dumps({"before": None, "after": {"id": i, "name": f"u{i}"}, "source": source, "op": "r", "ts_ms": 1_790_000_000_001}).encode()


def test_the_debezium_source_reading_kafka_fails_the_same_way(tmp_path: Path, kafka_sasl_server: SaslKafka) -> None:
    topic = make_topic(kafka_sasl_server, partitions=1)
    produce(kafka_sasl_server, topic, [debezium_event(i) for i in range(1, 6)])
    assert kafka_sasl_server.sasl_bootstrap_servers is not None
    source = {"type": "debezium", "topic": topic, "max_wait_seconds": 1}
    target = {"table": "cdc.users", "keys": ["id"]}

    root = make_project(tmp_path / "wrong", source, "icefield", kafka_sasl_server.sasl_bootstrap_servers, target)
    code, out, err, took = icefield(root, WRONG_PASSWORD, "run")
    assert code == 2, (code, out, err)
    assert "refused the login of user 'icefield'" in err and "source.properties" in err, err
    assert took < FAST, took
    assert_no_password(WRONG_PASSWORD, out, err)

    root = make_project(tmp_path / "nobody", source, "nobody", kafka_sasl_server.sasl_bootstrap_servers, target)
    code, out, err, _ = icefield(root, KAFKA_SASL_USERS["nobody"], "run")
    assert code == 2, (code, out, err)
    assert "the broker's ACLs" in err, err

    root = make_project(tmp_path / "right", source, "icefield", kafka_sasl_server.sasl_bootstrap_servers, target)
    code, out, err, _ = icefield(root, KAFKA_SASL_USERS["icefield"], "run")
    assert code == 0, (code, out, err)
    assert sorted(r["id"] for r in rows(root, "cdc.users")) == [1, 2, 3, 4, 5]
