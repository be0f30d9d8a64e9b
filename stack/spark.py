"""Spark 4.1 with the Iceberg runtime, local and offline, sharing icefield's catalog.

Spark is not a server here: a ``local[2]`` session runs inside a JVM that pyspark starts as a child
of the calling Python process and that ends with ``spark.stop()`` (or with that process). So this
module is a helper, not a :class:`~stack.base.Service`.

* :func:`ensure_jars` fetches the Iceberg Spark runtime, the JDBC drivers, the Iceberg AWS bundle and Spark's Kafka source with Maven, once, into
  ``${ICEFIELD_CACHE:-${XDG_CACHE_HOME:-~/.cache}/icefield}/jars`` (outside the checkout). Spark's
  own Ivy resolution (``spark.jars.packages``) is never used: local paths go in ``spark.jars``.
* :func:`spark_session` builds a ``local[2]`` session bound to 127.0.0.1 (UI off) whose Iceberg
  ``SparkCatalog`` is Java's ``JdbcCatalog`` on the same database as pyiceberg's ``SqlCatalog``
  (SQLite or PostgreSQL), under the same catalog name: a table committed by one engine is the
  table the other loads.
* :func:`jdbc_url_from_sqlalchemy` translates icefield's SQLAlchemy catalog URL to a JDBC one.

Install pyspark with ``pip install -r requirements/spark.txt`` (``pyspark==4.1.4``: the Iceberg 4.1
runtime fails on Spark 4.2+, so never take a newer minor). Spark 4.1 needs Java 17 or 21; the
default JDK (17) is used, and another one is looked for under ``/usr/lib/jvm`` when ``java`` on the
``PATH`` or ``JAVA_HOME`` is of another version.

``python -m stack.spark jars`` fetches the jars and prints their paths; ``python -m stack.spark
check`` also starts a session, runs a query and prints the versions and the startup time.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The jars and the catalog settings the spark engine uses at run time are icefield's
# (icefield.engines.spark_session); this module fetches those jars and starts sessions for tests and benchmarks.
from icefield.engines.spark_session import (  # noqa: F401 - ICEBERG_VERSION, POSTGRES_JDBC, SQLITE_JDBC: re-exported
    ARTIFACTS,
    CATALOG_EXTENSIONS,
    ICEBERG_RUNTIME,
    ICEBERG_VERSION,
    POSTGRES_JDBC,
    SQLITE_BUSY_TIMEOUT_MS,
    SQLITE_JDBC,
)

from .base import LOCALHOST, ServiceNotInstalled, StackError, file_lock
from .jvm import java_major
from .maven import (  # noqa: F401 - CACHE_ENV, MAVEN_DEPENDENCY_PLUGIN: re-exported for callers
    CACHE_ENV,
    MAVEN_DEPENDENCY_PLUGIN,
    MAVEN_INSTALL_HINT,
    cache_dir,
    copy_artifact,
    nonempty,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from icefield.config import Project

logger = logging.getLogger(__name__)

PYSPARK_REQUIREMENT = "pyspark==4.1.4"
PYSPARK_SERIES = "4.1."
"""The only pyspark minor the Iceberg runtime below works with."""
INSTALL_HINT = "pip install -r requirements/spark.txt"
JAVA_INSTALL_HINT = "apt-get install openjdk-17-jdk-headless"
SUPPORTED_JAVA = (17, 21)


_COORD = re.compile(r"^([\w.\-]+):([\w.\-]+):([\w.\-]+)$")


class SparkNotInstalled(ServiceNotInstalled):
    """pyspark, Maven or a suitable JDK is missing; the message names what to install."""


# ---------------------------------------------------------------------------------------- jars


def jars_dir() -> Path:
    """Return the directory :func:`ensure_jars` fills: ``<cache_dir()>/jars``."""
    return cache_dir() / "jars"


def jar_name(coordinate: str) -> str:
    """Return the file name Maven gives the jar of ``group:artifact:version``."""
    m = _COORD.match(coordinate)
    if not m:
        raise StackError(f"not a Maven coordinate group:artifact:version: {coordinate!r}")
    return f"{m.group(2)}-{m.group(3)}.jar"


def ensure_jars(
    directory: Path | str | None = None,
    *,
    artifacts: Sequence[str] = ARTIFACTS,
    timeout: float = 900.0,
) -> list[Path]:
    """Return the local paths of ``artifacts`` (default :data:`ARTIFACTS`), fetching missing ones.

    Idempotent: a jar already in ``directory`` (default :func:`jars_dir`) is not fetched again, so
    the usual call costs a few ``stat``. A missing one is copied by Maven's dependency plugin (from
    ``~/.m2`` or Maven Central) into a temporary folder, then renamed into place, under a file lock:
    concurrent callers never see half a jar. Raises :class:`SparkNotInstalled` naming the package to
    install when ``mvn`` is missing, and :class:`StackError` with Maven's output when it fails.
    """
    target = Path(directory).expanduser().absolute() if directory is not None else jars_dir()
    wanted = [(coord, target / jar_name(coord)) for coord in artifacts]
    missing = [(coord, path) for coord, path in wanted if not nonempty(path)]
    if missing:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise SparkNotInstalled(
                f"Maven (`mvn`) is needed to fetch the Spark jars {', '.join(c for c, _ in missing)} "
                f"into {target}: run `{MAVEN_INSTALL_HINT}` (or put the jars there by hand)"
            )
        target.mkdir(parents=True, exist_ok=True)
        with file_lock(target / ".lock"):
            for coord, path in missing:
                if nonempty(path):  # another process fetched it while we waited for the lock
                    continue
                copy_artifact(mvn, coord, path, timeout)
    return [path for _, path in wanted]


# ------------------------------------------------------------------------------- catalog URLs


def jdbc_url_from_sqlalchemy(url: str) -> tuple[str, str | None, str | None]:
    """Translate a SQLAlchemy catalog URL to ``(jdbc_url, user, password)`` for Java's JdbcCatalog: the spark
    engine's translation (:func:`icefield.engines.spark_session.jdbc_url_from_sqlalchemy`), raising
    :class:`StackError` for what it refuses."""
    from icefield.engines.spark_session import jdbc_url_from_sqlalchemy as translate
    from icefield.errors import ConfigError

    try:
        return translate(url)
    except ConfigError as e:
        raise StackError(str(e)) from None


def _sqlite_path(jdbc_url: str) -> Path | None:
    if not jdbc_url.startswith("jdbc:sqlite:"):
        return None
    rest = jdbc_url.removeprefix("jdbc:sqlite:").split("?", 1)[0]
    if rest.startswith("file:"):
        rest = rest.removeprefix("file:")
    if rest in ("", ":memory:"):
        return None
    return Path(rest)


def enable_sqlite_wal(db_path: Path) -> None:
    """Put the SQLite catalog file in WAL mode (persistent in the file), creating it if missing.

    icefield's catalog does the same when it opens the file; this covers a database that Spark opens
    first (a benchmark that creates its tables with Spark). In WAL mode readers never block the
    single writer, so Spark and pyiceberg can commit to one catalog from two processes.
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db_path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        con.close()
    if str(mode).lower() != "wal":
        raise StackError(f"cannot put the SQLite catalog {db_path} in WAL mode (journal_mode is {mode})")


