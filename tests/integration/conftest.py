"""Fixtures that start real services through ``stack`` for tests carrying the service's marker.

``pg_server``, ``kafka_server`` and ``connect_server`` are session-scoped and start lazily, only
for tests that use them. Each reuses the developer's stack server (``python -m stack up`` / ``make
stack-up``) when one runs from the default state dir, so repeated runs skip initdb and storage
formatting; each stops its server at the end of the session only if it started it. When a default
port is taken by another process (another checkout's server), a free port is used instead.
``ICEFIELD_STACK_DIR`` and the ``ICEFIELD_*_PORT`` variables move them. ``rest_server`` (the Iceberg REST
catalog) always starts its own server, with a token, in a temporary state dir on a free port; so does
``hive_server`` (a Hive Metastore), ``victorialogs_server`` (VictoriaLogs, the central log store), and ``trino_server`` (Trino 476, with one Iceberg catalog ``lake`` on
the session database ``trino_lake``). ``s3_server`` (versitygw) is in ``tests/conftest.py``: the core suites run on it too (``tests/stores.py``).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from stack import (
    CONNECT_PORT_ENV,
    KAFKA_CONTROLLER_PORT_ENV,
    KAFKA_PORT_ENV,
    PG_PORT_ENV,
    Alertmanager,
    Connect,
    HiveMetastore,
    Kafka,
    Postgres,
    Prometheus,
    Pushgateway,
    RestCatalog,
    Trino,
    VictoriaLogs,
)
from stack.base import LOCALHOST, port_open

PG_READY_TIMEOUT = 120.0
KAFKA_READY_TIMEOUT = 120.0
CONNECT_READY_TIMEOUT = 180.0
REST_READY_TIMEOUT = 120.0
HIVE_READY_TIMEOUT = 180.0
TRINO_READY_TIMEOUT = 300.0
PROMETHEUS_READY_TIMEOUT = 60.0
VICTORIALOGS_READY_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        port: int = s.getsockname()[1]
        return port


def _running(server: Any, timeout: float) -> Iterator[Any]:
    """``server`` up for the session; stopped afterwards only if this session started it."""
    started = server.up(timeout=timeout)
    try:
        yield server
    finally:
        if started:
            server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Postgres]:
    """A running PostgreSQL (``wal_level=logical``, superuser icefield/icefield) on 127.0.0.1.

    Raises (as a fixture error, never a skip) if PostgreSQL is not installed or does not start.
    """
    server = Postgres(fast=True)
    if not server.status().running and port_open(LOCALHOST, server.port) and not os.environ.get(PG_PORT_ENV):
        # Another process (another checkout's stack server, say) holds the default port: use a free one.
        server = Postgres(fast=True, port=_free_port())
    yield from _running(server, PG_READY_TIMEOUT)


@pytest.fixture
def pg_url(pg_server: Postgres) -> Iterator[str]:
    """The SQLAlchemy URL of a fresh, uniquely named database, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[Kafka]:
    """A running single-node Kafka 4 (KRaft) on 127.0.0.1; ``kafka_server.bootstrap_servers`` to connect.

    Raises (as a fixture error, never a skip) if Java or Maven is missing or the broker does not start.
    """
    server = Kafka()
    pinned = os.environ.get(KAFKA_PORT_ENV) or os.environ.get(KAFKA_CONTROLLER_PORT_ENV)
    if not server.status().running and not pinned and any(port_open(LOCALHOST, p) for p in server.ports()):
        server = Kafka(port=_free_port(), controller_port=_free_port())
    yield from _running(server, KAFKA_READY_TIMEOUT)


@pytest.fixture(scope="session")
def connect_server(kafka_server: Kafka, pg_server: Postgres) -> Iterator[Connect]:
    """A running Kafka Connect worker (REST on 127.0.0.1) with the Debezium PostgreSQL plugin, on
    ``kafka_server``. A worker already running from the state dir is reused only if it uses that Kafka."""
    server = Connect(kafka=kafka_server)
    if server.status().running and f"bootstrap.servers={kafka_server.bootstrap_servers}\n" not in _read(server.config_file):
        pytest.fail(
            f"a Kafka Connect worker from {server.state_dir} runs against another Kafka than {kafka_server.bootstrap_servers}; "
            "stop it (python -m stack down connect) and rerun"
        )
    if not server.status().running and not os.environ.get(CONNECT_PORT_ENV) and port_open(LOCALHOST, server.port):
        server = Connect(kafka=kafka_server, port=_free_port())
    yield from _running(server, CONNECT_READY_TIMEOUT)


