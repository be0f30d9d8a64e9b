"""Apache Kafka 4.x in KRaft mode (one node, broker and controller combined), from Maven Central jars.

The classpath is the runtime closure of ``stack/poms/kafka.xml`` (``kafka_2.13`` plus a log4j2 SLF4J
provider, which Kafka's POMs no longer carry), copied by Maven into
``<cache>/kafka-<version>/libs`` (see :func:`stack.maven.cache_dir`; outside the checkout, reused by
CI and other checkouts). Layout under ``state_dir`` (``<base>/kafka``)::

    server.properties   rewritten at every start (ports, log dir)
    data/               the log dir, formatted once with ``kafka.tools.StorageTool format``
    kafka.log           the broker's output
    pid                 the JVM's pid
    lock                serialises concurrent start/stop

Ports: the broker listens on ``$ICEFIELD_KAFKA_PORT`` (19092) and the controller on
``$ICEFIELD_KAFKA_CONTROLLER_PORT`` (19093; never 9093, Alertmanager's default), both on 127.0.0.1
only, PLAINTEXT. The broker is ready when a Kafka Metadata request lists it and every existing partition
has a leader (checked over the wire protocol here, so the launcher needs no Python Kafka client).

Optionally (``sasl_port`` with ``sasl_users``, for tests of logins) a third listener, ``SASL_PLAINTEXT``
with the PLAIN mechanism, accepts the given users; the PLAINTEXT listeners stay as they are (the probe,
the controller and the brokers' own traffic use them). ``extra_properties`` are added to (and override)
``server.properties``: an authorizer and its ``super.users``, say.
"""

from __future__ import annotations

import base64
import logging
import socket
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .base import LOCALHOST, StackError, run_command
from .jvm import LOG4J2_CONFIG, JavaService, find_java, properties_text, read_port_env
from .maven import POMS_DIR, cache_dir, copy_dependencies

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"
"""Debezium 3.6.1 is built against Kafka 4.3; Connect runs the same version."""
LOG4J_VERSION = "2.25.4"
SLF4J_VERSION = "2.0.17"
KAFKA_PORT_ENV = "ICEFIELD_KAFKA_PORT"
KAFKA_PORT_DEFAULT = 19092
KAFKA_CONTROLLER_PORT_ENV = "ICEFIELD_KAFKA_CONTROLLER_PORT"
KAFKA_CONTROLLER_PORT_DEFAULT = 19093
KAFKA_HEAP = "512m"
KAFKA_POM = POMS_DIR / "kafka.xml"
NODE_ID = 1

_METADATA_API = 3
_METADATA_VERSION = 4  # Kafka 4.0 removed v0-v3 (KIP-896); v4 is the oldest left and not "flexible"


def maven_properties(version: str = KAFKA_VERSION) -> dict[str, str]:
    """The ``-D`` versions passed to the assembly POMs (Kafka's and Connect's)."""
    return {"kafka.version": version, "log4j.version": LOG4J_VERSION, "slf4j.version": SLF4J_VERSION}


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """Return the folder of the broker's jars, assembling it with Maven first if needed.

    Raises :class:`~stack.base.ServiceNotInstalled` if Maven is missing, :class:`StackError` if it fails.
    """
    return copy_dependencies(
        KAFKA_POM,
        cache_dir() / f"kafka-{version}" / "libs",
        maven_properties(version),
        purpose=f"the Kafka {version} broker jars",
    )


