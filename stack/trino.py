"""Trino: the SQL engine that shares icefield's JDBC catalog, from Maven Central's server tarball.

The server is ``io.trino:trino-server`` (476: Maven Central's newest) fetched with Maven and unpacked
once into ``<cache>/trino-<version>/trino-server-<version>`` (see :func:`stack.maven.cache_dir`) with
only the Iceberg connector among its plugins (half the size; it starts faster and smaller). Trino 476
needs Java 24 or newer: :func:`find_trino_java` looks at ``$ICEFIELD_TRINO_JAVA_HOME``, ``$JAVA_HOME``,
the ``java`` on the ``PATH`` and the JDKs under ``/usr/lib/jvm`` and ``/opt``, and takes the newest
fit. The JVM is started directly (``java -cp lib/* ... io.trino.server.TrinoServer``, what Trino's
``bin/launcher`` runs), so it is stopped by its pid like every other service.

Layout under ``state_dir`` (``<base>/trino``)::

    etc/node.properties     node id, data dir, bound to 127.0.0.1
    etc/jvm.config          the JVM options (a modest heap: the machine is shared)
    etc/config.properties   coordinator and worker in one, the HTTP port, memory limits
    etc/log.properties      log levels
    etc/catalog/<name>.properties   one Iceberg catalog per icefield project (:meth:`Trino.add_catalog`)
    data/                   Trino's node data dir
    trino.log               the server's output
    pid, lock

Catalogs are read when the server starts: :meth:`Trino.add_catalog` on a running server takes effect
at the next restart (``stop()`` then ``up()``); the catalog files survive restarts (``prepare`` rewrites
only the other files).

Port: ``$ICEFIELD_TRINO_PORT`` (18080), 127.0.0.1 only. Ready when ``GET /v1/info`` says
``"starting": false`` and ``SELECT 1`` runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .base import ServiceNotInstalled, StackError, file_lock
from .jvm import JavaService, java_major, properties_text, read_port_env
from .maven import cache_dir, ensure_artifact

logger = logging.getLogger(__name__)

TRINO_VERSION = "476"
TRINO_PORT_ENV = "ICEFIELD_TRINO_PORT"
TRINO_PORT_DEFAULT = 18080
TRINO_JAVA_ENV = "ICEFIELD_TRINO_JAVA_HOME"
"""Environment variable naming the JDK home Trino runs on (when JAVA_HOME is an older Java)."""
TRINO_JAVA_MIN = 24
TRINO_JAVA_HINT = (
    "install a Java 24+ JDK (e.g. Eclipse Temurin 25: `apt-get install temurin-25-jdk` from the Adoptium "
    f"apt repository) and point {TRINO_JAVA_ENV} (or JAVA_HOME) at it"
)
KEPT_PLUGINS = ("iceberg",)
"""The connector plugins kept from the server tarball: icefield's tables are Iceberg tables."""
JVM_SEARCH_DIRS = (Path("/usr/lib/jvm"), Path("/opt"))

_UNPACKED_STAMP = ".icefield-unpacked"
_CATALOG_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def trino_home(version: str = TRINO_VERSION) -> Path:
    """The cache folder of Trino ``version``: the unpacked ``trino-server-<version>`` folder lives in it."""
    return cache_dir() / f"trino-{version}"


