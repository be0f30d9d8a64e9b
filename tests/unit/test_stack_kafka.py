"""The Kafka and Kafka Connect launchers without their servers: configuration they write, the Metadata
probe against a fake broker speaking the wire protocol, the Maven classpath cache, connector configs."""

from __future__ import annotations

import base64
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack import SERVICES, Connect, Kafka, get_service
from stack.base import StackError
from stack.connect import DEBEZIUM_POSTGRES_CLASS, debezium_postgres_config
from stack.kafka import kafka_metadata, metadata_brokers, random_cluster_id
from stack.maven import copy_dependencies


def test_services_start_in_dependency_order() -> None:
    assert list(SERVICES) == [
        "postgres", "kafka", "connect", "rest", "hive", "s3", "spark", "trino", "airflow", "pushgateway", "alertmanager", "prometheus",
        "victorialogs",
    ]
    assert isinstance(get_service("kafka"), Kafka)


def test_ports_come_from_arguments_then_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert (Kafka(tmp_path).port, Kafka(tmp_path).controller_port, Connect(tmp_path).port) == (19092, 19093, 18083)
    monkeypatch.setenv("ICEFIELD_KAFKA_PORT", "29092")
    monkeypatch.setenv("ICEFIELD_KAFKA_CONTROLLER_PORT", "29093")
    monkeypatch.setenv("ICEFIELD_CONNECT_PORT", "28083")
    kafka = Kafka(tmp_path)
    assert (kafka.port, kafka.controller_port) == (29092, 29093)
    assert Kafka(tmp_path, port=1234, controller_port=1235).bootstrap_servers == "127.0.0.1:1234"
    connect = Connect(tmp_path)
    assert connect.port == 28083 and connect.bootstrap_servers == "127.0.0.1:29092"
    assert connect.url() == "http://127.0.0.1:28083"
    monkeypatch.setenv("ICEFIELD_CONNECT_PORT", "70000")
    with pytest.raises(StackError, match="70000 is out of range"):
        Connect(tmp_path)


def test_broker_config_binds_localhost_with_single_replica_internal_topics(tmp_path: Path) -> None:
    kafka = Kafka(tmp_path, port=1111, controller_port=2222)
    props = dict(line.split("=", 1) for line in kafka.server_properties().splitlines() if "=" in line and not line.startswith("#"))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1111,CONTROLLER://127.0.0.1:2222"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1111"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:2222"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert all(props[k] == "1" for k in props if k.endswith("replication.factor"))


def test_a_sasl_listener_is_added_beside_the_plaintext_ones(tmp_path: Path) -> None:
    plain = Kafka(tmp_path, port=1111, controller_port=2222)
    kafka = Kafka(
        tmp_path, port=1111, controller_port=2222, sasl_port=3333, sasl_users={"alice": "pw#1!x", "bob": "b0b"},
        extra_properties={"super.users": "User:ANONYMOUS"},
    )
    props = dict(line.split("=", 1) for line in kafka.server_properties().splitlines() if "=" in line and not line.startswith("#"))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1111,CONTROLLER://127.0.0.1:2222,SASL_PLAINTEXT://127.0.0.1:3333"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1111,SASL_PLAINTEXT://127.0.0.1:3333"
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
    assert props["inter.broker.listener.name"] == "PLAINTEXT" and props["controller.listener.names"] == "CONTROLLER"
    assert props["sasl.enabled.mechanisms"] == "PLAIN"
    assert props["listener.name.sasl_plaintext.plain.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.plain.PlainLoginModule required user_alice="pw#1!x" user_bob="b0b";'
    )
    assert props["super.users"] == "User:ANONYMOUS"
    assert kafka.ports() == (1111, 2222, 3333) and kafka.sasl_bootstrap_servers == "127.0.0.1:3333"
    assert plain.ports() == (1111, 2222) and plain.sasl_bootstrap_servers is None
    assert "SASL" not in plain.server_properties()
    with pytest.raises(StackError, match="both sasl_port and sasl_users"):
        Kafka(tmp_path, port=1111, controller_port=2222, sasl_port=3333)
    with pytest.raises(StackError, match="must differ"):
        Kafka(tmp_path, port=1111, controller_port=2222, sasl_port=1111, sasl_users={"a": "b"})
    with pytest.raises(StackError, match="quotes"):
        Kafka(tmp_path, port=1111, controller_port=2222, sasl_port=3333, sasl_users={"a": 'p"w'})


