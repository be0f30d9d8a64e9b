"""A Hive Metastore: Apache Hive's standalone metastore (Thrift), from Maven Central jars.

The server is the metastore of ``hive-standalone-metastore`` 3.1 (``HiveMetaStore.HMSHandler``) on an
embedded Derby database, with a local warehouse folder. It is started through a small launcher,
``stack/java/HiveMetastoreServer.java``, run as a single source file (nothing is built), because Hive
3.1's own main class (``HiveMetaStore``) binds every interface: the launcher serves the same handler,
processor and transport on 127.0.0.1 only. Hive 3.1, not 4: Hive 4's metastore
dropped the Thrift calls pyiceberg's ``HiveCatalog`` makes (``get_table`` answers "Invalid method
name"). Its database schema (the transaction tables included, which DataNucleus's auto-creation leaves
out and table locks need) is created once, before the first start, by Hive's own schema tool
(``MetastoreSchemaTool -initSchema -dbType derby``) from the Derby scripts of Hive's binary
distribution (Maven Central serves it as the ``bin`` tar.gz beside the jar).

The classpath is the runtime closure of ``stack/poms/hive-metastore.xml`` copied by Maven into
``<cache>/hive-metastore-<version>/libs``; the schema scripts go to ``<cache>/hive-metastore-<version>/
scripts`` (see :func:`stack.maven.cache_dir`). Layout under ``state_dir`` (``<base>/hive``)::

    conf/metastore-site.xml   the server's configuration (rewritten at every start)
    metastore_db/             the Derby database
    warehouse/                where the metastore puts each database's folder (``<name>.db``)
    schema.log                the schema tool's output (first start only)
    hive.log                  the server's output
    pid, lock

Port: ``$ICEFIELD_HIVE_PORT`` (19083), 127.0.0.1 only. Ready when a Thrift ``get_all_databases`` call
answers.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import escape

from .base import ServiceNotInstalled, StackError, file_lock, run_command
from .jvm import JavaService, find_java, read_port_env
from .maven import POMS_DIR, cache_dir, copy_dependencies, ensure_artifact

logger = logging.getLogger(__name__)

HIVE_VERSION = "3.1.3"
HIVE_PORT_ENV = "ICEFIELD_HIVE_PORT"
HIVE_PORT_DEFAULT = 19083
HIVE_POM = POMS_DIR / "hive-metastore.xml"
SCHEMA_TOOL = "org.apache.hadoop.hive.metastore.tools.MetastoreSchemaTool"
SCHEMA_TIMEOUT_S = 300.0
LAUNCHER = Path(__file__).resolve().parent / "java" / "HiveMetastoreServer.java"
JDK_INSTALL_HINT = "apt-get install openjdk-17-jdk-headless"


def hive_home(version: str = HIVE_VERSION) -> Path:
    """The cache folder of the metastore ``version``: ``libs/`` (jars) and ``scripts/`` (schema scripts)."""
    return cache_dir() / f"hive-metastore-{version}"


def hive_libs(version: str = HIVE_VERSION) -> Path:
    """Return the folder of the metastore's jars, assembling it with Maven first if needed.

    Raises :class:`~stack.base.ServiceNotInstalled` if Maven is missing, :class:`StackError` if it fails.
    """
    return copy_dependencies(
        HIVE_POM,
        hive_home(version) / "libs",
        {"hive.version": version},
        purpose=f"the Hive {version} standalone metastore jars",
    )


def hive_schema_scripts(version: str = HIVE_VERSION) -> Path:
    """Return the metastore home the schema tool reads (``scripts/metastore/upgrade/derby/*.sql`` under
    it), extracting the Derby scripts from Hive's binary distribution (fetched with Maven) if needed."""
    home = hive_home(version)
    derby = home / "scripts" / "metastore" / "upgrade" / "derby"
    if (derby / "upgrade.order.derby").is_file():
        return home
    archive = ensure_artifact(
        f"org.apache.hive:hive-standalone-metastore:{version}:tar.gz:bin",
        home / f"hive-standalone-metastore-{version}-bin.tar.gz",
        purpose=f"the Hive {version} metastore schema scripts",
    )
    with file_lock(home / ".scripts.lock"):
        if (derby / "upgrade.order.derby").is_file():
            return home
        prefix = f"apache-hive-metastore-{version}-bin/scripts/metastore/upgrade/derby/"
        with tempfile.TemporaryDirectory(prefix=".scripts-", dir=home) as tmp, tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix)]
            if not members:
                raise StackError(f"{archive} holds no Derby schema scripts under {prefix}")
            staging = Path(tmp) / "derby"
            staging.mkdir()
            for member in members:
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                (staging / Path(member.name).name).write_bytes(source.read())
            derby.parent.mkdir(parents=True, exist_ok=True)
            staging.replace(derby)
    return home


class HiveMetastore(JavaService):
    """Hive's standalone metastore under ``state_dir`` on an embedded Derby database.

    ``port`` comes from the argument, else ``$ICEFIELD_HIVE_PORT``, else 19083. ``warehouse`` is the
    folder the metastore creates database folders under (default ``state_dir/warehouse``): pyiceberg's
    ``HiveCatalog`` puts a table under its database's folder unless the namespace has a location.
    """

    name = "hive"
    main_class = "HiveMetastoreServer"
    heap = "512m"
    _home: Path | None = None  # set by install(): the folder the schema tool reads its scripts from

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        fast: bool = False,
        warehouse: Path | None = None,
        version: str = HIVE_VERSION,
    ) -> None:
        """Configure the launcher; touches nothing on disk. Raises :class:`StackError` for a bad port."""
        super().__init__(base_dir, fast=fast)
        self._port = port if port is not None else read_port_env(HIVE_PORT_ENV, HIVE_PORT_DEFAULT)
        if not 1 <= self._port <= 65535:
            raise StackError(f"Hive Metastore port {self._port} is out of range 1-65535")
        self._warehouse = warehouse
        self.version = version

    @property
    def port(self) -> int:
        return self._port

    def url(self) -> str:
        """The metastore's Thrift URI, ``thrift://127.0.0.1:<port>``."""
        return f"thrift://{self.host}:{self.port}"

    @property
    def warehouse(self) -> Path:
        """The folder the metastore creates database folders under."""
        return (self._warehouse or self.state_dir / "warehouse").absolute()

    @property
    def database(self) -> Path:
        """The Derby database folder."""
        return (self.state_dir / "metastore_db").absolute()

    @property
    def config_file(self) -> Path:
        return self.state_dir / "conf" / "metastore-site.xml"

    def install(self) -> None:
        """Find Java 17+ with its compiler (the launcher is a source file, compiled in memory at every start)
        and assemble the jars and the schema scripts (Maven, cached); raise ServiceNotInstalled naming the fix."""
        java = find_java()
        if not Path(os.path.realpath(java)).with_name("javac").is_file():
            raise ServiceNotInstalled(
                f"{java} is a Java runtime without the compiler the Hive Metastore's launcher needs: run "
                f"`{JDK_INSTALL_HINT}` or point JAVA_HOME at a JDK"
            )
        self._java = java
        self._libs = hive_libs(self.version)
        self._home = hive_schema_scripts(self.version)

    def _settings(self) -> dict[str, str]:
        return {
            "metastore.thrift.port": str(self.port),
            "javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={self.database};create=true",
            "javax.jdo.option.ConnectionDriverName": "org.apache.derby.jdbc.EmbeddedDriver",
            # The schema tool creates the schema (prepare); its version row is then checked at start.
            "metastore.schema.verification": "true",
            "metastore.warehouse.dir": self.warehouse.as_uri(),
            # Hive's defaults name classes of hive-exec, which a standalone metastore does not have.
            "metastore.expression.proxy": "org.apache.hadoop.hive.metastore.DefaultPartitionExpressionProxy",
            "metastore.task.threads.always": (
                "org.apache.hadoop.hive.metastore.events.EventCleanerTask,"
                "org.apache.hadoop.hive.metastore.RuntimeStatsCleanerTask"
            ),
            "metastore.event.db.notification.api.auth": "false",
        }

    def prepare(self) -> None:
        """Write ``metastore-site.xml`` and, before the first start, create the Derby schema with Hive's
        schema tool (a second run on an existing schema would fail, so it runs only without a database)."""
        self.warehouse.mkdir(parents=True, exist_ok=True)
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        properties = "".join(
            f"  <property><name>{escape(k)}</name><value>{escape(v)}</value></property>\n" for k, v in self._settings().items()
        )
        self.config_file.write_text(
            '<?xml version="1.0"?>\n<!-- Written by stack/hive_metastore.py at every start: change the launcher, '
            f"not this file. -->\n<configuration>\n{properties}</configuration>\n"
        )
        if not (self.database / "service.properties").is_file():
            self._init_schema()

    def _init_schema(self) -> None:
        assert self._java is not None and self._libs is not None and self._home is not None, "install() first"
        logger.info("creating the Hive Metastore schema in %s", self.database)
        env = self.environment()
        env["METASTORE_HOME"] = str(self._home)
        options = [o for o in self.jvm_options() if not o.startswith("-Xms")]
        result = run_command(
            [self._java, *options, "-cp", self._classpath(), SCHEMA_TOOL, "-initSchema", "-dbType", "derby"],
            env=env,
            cwd=self.state_dir,
            timeout=SCHEMA_TIMEOUT_S,
            check=False,
        )
        (self.state_dir / "schema.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise StackError(
                f"the Hive schema tool failed (exit {result.returncode}); see {self.state_dir / 'schema.log'}:\n"
                + "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            )

    def _classpath(self) -> str:
        # The configuration folder first: the metastore finds metastore-site.xml on its classpath.
        return f"{self.config_file.parent}:{self._libs}/*"

    def command(self) -> list[str]:
        """``java -cp <conf>:<libs>/* HiveMetastoreServer.java <port>`` (a single source file, compiled in
        memory at start; the configuration comes from the classpath)."""
        assert self._java is not None and self._libs is not None, "install() first"
        derby = f"-Dderby.system.home={self.state_dir.absolute()}"
        return [self._java, *self.jvm_options(), derby, "-cp", self._classpath(), str(LAUNCHER), str(self.port)]

    def probe(self) -> bool:
        """True when a Thrift ``get_all_databases`` call gets a reply (not an exception)."""
        return get_all_databases(self.host, self.port) is not None


def get_all_databases(host: str, port: int, timeout: float = 5.0) -> list[str] | None:
    """The metastore's database names through one Thrift ``get_all_databases`` call (binary protocol,
    buffered transport: what ``HiveMetaStore`` serves without SASL), or None when it cannot be reached or
    does not answer with a result. Hand-encoded so the stack needs no Thrift library."""
    name = b"get_all_databases"
    # A strict binary CALL message (version 1, type 1), sequence id 1, then the empty argument struct.
    request = struct.pack("!Ii", 0x80010001, len(name)) + name + struct.pack("!i", 1) + b"\x00"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            reader = sock.makefile("rb")
            header, = struct.unpack("!I", _read(reader, 4))
            if header & 0xFFFF0000 != 0x80010000 or header & 0xFF != 2:  # not a REPLY (3 is an exception)
                return None
            _read(reader, struct.unpack("!i", _read(reader, 4))[0])  # method name
            _read(reader, 4)  # sequence id
            field_type, field_id = struct.unpack("!bh", _read(reader, 3))
            if field_type != 15 or field_id != 0:  # field 0 (success) is a list
                return None
            element_type, size = struct.unpack("!bi", _read(reader, 5))
            if element_type != 11:  # strings
                return None
            return [_read(reader, struct.unpack("!i", _read(reader, 4))[0]).decode() for _ in range(size)]
    except (OSError, struct.error, UnicodeDecodeError):
        return None


def _read(reader: BinaryIO, n: int) -> bytes:
    data = reader.read(n)
    if len(data) != n:
        raise OSError("the metastore closed the connection")
    return data


__all__ = ["HIVE_PORT_DEFAULT", "HIVE_PORT_ENV", "HIVE_VERSION", "HiveMetastore", "get_all_databases", "hive_libs"]