def trino_server(version: str = TRINO_VERSION) -> Path:
    """Return the unpacked server folder (``bin/``, ``lib/``, ``plugin/iceberg``), fetching the tarball with
    Maven and unpacking it first if needed (once: the folder is complete when it holds a stamp).

    Only the plugins in :data:`KEPT_PLUGINS` are unpacked; the tarball is deleted afterwards (Maven keeps
    its own copy in ``~/.m2``). Raises :class:`ServiceNotInstalled` if Maven is missing and
    :class:`StackError` if the fetch or the unpack fails.
    """
    home = trino_home(version)
    server = home / f"trino-server-{version}"
    if (server / _UNPACKED_STAMP).is_file():
        return server
    archive = ensure_artifact(
        f"io.trino:trino-server:{version}:tar.gz",
        home / f"trino-server-{version}.tar.gz",
        purpose=f"the Trino {version} server",
    )
    with file_lock(home / ".unpack.lock"):
        if (server / _UNPACKED_STAMP).is_file():
            return server
        t0 = time.monotonic()
        top = f"trino-server-{version}/"
        with tempfile.TemporaryDirectory(prefix=".unpack-", dir=home) as tmp:
            try:
                # Two streaming passes (random access into a .tar.gz decompresses from the start at every
                # seek). The plugins share jars through hard links: a kept plugin's link may point into a
                # plugin that is not kept, so the first pass lists those targets and the second extracts
                # them too (each before its links, as tar stores them), then their plugins are removed.
                with tarfile.open(archive, "r|gz") as tar:
                    kept = [m for m in tar if m.name.startswith(top) and _kept(m.name[len(top):])]
                wanted = {m.name for m in kept} | {m.linkname for m in kept if m.islnk()}
                with tarfile.open(archive, "r|gz") as tar:
                    for member in tar:
                        if member.name in wanted:
                            tar.extract(member, tmp, filter="data")
            except (OSError, tarfile.TarError) as e:
                raise StackError(f"cannot unpack {archive}: {e}; delete it and retry to fetch it again") from e
            staging = Path(tmp) / top.rstrip("/")
            for plugin in (staging / "plugin").iterdir() if (staging / "plugin").is_dir() else ():
                if plugin.name not in KEPT_PLUGINS:
                    shutil.rmtree(plugin)
            if not (staging / "lib").is_dir() or not (staging / "plugin" / "iceberg").is_dir():
                raise StackError(f"{archive} holds no lib/ or plugin/iceberg/ under {top}: not a Trino server tarball")
            (staging / _UNPACKED_STAMP).write_text(f"{version}\n")
            if server.exists():  # a half-unpacked folder from an older layout
                shutil.rmtree(server)
            staging.replace(server)
        archive.unlink(missing_ok=True)
        logger.info("unpacked Trino %s into %s in %.1fs", version, server, time.monotonic() - t0)
    return server


def _kept(relative: str) -> bool:
    """Whether a tarball entry (path under the top folder) is unpacked: all but the unkept plugins."""
    parts = relative.split("/")
    return parts[0] != "plugin" or len(parts) == 1 or parts[1] in ("", *KEPT_PLUGINS)


def find_trino_java(min_major: int = TRINO_JAVA_MIN) -> str:
    """Return the ``java`` of the newest JDK that is Java ``min_major`` or newer.

    Looks at ``$ICEFIELD_TRINO_JAVA_HOME`` (used alone when set), then ``$JAVA_HOME``, the ``java`` on the
    ``PATH`` and every JDK under ``/usr/lib/jvm`` and ``/opt``. Raises :class:`ServiceNotInstalled` naming
    how to install one when none fits.
    """
    pinned = os.environ.get(TRINO_JAVA_ENV)
    if pinned:
        java = Path(pinned) / "bin" / "java"
        major = java_major(str(java)) if java.is_file() else None
        if major is None or major < min_major:
            raise ServiceNotInstalled(
                f"{TRINO_JAVA_ENV}={pinned!r} is not a Java {min_major}+ home (found Java {major or 'none'}); {TRINO_JAVA_HINT}"
            )
        return str(java)
    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    for root in JVM_SEARCH_DIRS:
        try:
            candidates += sorted(p / "bin" / "java" for p in root.iterdir())
        except OSError:
            continue
    best: tuple[int, str] | None = None
    seen: set[str] = set()
    for java in candidates:
        real = os.path.realpath(java)
        if real in seen or not Path(real).is_file():
            continue
        seen.add(real)
        major = java_major(real)
        if major is not None and major >= min_major and (best is None or major > best[0]):
            best = (major, str(java))
    if best is None:
        raise ServiceNotInstalled(f"Trino {TRINO_VERSION} needs Java {min_major}+ and none was found; {TRINO_JAVA_HINT}")
    return best[1]