# -------------------------------------------------------------------------------------- Java


def _ensure_java() -> str:
    """Make the JVM that pyspark launches a supported one; return the ``java`` used.

    pyspark runs ``bin/spark-submit`` with this process's environment, which picks
    ``$JAVA_HOME/bin/java`` or else ``java`` on the ``PATH``. When that one is missing or not Java
    17/21, the first JDK 17 (then 21) under ``/usr/lib/jvm`` is exported as ``JAVA_HOME``.
    """
    home = os.environ.get("JAVA_HOME")
    current = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if current and java_major(current) in SUPPORTED_JAVA:
        return current
    for major in SUPPORTED_JAVA:
        for candidate in sorted(Path("/usr/lib/jvm").glob(f"*-{major}-*")) + sorted(Path("/usr/lib/jvm").glob(f"*{major}*")):
            java = candidate / "bin" / "java"
            if java.is_file() and java_major(str(java)) == major:
                logger.info("using %s for Spark (JAVA_HOME=%s was %s)", java, candidate, home)
                os.environ["JAVA_HOME"] = str(candidate)
                return str(java)
    raise SparkNotInstalled(
        f"Spark 4.1 needs Java {' or '.join(map(str, SUPPORTED_JAVA))}; found {current or 'no java'}: "
        f"run `{JAVA_INSTALL_HINT}` or point JAVA_HOME at one"
    )