class Kafka(JavaService):
    """A single-node KRaft Kafka under ``state_dir`` listening on 127.0.0.1 only.

    ``port`` and ``controller_port`` come from the arguments, else the environment variables, else
    19092 / 19093. ``fast`` changes nothing here: Kafka never fsyncs by default. Topics are created
    on first use (``auto.create.topics.enable``) with one partition; the internal topics have one
    replica.

    ``sasl_port`` and ``sasl_users`` (``{user: password}``) add a ``SASL_PLAINTEXT`` listener on that
    port where those users log in with the PLAIN mechanism (both or neither; the other listeners and
    :meth:`probe` are unchanged). ``extra_properties`` are written last into ``server.properties``.
    """

    name = "kafka"
    main_class = "kafka.Kafka"

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        fast: bool = False,
        heap: str = KAFKA_HEAP,
        version: str = KAFKA_VERSION,
        sasl_port: int | None = None,
        sasl_users: Mapping[str, str] | None = None,
        extra_properties: Mapping[str, str] | None = None,
    ) -> None:
        """Configure the launcher; touches nothing on disk. Raises :class:`StackError` for a bad port or
        SASL settings it cannot write (one without the other; a quote, backslash, ``=``, ``;``, space or
        line break in a user or password)."""
        super().__init__(base_dir, fast=fast)
        self._port = port if port is not None else read_port_env(KAFKA_PORT_ENV, KAFKA_PORT_DEFAULT)
        self._controller_port = (
            controller_port
            if controller_port is not None
            else read_port_env(KAFKA_CONTROLLER_PORT_ENV, KAFKA_CONTROLLER_PORT_DEFAULT)
        )
        if (sasl_port is None) != (not sasl_users):
            raise StackError("Kafka's SASL listener needs both sasl_port and sasl_users (a user and its password)")
        for text in (*(sasl_users or {}).keys(), *(sasl_users or {}).values()):
            # Written inside a quoted JAAS value of a properties file: keep it free of escapes.
            if not text or any(c in text for c in '"\\\n\r;= '):
                raise StackError("Kafka SASL users and passwords must be non-empty, without quotes, backslashes, "
                                 "'=', ';', spaces or line breaks")  # the value is not shown: it may be a password
        self._sasl_port = sasl_port
        self.sasl_users = dict(sasl_users or {})
        self.extra_properties = dict(extra_properties or {})
        for p in self.ports():
            if not 1 <= p <= 65535:
                raise StackError(f"Kafka port {p} is out of range 1-65535")
        if len(set(self.ports())) != len(self.ports()):
            raise StackError(f"Kafka's ports must differ (broker, controller, SASL: {self.ports()})")
        self.heap = heap
        self.version = version

    @property
    def port(self) -> int:
        """The broker (client) port."""
        return self._port

    @property
    def controller_port(self) -> int:
        """The KRaft controller port."""
        return self._controller_port

    @property
    def sasl_port(self) -> int | None:
        """The SASL_PLAINTEXT (PLAIN) client port, if the broker has one."""
        return self._sasl_port

    @property
    def sasl_bootstrap_servers(self) -> str | None:
        """``127.0.0.1:<sasl_port>``, for clients that log in with one of ``sasl_users``; None without it."""
        return f"{self.host}:{self._sasl_port}" if self._sasl_port is not None else None

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>``, what clients put in ``bootstrap.servers``."""
        return f"{self.host}:{self.port}"

    def url(self) -> str:
        """Return the bootstrap servers (``127.0.0.1:<port>``)."""
        return self.bootstrap_servers

    def ports(self) -> tuple[int, ...]:
        extra = (self._sasl_port,) if self._sasl_port is not None else ()
        return (self.port, self.controller_port, *extra)

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "server.properties"

    # ------------------------------------------------------------------ lifecycle

    def install(self) -> None:
        """Find Java 17+ and assemble the jars (Maven, cached); raise ServiceNotInstalled naming the fix."""
        self._java = find_java()
        self._libs = kafka_libs(self.version)

    def prepare(self) -> None:
        """Write ``server.properties`` and format the storage on the first start."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.server_properties())
        if not (self.data_dir / "meta.properties").is_file():
            self._format()

    def server_properties(self) -> str:
        """The broker's configuration (rewritten at every start, so it follows the launcher)."""
        h, p, c = self.host, self.port, self.controller_port
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            # Static voters: no --standalone at format time, and a changed port needs no reformat.
            "controller.quorum.voters": f"{NODE_ID}@{h}:{c}",
            "listeners": f"PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}",
            "advertised.listeners": f"PLAINTEXT://{h}:{p}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",  # the default 50 costs seconds at the first group commit
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "24",
            "log.segment.bytes": str(256 << 20),
        }
        if self._sasl_port is not None:
            settings["listeners"] += f",SASL_PLAINTEXT://{h}:{self._sasl_port}"
            settings["advertised.listeners"] += f",SASL_PLAINTEXT://{h}:{self._sasl_port}"
            settings["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            settings["sasl.enabled.mechanisms"] = "PLAIN"
            users = " ".join(f'user_{user}="{password}"' for user, password in self.sasl_users.items())
            settings["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
            )
        settings.update(self.extra_properties)
        return properties_text(settings, "stack/kafka.py")

    def _format(self) -> None:
        """Format the log dir with a fresh cluster id (``kafka.tools.StorageTool``)."""
        assert self._java is not None and self._libs is not None, "install() first"
        base = [self._java, "-Xmx256m", f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", "-cp", f"{self._libs}/*",
                "kafka.tools.StorageTool"]
        cluster_id = random_cluster_id()
        logger.info("formatting Kafka storage %s (cluster %s)", self.data_dir, cluster_id)
        run_command(
            [*base, "format", "-t", cluster_id, "-c", str(self.config_file), "--ignore-formatted"],
            timeout=120,
        )

    def probe(self) -> bool:
        """True when a Metadata request lists this broker (it registered with the controller) and every
        existing partition has a leader (after a restart, once the logs are recovered)."""
        try:
            meta = kafka_metadata(self.host, self.port)
        except (OSError, ValueError):
            return False
        if meta.offline:
            logger.debug("kafka: partitions not online yet: %s", meta.offline[:10])
        return (self.host, self.port) in meta.brokers and not meta.offline


def random_cluster_id() -> str:
    """A new KRaft cluster id, as ``StorageTool random-uuid`` makes it (without starting a JVM): 16
    random bytes in URL-safe base64 without padding, never starting with ``-`` (a CLI would read an option)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class Metadata:
    """What a broker's Metadata answer says: the live brokers and the partitions without a leader."""

    brokers: list[tuple[str, int]]
    offline: list[str]


def kafka_metadata(host: str, port: int, timeout: float = 2.0) -> Metadata:
    """Send a Kafka Metadata request (v4, every topic) to ``host:port`` and decode the answer.

    Speaks the wire protocol directly (request header v1, big-endian): a few bytes, no client
    library. ``offline`` names the partitions (``topic/partition``) with an error or no leader, as
    after a restart while the broker still recovers its logs. Raises OSError when the connection
    fails and ValueError on a malformed answer.
    """
    client_id = b"icefield-stack"
    correlation = 0x1CEF
    body = struct.pack(">i", -1) + b"\x00"  # topics: null (all of them); no auto-create
    header = struct.pack(">hhih", _METADATA_API, _METADATA_VERSION, correlation, len(client_id)) + client_id
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 0 < size < 1 << 26:
            raise ValueError(f"implausible Kafka response size {size}")
        payload = _recv_exact(sock, size)
    reader = _Reader(payload)
    try:
        if reader.int32() != correlation:
            raise ValueError("Kafka response for another request")
        reader.int32()  # throttle_time_ms
        brokers = []
        for _ in range(reader.int32()):
            reader.int32()  # node_id
            broker_host = reader.string()
            broker_port = reader.int32()
            reader.string()  # rack (nullable)
            brokers.append((broker_host or "", broker_port))
        reader.string()  # cluster_id (nullable)
        reader.int32()  # controller_id
        offline = []
        for _ in range(reader.int32()):
            topic_error = reader.int16()
            topic = reader.string() or "?"
            reader.int8()  # is_internal
            if topic_error:
                offline.append(f"{topic} (error {topic_error})")
            for _ in range(reader.int32()):
                error, partition, leader = reader.int16(), reader.int32(), reader.int32()
                for _ in range(2):  # replica_nodes, isr_nodes
                    for _ in range(reader.int32()):
                        reader.int32()
                if error or leader < 0:
                    offline.append(f"{topic}/{partition}")
    except struct.error as e:
        raise ValueError(f"truncated Kafka Metadata response: {e}") from None
    return Metadata(brokers, offline)


def metadata_brokers(host: str, port: int, timeout: float = 2.0) -> list[tuple[str, int]]:
    """The brokers a Metadata request to ``host:port`` lists (see :func:`kafka_metadata`)."""
    return kafka_metadata(host, port, timeout).brokers


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ValueError("Kafka closed the connection mid-response")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def int8(self) -> int:
        (value,) = struct.unpack_from(">b", self.data, self.at)
        self.at += 1
        return int(value)

    def int16(self) -> int:
        (value,) = struct.unpack_from(">h", self.data, self.at)
        self.at += 2
        return int(value)

    def int32(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.at)
        self.at += 4
        return int(value)

    def string(self) -> str | None:
        (length,) = struct.unpack_from(">h", self.data, self.at)
        self.at += 2
        if length < 0:
            return None
        value = self.data[self.at : self.at + length].decode("utf-8")
        self.at += length
        return value


__all__ = [
    "KAFKA_CONTROLLER_PORT_DEFAULT",
    "KAFKA_CONTROLLER_PORT_ENV",
    "KAFKA_PORT_DEFAULT",
    "KAFKA_PORT_ENV",
    "KAFKA_VERSION",
    "LOCALHOST",
    "Kafka",
    "Metadata",
    "kafka_libs",
    "kafka_metadata",
    "metadata_brokers",
]