class Trino(JavaService):
    """A single-node Trino (coordinator and worker in one) under ``state_dir``, on 127.0.0.1 only.

    ``port`` comes from the argument, else ``$ICEFIELD_TRINO_PORT``, else 18080. ``heap`` is the JVM's
    maximum heap; queries may use half of it.
    """

    name = "trino"
    main_class = "io.trino.server.TrinoServer"
    heap = "2g"
    _server: Path | None = None  # set by install(): the unpacked server folder

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        fast: bool = False,
        heap: str | None = None,
        version: str = TRINO_VERSION,
    ) -> None:
        """Configure the launcher; touches nothing on disk. Raises :class:`StackError` for a bad port."""
        super().__init__(base_dir, fast=fast)
        self._port = port if port is not None else read_port_env(TRINO_PORT_ENV, TRINO_PORT_DEFAULT)
        if not 1 <= self._port <= 65535:
            raise StackError(f"Trino port {self._port} is out of range 1-65535")
        if heap is not None:
            self.heap = heap
        self.version = version

    @property
    def port(self) -> int:
        return self._port

    def url(self) -> str:
        """The server's HTTP URI, ``http://127.0.0.1:<port>`` (what ``trino.uri`` in icefield.yaml names)."""
        return f"http://{self.host}:{self.port}"

    @property
    def etc_dir(self) -> Path:
        return self.state_dir / "etc"

    @property
    def data_dir(self) -> Path:
        return (self.state_dir / "data").absolute()

    @property
    def config_file(self) -> Path:
        return self.etc_dir / "config.properties"

    def catalog_file(self, name: str) -> Path:
        """The properties file of the Trino catalog ``name``."""
        return self.etc_dir / "catalog" / f"{name}.properties"

    def install(self) -> None:
        """Find Java 24+ and the unpacked server (fetched and unpacked once); raise ServiceNotInstalled naming the fix."""
        self._java = find_trino_java()
        self._server = trino_server(self.version)
        self._libs = self._server / "lib"

    def add_catalog(
        self,
        name: str,
        jdbc_url: str,
        user: str,
        password: str,
        warehouse: Path | str,
        *,
        catalog_name: str = "icefield",
    ) -> Path:
        """Write ``etc/catalog/<name>.properties``: an Iceberg catalog on the JDBC catalog database
        ``jdbc_url`` (``jdbc:postgresql://host:port/db``), the one an icefield project's SQL catalog uses.

        ``catalog_name`` must be the project's ``catalog.name`` (the ``catalog_name`` column of
        ``iceberg_tables``); ``warehouse`` (a local folder or a URI) is where tables Trino creates go.
        Trino reads catalogs at start: on a running server the catalog appears after a restart. Returns
        the file. Raises :class:`StackError` for a name Trino would not accept.
        """
        if not _CATALOG_NAME.fullmatch(name):
            raise StackError(f"Trino catalog name {name!r} must be lowercase letters, digits and _ (e.g. lake)")
        location = str(warehouse)
        if "://" not in location:
            location = Path(location).absolute().as_uri()
        settings = {
            "connector.name": "iceberg",
            "iceberg.catalog.type": "jdbc",
            "iceberg.jdbc-catalog.catalog-name": catalog_name,
            "iceberg.jdbc-catalog.driver-class": "org.postgresql.Driver",
            "iceberg.jdbc-catalog.connection-url": jdbc_url,
            "iceberg.jdbc-catalog.connection-user": user,
            "iceberg.jdbc-catalog.connection-password": password,
            "iceberg.jdbc-catalog.default-warehouse-dir": location,
            # Trino's native local file system, rooted at / so that file:/// locations resolve as written.
            "fs.native-local.enabled": "true",
            "local.location": "/",
            # Let expire_snapshots / remove_orphan_files take thresholds under Trino's 7-day floor.
            "iceberg.expire-snapshots.min-retention": "0s",
            "iceberg.remove-orphan-files.min-retention": "0s",
        }
        path = self.catalog_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = "# Written by stack/trino.py (Trino.add_catalog); Trino reads it when it starts.\n"
        path.write_text(header + "".join(f"{k}={v}\n" for k, v in settings.items()))
        path.chmod(0o600)  # it holds the database password
        return path

    def add_project_catalog(self, project_root: Path | str, name: str | None = None) -> Path:
        """Write the Trino catalog of the icefield project at ``project_root`` (:meth:`add_catalog` with its
        catalog database, user, password, ``catalog.name`` and warehouse); ``name`` is the Trino catalog's
        name (default: ``catalog.name``). Returns the file; Trino loads it at its next start.

        The project's catalog must be a ``type: sql`` catalog on PostgreSQL (Trino's JDBC catalog needs a
        server database; an embedded SQLite file would be written by two processes). Raises
        :class:`StackError` naming the fix otherwise.
        """
        from sqlalchemy.engine import make_url

        from icefield import load_project
        from icefield.config.secrets import resolve

        project = load_project(Path(project_root))
        cfg = project.config.catalog
        where = f"{project.root / 'icefield.yaml'}: catalog.uri"
        url = make_url(resolve(project.catalog_uri(), where=where, base_dir=project.root)) if cfg.type == "sql" else None
        if url is None or not url.drivername.startswith("postgresql"):
            raise StackError(
                f"{where}: Trino shares a catalog through a PostgreSQL database; give the project "
                "`catalog: {uri: postgresql+psycopg2://user:${env:PGPASSWORD}@127.0.0.1:5432/lake}`"
            )
        jdbc = f"jdbc:postgresql://{url.host or '127.0.0.1'}:{url.port or 5432}/{url.database}"
        warehouse = project.warehouse_uri()
        return self.add_catalog(
            name or cfg.name, jdbc, url.username or "", url.password or "", warehouse, catalog_name=cfg.name
        )

    def jvm_options(self) -> list[str]:
        """Trino's recommended JVM options with a modest heap (the machine is shared with other services)."""
        return [
            "-server",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:G1HeapRegionSize=32M",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:-OmitStackTraceInFastThrow",
            "-XX:ReservedCodeCacheSize=256M",
            "-XX:PerMethodRecompilationCutoff=10000",
            "-XX:PerBytecodeRecompilationCutoff=10000",
            "-XX:-UsePerfData",
            "-Djdk.attach.allowAttachSelf=true",
            "-Djdk.nio.maxCachedBufferSize=2000000",
            "-Dfile.encoding=UTF-8",
            "-XX:+EnableDynamicAgentLoading",
            "--enable-native-access=ALL-UNNAMED",
        ]

    def _node(self) -> dict[str, str]:
        return {
            "node.environment": "icefield",
            "node.id": "icefield-trino-1",
            "node.data-dir": str(self.data_dir),
            "node.bind-ip": self.host,
            "node.internal-address": self.host,
        }

    def prepare(self) -> None:
        """Write ``etc/`` (node, jvm, config, log; catalog files are left as :meth:`add_catalog` wrote them)."""
        assert self._server is not None, "install() first"
        (self.etc_dir / "catalog").mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        writer = "stack/trino.py"
        (self.etc_dir / "node.properties").write_text(properties_text(self._node(), writer))
        (self.etc_dir / "jvm.config").write_text("\n".join(self.jvm_options()) + "\n")
        config = {
            "coordinator": "true",
            "node-scheduler.include-coordinator": "true",
            "http-server.http.port": str(self.port),
            "discovery.uri": self.url(),
            # Half the heap for queries: the rest is Trino's headroom (30% by default) and its own use.
            "query.max-memory": "1GB",
            "query.max-memory-per-node": "1GB" if _gigabytes(self.heap) >= 2 else "256MB",
            "plugin.dir": str(self._server / "plugin"),
            "catalog.config-dir": str((self.etc_dir / "catalog").absolute()),
        }
        self.config_file.write_text(properties_text(config, writer))
        (self.etc_dir / "log.properties").write_text(properties_text({"io.trino": "INFO"}, writer))

    def command(self) -> list[str]:
        """What Trino's ``bin/launcher run`` executes: ``java -cp lib/* <jvm.config> -D<node> -Dconfig=... TrinoServer``."""
        assert self._java is not None and self._libs is not None, "install() first"
        properties = {
            **self._node(),
            "config": str(self.config_file.absolute()),
            "log.levels-file": str((self.etc_dir / "log.properties").absolute()),
        }
        return [
            self._java,
            "-cp",
            f"{self._libs}/*",
            *self.jvm_options(),
            *(f"-D{k}={v}" for k, v in properties.items()),
            self.main_class,
        ]

    def probe(self) -> bool:
        """True when ``GET /v1/info`` answers with ``"starting": false`` and a query runs: the coordinator may
        say it started before its node is announced to it, and answers ``NO_NODES_AVAILABLE`` until then."""
        try:
            with urllib.request.urlopen(f"{self.url()}/v1/info", timeout=2) as response:
                info = json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return isinstance(info, dict) and info.get("starting") is False and self._runs_a_query()

    def _runs_a_query(self) -> bool:
        """True when ``SELECT 1`` finishes without an error (Trino's HTTP protocol: POST, then follow
        ``nextUri``)."""
        request = urllib.request.Request(
            f"{self.url()}/v1/statement", data=b"SELECT 1", headers={"X-Trino-User": "icefield"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                doc = json.loads(response.read())
            for _ in range(100):
                if not isinstance(doc, dict) or "error" in doc:
                    return False
                next_uri = doc.get("nextUri")
                if not next_uri:
                    return True
                with urllib.request.urlopen(next_uri, timeout=5) as response:
                    doc = json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        """As for every JVM service, with a longer default: Trino takes 20-30 s to start on two cores."""
        super().wait_ready(timeout)

    def up(self, timeout: float = 180.0) -> bool:
        return super().up(timeout)


def _gigabytes(size: str) -> float:
    m = re.fullmatch(r"(\d+)([mMgG])", size)
    if not m:
        raise StackError(f"Trino heap {size!r} is not JVM notation like 2g or 1536m")
    return int(m.group(1)) / (1024 if m.group(2).lower() == "m" else 1)


__all__ = [
    "TRINO_JAVA_ENV",
    "TRINO_PORT_DEFAULT",
    "TRINO_PORT_ENV",
    "TRINO_VERSION",
    "Trino",
    "find_trino_java",
    "trino_server",
]