# ----------------------------------------------------------------------------------- session


def import_pyspark() -> Any:
    """Import pyspark and check it is the 4.1 series; raise :class:`SparkNotInstalled` naming the fix."""
    try:
        import pyspark
    except ImportError as e:
        raise SparkNotInstalled(
            f"pyspark is not installed ({e}): run `{INSTALL_HINT}` ({PYSPARK_REQUIREMENT})"
        ) from None
    if not pyspark.__version__.startswith(PYSPARK_SERIES):
        raise SparkNotInstalled(
            f"pyspark {pyspark.__version__} is installed, but the Iceberg runtime {ICEBERG_RUNTIME} "
            f"needs Spark {PYSPARK_SERIES}x: run `pip install '{PYSPARK_REQUIREMENT}'`"
        )
    return pyspark


def catalog_conf(
    catalog_name: str,
    jdbc_url: str,
    warehouse: str,
    *,
    user: str | None = None,
    password: str | None = None,
) -> dict[str, str]:
    """Return the Spark settings that make icefield's catalog Spark's default Iceberg catalog.

    The Iceberg SQL extensions, session time zone UTC, ``catalog_name`` as the default catalog, and
    ``spark.sql.catalog.<catalog_name>.*``: Java's ``JdbcCatalog`` on ``jdbc_url`` (schema V1, the one
    pyiceberg's ``SqlCatalog`` shares), the ``warehouse`` URI, the catalog cache off, a 60 s lock wait
    for SQLite, and ``jdbc.user``/``jdbc.password`` when given. What :func:`spark_session` sets and
    what a cluster's application (``deploy/k8s/spark``) must set to share the catalog.
    """
    prefix = f"spark.sql.catalog.{catalog_name}"
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.extensions": CATALOG_EXTENSIONS,
        "spark.sql.defaultCatalog": catalog_name,
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.type": "jdbc",
        f"{prefix}.uri": jdbc_url,
        f"{prefix}.warehouse": warehouse,
        f"{prefix}.jdbc.schema-version": "V1",
        f"{prefix}.cache-enabled": "false",
    }
    if _sqlite_path(jdbc_url) is not None:
        settings[f"{prefix}.jdbc.busy_timeout"] = str(SQLITE_BUSY_TIMEOUT_MS)
    if user is not None:
        settings[f"{prefix}.jdbc.user"] = user
    if password is not None:
        settings[f"{prefix}.jdbc.password"] = password
    return settings