@pytest.fixture(scope="session")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestCatalog]:
    """A running Iceberg REST catalog server (Iceberg's reference implementation, JdbcCatalog on SQLite) on
    127.0.0.1 that requires the bearer token ``rest_server.token`` (or the OAuth2 ``rest_server.credential``).

    Its own state dir and a free port, never the developer's stack server (which has no token). Raises (as
    a fixture error, never a skip) if Java or Maven is missing or the server does not start.
    """
    server = RestCatalog(
        tmp_path_factory.mktemp("stack"), port=_free_port(),
        token="icefield-test-token-" + uuid.uuid4().hex,
        credential="icefield-test-client:" + uuid.uuid4().hex,
    )
    yield from _running(server, REST_READY_TIMEOUT)


@pytest.fixture(scope="session")
def hive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HiveMetastore]:
    """A running Hive Metastore (Hive's standalone metastore 3.1 on embedded Derby) at
    ``hive_server.url()`` (``thrift://127.0.0.1:<port>``), its warehouse in its own state dir.

    Its own state dir and a free port, never the developer's stack server. Raises (as a fixture error,
    never a skip) if Java or Maven is missing or the metastore does not start.
    """
    server = HiveMetastore(tmp_path_factory.mktemp("stack"), port=_free_port())
    yield from _running(server, HIVE_READY_TIMEOUT)


@pytest.fixture(scope="session")
def victorialogs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaLogs]:
    """A running VictoriaLogs at ``victorialogs_server.url()`` (``http://127.0.0.1:<port>``, icefield's
    ``logs.ship.url``); ``victorialogs_server.query(logsql)`` reads lines back.

    Its own state dir and a free port, never the developer's stack server. Raises (as a fixture error, never
    a skip) if Go is missing (the first use builds VictoriaLogs, a few minutes) or the server does not start.
    """
    server = VictoriaLogs(tmp_path_factory.mktemp("stack"), port=_free_port())
    yield from _running(server, VICTORIALOGS_READY_TIMEOUT)


@dataclass(frozen=True)
class TrinoLake:
    """The one icefield catalog the session's Trino serves: a PostgreSQL database (``url``, SQLAlchemy),
    a warehouse folder and the catalog name both icefield (``catalog.name``) and Trino (its catalog) use.
    Catalogs load when Trino starts, so the Trino tests share this database and tell their tables apart
    by name."""

    url: str
    warehouse: Path
    name: str = "lake"


@pytest.fixture(scope="session")
def trino_lake(pg_server: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrinoLake]:
    """A session database and warehouse for the Trino tests (dropped at the end of the session)."""
    db = f"trino_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(db)
    try:
        yield TrinoLake(url=url, warehouse=tmp_path_factory.mktemp("trino-warehouse"))
    finally:
        pg_server.drop_database(db)


@pytest.fixture(scope="session")
def trino_server(pg_server: Postgres, trino_lake: TrinoLake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trino]:
    """A running Trino 476 at ``trino_server.url()`` with the Iceberg catalog ``lake`` on ``trino_lake``
    (JDBC catalog on its PostgreSQL database, catalog name ``lake``, its warehouse).

    Its own state dir and a free port, never the developer's stack server. Raises (as a fixture error,
    never a skip) if Maven or a Java 24+ JDK is missing or Trino does not start.
    """
    server = Trino(tmp_path_factory.mktemp("stack"), port=_free_port())
    db = trino_lake.url.rsplit("/", 1)[1]
    server.add_catalog(
        trino_lake.name,
        f"jdbc:postgresql://{pg_server.host}:{pg_server.port}/{db}",
        pg_server.user,
        pg_server.password,
        trino_lake.warehouse,
        catalog_name=trino_lake.name,
    )
    yield from _running(server, TRINO_READY_TIMEOUT)


