"""Kafka Connect (distributed worker, REST API) with the Debezium PostgreSQL connector, from Maven Central.

The worker's classpath is the runtime closure of ``stack/poms/connect.xml`` (``connect-runtime``,
``connect-json``, ``connect-transforms`` of :data:`~stack.kafka.KAFKA_VERSION`, plus log4j2), copied by
Maven into ``<cache>/connect-<version>/libs``. The Debezium plugin archive
(``io.debezium:debezium-connector-postgres:<version>:tar.gz:plugin``) is unpacked under
``<cache>/connect-plugins/debezium-postgres-<version>/``, which is the worker's ``plugin.path``. Both
live outside the checkout (:func:`stack.maven.cache_dir`).

The worker runs ``ConnectDistributed`` with one-replica storage topics in the Kafka it is given, so
connector configs and source offsets survive a restart of the worker. Layout under ``state_dir``
(``<base>/connect``): ``worker.properties`` (rewritten at every start), ``connect.log``, ``pid``,
``lock``. REST on 127.0.0.1:``$ICEFIELD_CONNECT_PORT`` (18083). Ready when ``GET /health`` answers
200 and the Debezium connector class is among ``GET /connector-plugins``.

Connectors are managed through the REST API: :meth:`Connect.register_connector` (``POST /connectors``,
then wait until the connector and its tasks are RUNNING), :meth:`Connect.delete_connector`,
:meth:`Connect.connector_status`; :func:`debezium_postgres_config` builds a Debezium PostgreSQL config.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import ServiceStartError, StackError, file_lock
from .jvm import JavaService, find_java, properties_text, read_port_env
from .kafka import KAFKA_VERSION, Kafka, maven_properties
from .maven import POMS_DIR, cache_dir, copy_dependencies, ensure_artifact

logger = logging.getLogger(__name__)

CONNECT_PORT_ENV = "ICEFIELD_CONNECT_PORT"
CONNECT_PORT_DEFAULT = 18083
CONNECT_HEAP = "512m"
CONNECT_POM = POMS_DIR / "connect.xml"
CONNECT_GROUP = "icefield-connect"
DEBEZIUM_VERSION = "3.6.1.Final"
DEBEZIUM_POSTGRES_CLASS = "io.debezium.connector.postgresql.PostgresConnector"

_STAMP = ".icefield-complete"


def connect_libs(version: str = KAFKA_VERSION) -> Path:
    """Return the folder of the Connect worker's jars, assembling it with Maven first if needed."""
    return copy_dependencies(
        CONNECT_POM,
        cache_dir() / f"connect-{version}" / "libs",
        maven_properties(version),
        purpose=f"the Kafka Connect {version} worker jars",
    )


def debezium_plugin_path(version: str = DEBEZIUM_VERSION) -> Path:
    """Return a ``plugin.path`` folder holding the unpacked Debezium PostgreSQL connector.

    Fetches the plugin archive with Maven (cached) and unpacks it once, atomically, under a lock.
    Raises :class:`~stack.base.ServiceNotInstalled` if Maven is missing, :class:`StackError` if the
    fetch or the archive fails.
    """
    root = cache_dir() / "connect-plugins"
    dest = root / f"debezium-postgres-{version}"
    if (dest / _STAMP).is_file():
        return dest
    archive = ensure_artifact(
        f"io.debezium:debezium-connector-postgres:{version}:tar.gz:plugin",
        root / "archives" / f"debezium-connector-postgres-{version}-plugin.tar.gz",
        purpose=f"the Debezium PostgreSQL connector {version}",
    )
    with file_lock(root / f".{dest.name}.lock"):
        if (dest / _STAMP).is_file():
            return dest
        logger.info("unpacking %s into %s", archive.name, dest)
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=root) as tmp:
            staging = Path(tmp) / "plugins"
            staging.mkdir()
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(staging, filter="data")
            except (tarfile.TarError, OSError) as e:
                raise StackError(f"cannot unpack {archive}: {e}; delete it to fetch it again") from e
            if not any(staging.glob("*/*.jar")):
                raise StackError(f"{archive} holds no plugin folder with jars; delete it to fetch it again")
            (staging / _STAMP).write_text(f"{version}\n")
            if dest.exists():
                os.replace(dest, Path(tmp) / "old")
            os.replace(staging, dest)
    return dest