def test_connect_worker_config_points_at_kafka_and_the_plugin_path(tmp_path: Path) -> None:
    connect = Connect(tmp_path, port=3333, bootstrap_servers="127.0.0.1:4444")
    connect._plugins = tmp_path / "plugins"
    props = dict(line.split("=", 1) for line in connect.worker_properties().splitlines() if "=" in line and not line.startswith("#"))
    assert props["bootstrap.servers"] == "127.0.0.1:4444"
    assert props["listeners"] == "http://127.0.0.1:3333"
    assert props["plugin.path"] == str(tmp_path / "plugins")
    assert all(props[k] == "1" for k in props if k.endswith("storage.replication.factor"))


def test_cluster_ids_look_like_kafkas() -> None:
    ids = {random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def _string(s: bytes) -> bytes:
    return struct.pack(">h", len(s)) + s


def _topic(name: bytes, partitions: list[tuple[int, int, int]]) -> bytes:
    """A Metadata v4 topic entry; partitions are (error, index, leader) with one replica in sync."""
    out = struct.pack(">h", 0) + _string(name) + b"\x00" + struct.pack(">i", len(partitions))
    for error, index, leader in partitions:
        out += struct.pack(">hii", error, index, leader) + struct.pack(">ii", 1, 1) + struct.pack(">ii", 1, 1)
    return out


@contextlib.contextmanager
def fake_broker(topics: list[bytes]) -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server answering one Metadata v4 request: broker 1 at 127.0.0.1:9999 and ``topics``."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    requests: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            (size,) = struct.unpack(">i", conn.recv(4))
            request = conn.recv(size)
            requests.append(request)
            body = (
                request[4:8]  # correlation id
                + struct.pack(">i", 0)  # throttle
                + struct.pack(">ii", 1, 1) + _string(b"127.0.0.1") + struct.pack(">i", 9999) + struct.pack(">h", -1)
                + struct.pack(">h", -1)  # cluster id: null
                + struct.pack(">i", 1)  # controller
                + struct.pack(">i", len(topics)) + b"".join(topics)
            )
            conn.sendall(struct.pack(">i", len(body)) + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], requests
    finally:
        thread.join(timeout=5)
        server.close()


def test_metadata_probe_speaks_the_wire_protocol() -> None:
    with fake_broker([_topic(b"orders", [(0, 0, 1), (0, 1, 1)])]) as (port, requests):
        meta = kafka_metadata("127.0.0.1", port)
    assert meta.brokers == [("127.0.0.1", 9999)] and meta.offline == []
    api_key, version = struct.unpack(">hh", requests[0][:4])
    assert (api_key, version) == (3, 4)  # Metadata v4: the oldest Kafka 4 still serves
    assert requests[0][-5:] == struct.pack(">i", -1) + b"\x00", "every topic, none auto-created"


def test_metadata_probe_names_partitions_without_a_leader() -> None:
    topics = [_topic(b"orders", [(0, 0, 1), (5, 1, -1)]), _topic(b"items", [(0, 0, -1)])]
    with fake_broker(topics) as (port, _):
        assert kafka_metadata("127.0.0.1", port).offline == ["orders/1", "items/0"]


def test_metadata_probe_fails_on_a_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        metadata_brokers("127.0.0.1", port, timeout=0.5)


def test_classpath_is_assembled_once_per_pom_and_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A complete classpath (stamped with the digest of the POM and its versions) costs no Maven run."""
    import stack.maven as maven

    calls: list[list[str]] = []

    def fake_run(argv: list[str], **_: object) -> None:
        calls.append(argv)
        out = Path(next(a for a in argv if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
        out.mkdir(parents=True)
        (out / "a.jar").write_bytes(b"jar")

    monkeypatch.setattr(maven, "run_command", fake_run)
    monkeypatch.setattr(maven, "find_mvn", lambda *a, **k: "mvn")
    pom = tmp_path / "p.xml"
    pom.write_text("<project/>")
    dest = tmp_path / "cache" / "libs"
    assert copy_dependencies(pom, dest, {"v": "1"}, purpose="test") == dest
    assert copy_dependencies(pom, dest, {"v": "1"}, purpose="test") == dest
    assert len(calls) == 1 and "-Dv=1" in calls[0]
    copy_dependencies(pom, dest, {"v": "2"}, purpose="test")
    assert len(calls) == 2, "another version is another classpath"
    assert sorted(p.name for p in dest.iterdir()) == [".icefield-complete", "a.jar"]


def test_debezium_config_captures_only_the_given_tables() -> None:
    conn = {"host": "127.0.0.1", "port": 5432, "user": "u", "password": "p", "dbname": "app"}
    cfg = debezium_postgres_config(conn, ["public.orders", "public.items"], topic_prefix="app", slot_name="s1", **{"snapshot.mode": "no_data"})
    assert cfg["connector.class"] == DEBEZIUM_POSTGRES_CLASS
    assert cfg["plugin.name"] == "pgoutput" and cfg["slot.name"] == "s1" and cfg["publication.name"] == "s1_pub"
    assert cfg["publication.autocreate.mode"] == "filtered"
    assert cfg["table.include.list"] == "public.orders,public.items"
    assert cfg["database.port"] == "5432" and cfg["snapshot.mode"] == "no_data"
    with pytest.raises(StackError, match="at least one table"):
        debezium_postgres_config(conn, [], topic_prefix="app", slot_name="s1")


def test_debezium_config_captures_truncates_unless_told_otherwise() -> None:
    """D5: Debezium skips TRUNCATE by default (skipped.operations=t), so a truncated table kept its rows."""
    conn = {"host": "127.0.0.1", "port": 5432, "user": "u", "password": "p", "dbname": "app"}
    assert debezium_postgres_config(conn, ["public.t"], topic_prefix="app", slot_name="s1")["skipped.operations"] == "none"
    cfg = debezium_postgres_config(conn, ["public.t"], topic_prefix="app", slot_name="s1", **{"skipped.operations": "t"})
    assert cfg["skipped.operations"] == "t"


def test_stack_capture_registers_a_connector_that_captures_truncates_with_the_settings_given(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import stack.__main__ as cli

    registered: list[tuple[str, dict[str, str]]] = []

    class Running:
        def __init__(self, name: str) -> None:
            self.name = name

        def status(self) -> Any:
            return type("S", (), {"running": True})()

        def connection_info(self, dbname: str) -> dict[str, Any]:
            return {"host": "127.0.0.1", "port": 55432, "user": "icefield", "password": "icefield", "dbname": dbname}

        def register_connector(self, name: str, config: dict[str, str], timeout: float) -> None:
            registered.append((name, config))

    monkeypatch.setattr(cli, "get_service", lambda name, **kw: Running(name))
    assert cli.main(["capture", "shop", "public.orders", "--set", "interval.handling.mode=string", "--set", "decimal.handling.mode=string"]) == 0
    ((name, config),) = registered
    assert name == "shop-cdc" and config["skipped.operations"] == "none" and config["table.include.list"] == "public.orders"
    assert config["interval.handling.mode"] == "string" and config["decimal.handling.mode"] == "string"
    assert cli.main(["capture", "shop", "public.orders", "--set", "nonsense"]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err