class AlertWebhook:
    """A webhook receiver for Alertmanager on 127.0.0.1 (``url``): keeps every alert it is sent, in order,
    with the notification's status (``firing`` or ``resolved``) as ``alert["status"]``."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        self.alerts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with hook.lock:
                    hook.alerts.extend(body.get("alerts", []))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.url = f"http://{LOCALHOST}:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self, alertname: str, status: str, **labels: str) -> list[dict[str, Any]]:
        """The alerts received so far named ``alertname`` with ``status`` and ``labels``."""
        with self.lock:
            return [
                a for a in self.alerts
                if a.get("status") == status and a["labels"].get("alertname") == alertname
                and all(a["labels"].get(k) == v for k, v in labels.items())
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class PrometheusStack:
    """Prometheus, the Pushgateway and Alertmanager of a test session, and the webhook Alertmanager sends to."""

    prometheus: Prometheus
    pushgateway: Pushgateway
    alertmanager: Alertmanager
    webhook: AlertWebhook
    tables_port: int
    """The port Prometheus scrapes ``icefield metrics serve`` on (job ``icefield-tables``); a test starts it."""


@pytest.fixture(scope="session")
def prometheus_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusStack]:
    """Pushgateway, Alertmanager (every alert to an in-test webhook, at once) and Prometheus (scraping the
    Pushgateway and ``tables_port``, evaluating the project's rules every second), each on a free port of 127.0.0.1 in a
    temporary state dir, stopped at the end. Raises (a fixture error, never a skip) if Debian's packages are
    missing or a server does not start."""
    base = tmp_path_factory.mktemp("stack")
    webhook = AlertWebhook()
    pushgateway = Pushgateway(base, port=_free_port())
    alertmanager = Alertmanager(base, port=_free_port(), webhook=webhook.url)
    tables_port = _free_port()
    prometheus = Prometheus(
        base, port=_free_port(), pushgateway=pushgateway, alertmanager=alertmanager,
        scrape_interval="1s", evaluation_interval="1s", targets={"icefield-tables": [f"{LOCALHOST}:{tables_port}"]},
    )
    started: list[Any] = []
    try:
        for server in (pushgateway, alertmanager, prometheus):
            if server.start():  # stopped at the end even when it never becomes ready
                started.append(server)
            server.wait_ready(PROMETHEUS_READY_TIMEOUT)
        yield PrometheusStack(prometheus, pushgateway, alertmanager, webhook, tables_port)
    finally:
        for server in reversed(started):
            server.stop()
        webhook.close()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.fixture
def kafka_topic(kafka_server: Kafka) -> Callable[..., str]:
    """Return ``make(partitions=4, name=None) -> name``: a fresh, uniquely named topic (left on the broker,
    which keeps it out of other tests' way)."""

    def make(partitions: int = 4, name: str | None = None) -> str:
        from confluent_kafka.admin import AdminClient, NewTopic

        topic = name or f"t-{uuid.uuid4().hex[:12]}"
        admin = AdminClient({"bootstrap.servers": kafka_server.bootstrap_servers})
        for future in admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30).values():
            future.result(timeout=60)
        return topic

    return make


@pytest.fixture
def debezium_capture(connect_server: Connect, pg_server: Postgres, pg_url: str) -> Iterator[Callable[..., dict[str, str]]]:
    """Return ``capture(url, tables, **config) -> {table: topic}``: registers a Debezium PostgreSQL
    connector (pgoutput, its own slot and publication) for ``tables`` (``schema.table``) of the database
    at ``url`` (usually ``pg_url``) and waits until it runs. ``config`` overrides connector settings
    (``**{"snapshot.mode": "no_data"}``). At teardown the connectors are deleted and their replication
    slots dropped (before ``pg_url``'s database is), so nothing outlives the test."""
    from sqlalchemy.engine import make_url
    from stack.connect import debezium_postgres_config

    made: list[tuple[str, str, str]] = []

    def capture(url: str, tables: list[str], **config: Any) -> dict[str, str]:
        dbname = make_url(url).database or ""
        tag = uuid.uuid4().hex[:10]
        name, slot, prefix = f"dbz-{tag}", f"dbz_{tag}", f"cdc_{tag}"
        made.append((name, slot, dbname))
        connector = debezium_postgres_config(
            pg_server.connection_info(dbname), tables, topic_prefix=prefix, slot_name=slot, **config
        )
        connect_server.register_connector(name, connector, timeout=120)
        return {table: f"{prefix}.{table}" for table in tables}

    yield capture
    for name, slot, dbname in made:
        connect_server.delete_connector(name)
        drop_replication_slot(pg_server, slot, dbname)


def drop_replication_slot(pg: Postgres, slot: str, dbname: str, timeout: float = 30.0) -> None:
    """Drop replication slot ``slot`` once its walsender let go of it (a deleted connector's task stops
    asynchronously); does nothing if it does not exist."""
    deadline = time.monotonic() + timeout
    while True:
        active = pg.psql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'", dbname)
        if active == "":
            return
        if active == "f":
            pg.psql(f"SELECT pg_drop_replication_slot('{slot}')", dbname)
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"replication slot {slot} still active {timeout:.0f}s after its connector was deleted")
        time.sleep(0.2)