class Connect(JavaService):
    """A Kafka Connect distributed worker (one node) with the Debezium PostgreSQL plugin.

    ``kafka`` is the broker launcher whose bootstrap servers the worker uses (default: a
    :class:`~stack.kafka.Kafka` on the same base dir with its default ports); ``bootstrap_servers``
    overrides it. ``port`` is the REST port (argument, else ``$ICEFIELD_CONNECT_PORT``, else 18083).
    """

    name = "connect"
    main_class = "org.apache.kafka.connect.cli.ConnectDistributed"

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        kafka: Kafka | None = None,
        bootstrap_servers: str | None = None,
        fast: bool = False,
        heap: str = CONNECT_HEAP,
        version: str = KAFKA_VERSION,
        debezium_version: str = DEBEZIUM_VERSION,
    ) -> None:
        """Configure the launcher; touches nothing on disk. Raises :class:`StackError` for a bad port."""
        super().__init__(base_dir, fast=fast)
        self._port = port if port is not None else read_port_env(CONNECT_PORT_ENV, CONNECT_PORT_DEFAULT)
        if not 1 <= self._port <= 65535:
            raise StackError(f"Kafka Connect port {self._port} is out of range 1-65535")
        self.kafka = kafka if kafka is not None else Kafka(self.base_dir)
        self.bootstrap_servers = bootstrap_servers or self.kafka.bootstrap_servers
        self.heap = heap
        self.version = version
        self.debezium_version = debezium_version
        self._plugins: Path | None = None

    @property
    def port(self) -> int:
        """The REST port."""
        return self._port

    def url(self) -> str:
        """Return the REST API's base URL, ``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "worker.properties"

    # ------------------------------------------------------------------ lifecycle

    def install(self) -> None:
        """Find Java 17+, assemble the worker jars and unpack the Debezium plugin (all cached)."""
        self._java = find_java()
        self._libs = connect_libs(self.version)
        self._plugins = debezium_plugin_path(self.debezium_version)

    def prepare(self) -> None:
        self.config_file.write_text(self.worker_properties())

    def worker_properties(self) -> str:
        """The worker's configuration (rewritten at every start)."""
        assert self._plugins is not None, "install() first"
        settings = {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": CONNECT_GROUP,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "config.storage.topic": f"{CONNECT_GROUP}-configs",
            "offset.storage.topic": f"{CONNECT_GROUP}-offsets",
            "status.storage.topic": f"{CONNECT_GROUP}-status",
            "config.storage.replication.factor": "1",
            "offset.storage.replication.factor": "1",
            "status.storage.replication.factor": "1",
            "offset.storage.partitions": "1",
            "status.storage.partitions": "1",
            "offset.flush.interval.ms": "1000",
            # One worker: when it restarts, take its connectors back at once instead of after 5 minutes.
            "scheduled.rebalance.max.delay.ms": "0",
            "listeners": f"http://{self.host}:{self.port}",
            "rest.advertised.host.name": self.host,
            "rest.advertised.port": str(self.port),
            "plugin.path": str(self._plugins),
            # Debezium ships ServiceLoader manifests: skip the slow reflective scan of every jar.
            "plugin.discovery": "service_load",
        }
        return properties_text(settings, "stack/connect.py")

    def probe(self) -> bool:
        """True once ``GET /health`` is 200; raises if the worker runs without the Debezium plugin."""
        try:
            status, _ = self._call("GET", "/health", timeout=5)
        except (OSError, StackError):
            return False
        if status != 200:
            return False
        status, plugins = self._call("GET", "/connector-plugins", timeout=10)
        classes = {p.get("class") for p in plugins or []} if status == 200 else set()
        if DEBEZIUM_POSTGRES_CLASS not in classes:
            raise ServiceStartError(
                f"Kafka Connect runs but lacks {DEBEZIUM_POSTGRES_CLASS} (plugins: {sorted(c for c in classes if c)}); "
                f"check plugin.path in {self.config_file} and {self.log_file}"
            )
        return True

    def up(self, timeout: float = 120.0) -> bool:
        """Start Kafka first if it is the default launcher's and not running, then the worker."""
        if not self.kafka.status().running and self.bootstrap_servers == self.kafka.bootstrap_servers:
            raise ServiceStartError(
                f"Kafka Connect needs Kafka at {self.bootstrap_servers}, which is not running: "
                "start it first (python -m stack up kafka connect)"
            )
        return super().up(timeout)

    # ------------------------------------------------------------------ REST API

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """Send one REST request; return ``(status, decoded JSON or None)``. Raises OSError when unreachable."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url() + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                doc = json.loads(raw) if raw else None
            except ValueError:
                doc = {"message": raw.decode(errors="replace")}
            return e.code, doc

    def connectors(self) -> list[str]:
        """Return the names of the registered connectors."""
        status, doc = self._call("GET", "/connectors")
        if status != 200:
            raise StackError(f"GET /connectors on {self.url()} answered {status}: {doc}")
        return sorted(doc)

    def connector_status(self, name: str) -> dict[str, Any] | None:
        """Return ``GET /connectors/<name>/status`` (``connector.state``, ``tasks[].state``), None if unknown."""
        status, doc = self._call("GET", f"/connectors/{urllib.parse.quote(name, safe='')}/status")
        if status == 404:
            return None
        if status != 200:
            raise StackError(f"status of connector {name!r} on {self.url()}: HTTP {status}: {doc}")
        result: dict[str, Any] = doc
        return result

    def register_connector(self, name: str, config: Mapping[str, Any], *, timeout: float = 60.0) -> dict[str, Any]:
        """Create connector ``name`` (``POST /connectors``), or update its config if it exists, and wait
        until the connector and every task are RUNNING. Returns the final status.

        Retries while the worker rebalances (HTTP 409). Raises :class:`StackError` with the worker's
        message (and the task's stack trace) if the config is refused or a task FAILED, or when
        ``timeout`` seconds pass.
        """
        config = {k: str(v) for k, v in config.items()}
        deadline = time.monotonic() + timeout
        while True:
            status, doc = self._call("POST", "/connectors", {"name": name, "config": config})
            if status == 409 and "already exists" in str(doc):
                status, doc = self._call("PUT", f"/connectors/{urllib.parse.quote(name, safe='')}/config", config)
            if status in (200, 201):
                break
            if status != 409 or time.monotonic() >= deadline:  # 409: a rebalance is in progress
                raise StackError(f"Kafka Connect refused connector {name!r}: HTTP {status}: {_message(doc)}")
            time.sleep(0.5)
        return self.wait_running(name, timeout=max(deadline - time.monotonic(), 1.0))

    def wait_running(self, name: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until connector ``name`` and all its tasks (at least one) are RUNNING; return the status.

        Raises :class:`StackError` at once if one FAILED (with its trace), or after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.connector_status(name)
            if state is not None:
                tasks = state.get("tasks", [])
                failed = [t for t in [state.get("connector", {}), *tasks] if t.get("state") == "FAILED"]
                if failed:
                    raise StackError(f"connector {name!r} FAILED: {failed[0].get('trace', failed[0])}")
                if state.get("connector", {}).get("state") == "RUNNING" and tasks and all(
                    t.get("state") == "RUNNING" for t in tasks
                ):
                    return state
            if time.monotonic() >= deadline:
                raise StackError(f"connector {name!r} not RUNNING after {timeout:.0f}s: {state}; see {self.log_file}")
            time.sleep(0.25)

    def delete_connector(self, name: str, *, timeout: float = 30.0) -> bool:
        """Delete connector ``name`` and wait until it is gone; return False if it did not exist."""
        deadline = time.monotonic() + timeout
        path = f"/connectors/{urllib.parse.quote(name, safe='')}"
        while True:
            status, doc = self._call("DELETE", path)
            if status == 404:
                return False
            if status in (200, 204):
                break
            if status != 409 or time.monotonic() >= deadline:
                raise StackError(f"cannot delete connector {name!r}: HTTP {status}: {_message(doc)}")
            time.sleep(0.5)
        while name in self.connectors():
            if time.monotonic() >= deadline:
                raise StackError(f"connector {name!r} still listed {timeout:.0f}s after its deletion")
            time.sleep(0.25)
        return True


def debezium_postgres_config(
    connection: Mapping[str, Any],
    tables: Sequence[str],
    *,
    topic_prefix: str,
    slot_name: str,
    publication_name: str | None = None,
    **overrides: Any,
) -> dict[str, str]:
    """Return a Debezium PostgreSQL connector config capturing ``tables`` (``schema.table``).

    ``connection`` holds ``host``, ``port``, ``user``, ``password`` and ``dbname`` (see
    :meth:`stack.postgres.Postgres.connection_info`). Uses the built-in ``pgoutput`` plugin, the
    replication slot ``slot_name`` and a publication (default ``<slot_name>_pub``) created for just
    these tables. Change events go to the topics ``<topic_prefix>.<schema>.<table>``. TRUNCATE is
    captured (``skipped.operations=none``; Debezium skips it by default, and a table whose truncate is
    skipped keeps rows PostgreSQL no longer has). ``overrides`` are added last (for example
    ``snapshot_mode="no_data"`` as ``**{"snapshot.mode": "no_data"}``).
    """
    if not tables:
        raise StackError("give at least one table (schema.table) to capture")
    config: dict[str, Any] = {
        "connector.class": DEBEZIUM_POSTGRES_CLASS,
        "tasks.max": 1,
        "plugin.name": "pgoutput",
        "database.hostname": connection["host"],
        "database.port": connection["port"],
        "database.user": connection["user"],
        "database.password": connection["password"],
        "database.dbname": connection["dbname"],
        "topic.prefix": topic_prefix,
        "slot.name": slot_name,
        "publication.name": publication_name or f"{slot_name}_pub",
        "publication.autocreate.mode": "filtered",
        "table.include.list": ",".join(tables),
        "skipped.operations": "none",
    }
    config.update(overrides)
    return {k: str(v) for k, v in config.items()}


def _message(doc: Any) -> str:
    if isinstance(doc, dict) and "message" in doc:
        return str(doc["message"])
    return str(doc)


__all__ = [
    "CONNECT_PORT_DEFAULT",
    "CONNECT_PORT_ENV",
    "DEBEZIUM_POSTGRES_CLASS",
    "DEBEZIUM_VERSION",
    "Connect",
    "connect_libs",
    "debezium_plugin_path",
    "debezium_postgres_config",
]