def spark_session(
    catalog_name: str,
    catalog_uri_jdbc: str,
    warehouse_uri: str | Path,
    *,
    app: str = "icefield",
    memory: str = "2g",
    user: str | None = None,
    password: str | None = None,
    master: str = "local[2]",
    conf: Mapping[str, str] | None = None,
    jars: Sequence[Path | str] | None = None,
) -> SparkSession:
    """Start a Spark session whose Iceberg catalog ``catalog_name`` is icefield's catalog.

    ``catalog_uri_jdbc`` is the catalog database as a JDBC URL (``jdbc:sqlite:/abs/catalog.db``,
    ``jdbc:postgresql://host:port/db``) or as icefield's SQLAlchemy URL, translated by
    :func:`jdbc_url_from_sqlalchemy` (which also supplies ``user``/``password`` unless given).
    ``catalog_name`` must be the pyiceberg catalog's name: it is the ``catalog_name`` column of the
    shared tables. ``warehouse_uri`` is the warehouse (``file:///...``; a plain path is turned
    into one) and is used only for tables Spark creates.

    The session: ``master`` (``local[2]``, or a standalone cluster's ``spark://127.0.0.1:7077``: see
    :mod:`stack.spark_cluster`), driver bound to 127.0.0.1 with the UI and the console
    progress bar off, ``spark.driver.memory=memory``, the Iceberg SQL extensions (``MERGE INTO``,
    ``CALL``), session time zone UTC, ``catalog_name`` as the default catalog, the catalog cache
    off (so Spark sees commits made by pyiceberg at once, not after 30 s), and jars from
    :func:`ensure_jars` (or ``jars``). ``conf`` entries are applied last and win.

    For a SQLite catalog the file is put in WAL mode first and Java's connections wait up to 60 s
    for a lock (``jdbc.busy_timeout``), as icefield's do.

    One session per process: raises :class:`StackError` if a SparkContext is already running
    (Spark would silently reuse it, with its jars and, once loaded, its catalogs). Raises
    :class:`SparkNotInstalled` naming the fix if pyspark, Maven or Java 17/21 is missing.
    Stop the session with ``spark.stop()``.
    """
    import_pyspark()
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    if SparkContext._active_spark_context is not None:
        raise StackError(
            "a SparkContext already runs in this process; stop it (spark.stop()) before starting a session "
            "on another catalog: Spark would reuse it and ignore the new jars and catalog settings"
        )
    jdbc_url, url_user, url_password = jdbc_url_from_sqlalchemy(catalog_uri_jdbc)
    user = user if user is not None else url_user
    password = password if password is not None else url_password
    warehouse = str(warehouse_uri)
    if "://" not in warehouse:
        warehouse = Path(warehouse).expanduser().absolute().as_uri()
    sqlite_db = _sqlite_path(jdbc_url)
    if sqlite_db is not None:
        if not sqlite_db.is_absolute():
            raise StackError(f"give Spark an absolute SQLite path, not {jdbc_url!r}: the JVM's directory may differ")
        enable_sqlite_wal(sqlite_db)
    jar_paths = [Path(j) for j in jars] if jars is not None else ensure_jars()
    _ensure_java()
    os.environ.setdefault("SPARK_LOCAL_IP", LOCALHOST)  # else Spark warns and picks the first NIC's address

    settings: dict[str, str] = {
        "spark.jars": ",".join(str(p) for p in jar_paths),
        "spark.driver.memory": memory,
        "spark.driver.host": LOCALHOST,
        "spark.driver.bindAddress": LOCALHOST,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        **catalog_conf(catalog_name, jdbc_url, warehouse, user=user, password=password),
    }
    settings.update(conf or {})

    builder = SparkSession.builder.master(master).appName(app)
    for key, value in settings.items():
        builder = builder.config(key, value)
    t0 = time.monotonic()
    spark = builder.getOrCreate()
    logger.info("Spark %s session %r started in %.1fs (catalog %s at %s)", spark.version, app,
                time.monotonic() - t0, catalog_name, jdbc_url.split("?", 1)[0])
    return spark


def spark_session_for_project(project: Project, **options: Any) -> SparkSession:
    """Start :func:`spark_session` on an icefield project's catalog (name, URL, warehouse).

    Secret references in the catalog URL are resolved the way icefield resolves them.
    ``options`` are :func:`spark_session`'s keyword arguments.
    """
    from icefield.config.secrets import resolve

    uri = resolve(project.catalog_uri(), where=f"{project.root / 'icefield.yaml'}: catalog.uri")
    return spark_session(project.config.catalog.name, uri, project.warehouse_uri(), **options)


# ------------------------------------------------------------------------------------ command


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stack.spark jars|check``: fetch the jars; or also start a throwaway session."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m stack.spark", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["jars", "check"], help="jars: fetch and list; check: also start Spark")
    args = parser.parse_args(argv)
    try:
        paths = ensure_jars()
        for path in paths:
            print(path)
        if args.command == "check":
            with tempfile.TemporaryDirectory(prefix="icefield-spark-check-") as tmp:
                t0 = time.monotonic()
                spark = spark_session("check", f"jdbc:sqlite:{tmp}/catalog.db", f"{tmp}/warehouse", memory="1g")
                started = time.monotonic() - t0
                try:
                    spark.sql("CREATE NAMESPACE IF NOT EXISTS check.ns")
                    spark.sql("CREATE TABLE check.ns.t (id BIGINT) USING iceberg")
                    spark.sql("INSERT INTO check.ns.t VALUES (1), (2)")
                    n = spark.sql("SELECT count(*) FROM check.ns.t").collect()[0][0]
                    print(f"spark {spark.version}, iceberg {ICEBERG_VERSION}: started in {started:.1f}s, {n} rows back")
                finally:
                    spark.stop()
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
