"""The Spark session the ``spark`` engine writes with: Spark 4.1, the Iceberg runtime, and an Iceberg catalog
that is icefield's own catalog.

The session's Iceberg ``SparkCatalog`` is Java's ``JdbcCatalog`` on the same database as icefield's SQL
catalog (SQLite or PostgreSQL), under the same catalog name and with the same warehouse: a table committed by
one side is the table the other loads (``docs/architecture.md``, section "Engines"). On a catalog server
(``catalog.type`` rest or hive) it is Iceberg's ``RESTCatalog`` or ``HiveCatalog`` on the same server, with the
same login. The catalog cache is off, so Spark sees icefield's commits at once.

The jars (the Iceberg Spark runtime and the JDBC drivers) are not Python packages: they are found in the
folder ``spark.jars_dir`` of ``icefield.yaml`` or in ``${ICEFIELD_CACHE:-${XDG_CACHE_HOME:-~/.cache}/icefield}/jars``
(``python -m stack.spark jars`` fetches them there with Maven), or listed one by one in ``spark.jars``.
pyspark is the ``spark`` extra and imported only here, when a session is started.

A process has one SparkContext: a session already running on the same catalog is reused (a test's, or
the previous pipeline's); one on another catalog is refused.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from icefield.errors import ConfigError

if TYPE_CHECKING:
    from icefield.config import Project

log = logging.getLogger(__name__)

PYSPARK_SERIES = "4.1."
"""The only pyspark minor the Iceberg runtime below works with (it fails on Spark 4.2+)."""
ICEBERG_VERSION = "1.11.0"
ICEBERG_RUNTIME = f"org.apache.iceberg:iceberg-spark-runtime-4.1_2.13:{ICEBERG_VERSION}"
SQLITE_JDBC = "org.xerial:sqlite-jdbc:3.53.0.0"  # the version Iceberg 1.11 itself tests with
POSTGRES_JDBC = "org.postgresql:postgresql:42.7.14"
AWS_BUNDLE = f"org.apache.iceberg:iceberg-aws-bundle:{ICEBERG_VERSION}"
"""Iceberg's S3FileIO and the AWS SDK it needs: on ``spark.jars`` when the warehouse is on an object store."""
SPARK_KAFKA = (
    "org.apache.spark:spark-sql-kafka-0-10_2.13:4.1.1",
    "org.apache.spark:spark-token-provider-kafka-0-10_2.13:4.1.1",
    "org.apache.kafka:kafka-clients:3.9.1",
    "org.apache.commons:commons-pool2:2.12.1",
)
"""Spark's Kafka source and what it needs (the 4.1 series' newest on Maven Central): the ``kafka`` source read
by Spark itself. On ``spark.jars`` when they are in the jars folder."""
ARTIFACTS: tuple[str, ...] = (ICEBERG_RUNTIME, SQLITE_JDBC, POSTGRES_JDBC, AWS_BUNDLE, *SPARK_KAFKA)
"""Maven coordinates (group:artifact:version) of the jars a session puts on ``spark.jars`` (Spark's Kafka
source when present)."""
S3_SCHEMES = ("s3://", "s3a://", "s3n://")
CATALOG_EXTENSIONS = "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"
SQLITE_BUSY_TIMEOUT_MS = 60_000
"""How long a SQLite catalog connection waits for a lock (icefield's own connections wait as long)."""
CACHE_ENV = "ICEFIELD_CACHE"
JARS_HINT = "python -m stack.spark jars"

_lock = threading.Lock()


def cache_jars_dir() -> Path:
    """``$ICEFIELD_CACHE/jars``, else ``$XDG_CACHE_HOME/icefield/jars``, else ``~/.cache/icefield/jars``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser().absolute() / "jars"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "icefield" / "jars").absolute()


def jar_name(coordinate: str) -> str:
    """The file name Maven gives the jar of ``group:artifact:version``."""
    _group, artifact, version = coordinate.split(":")
    return f"{artifact}-{version}.jar"


def find_jars(folder: Path | None = None, s3: bool = False) -> list[Path]:
    """The jars of :data:`ARTIFACTS` in ``folder`` (default :func:`cache_jars_dir`; Spark's Kafka source when
    it is there); raises :class:`ConfigError` naming the missing ones and the command that fetches them.
    ``s3`` is accepted for callers that know the warehouse is on S3 (the AWS bundle is always included)."""
    where = folder if folder is not None else cache_jars_dir()
    # The AWS bundle always: a process keeps its first session's JVM, whose Iceberg runtime would not find
    # S3FileIO in the jars of a later session.
    del s3
    paths = [where / jar_name(c) for c in ARTIFACTS if c not in SPARK_KAFKA]
    missing = [p.name for p in paths if not p.is_file() or p.stat().st_size == 0]
    kafka = [where / jar_name(c) for c in SPARK_KAFKA]
    if all(p.is_file() and p.stat().st_size for p in kafka):
        paths += kafka
    if missing:
        raise ConfigError(
            f"engine spark: the jars {', '.join(missing)} are not in {where}: run `{JARS_HINT}` (it fetches them "
            "into the icefield cache), or set spark.jars_dir / spark.jars in icefield.yaml"
        )
    return paths


def jdbc_url_from_sqlalchemy(url: str) -> tuple[str, str | None, str | None]:
    """Translate a SQLAlchemy catalog URL to ``(jdbc_url, user, password)`` for Java's JdbcCatalog.

    * ``sqlite:///rel/catalog.db`` / ``sqlite:////abs/catalog.db`` (any ``sqlite+driver``) ->
      ``jdbc:sqlite:/abs/catalog.db`` (a relative path is made absolute against the current
      directory; query parameters are dropped). An in-memory database cannot be shared: refused.
    * ``postgresql[+driver]://user:pass@host:port/db?sslmode=...`` ->
      ``jdbc:postgresql://host:port/db?sslmode=...`` with the user and password returned apart
      (decoded), never inside the URL.
    * A URL that already starts with ``jdbc:`` is returned unchanged with no user or password.

    Raises :class:`ConfigError` for other databases or an unparsable URL (the password is never
    repeated in the message).
    """
    if url.startswith("jdbc:"):
        return url, None, None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"not a SQLAlchemy URL: {url.split('://', 1)[0]}://...") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            raise ConfigError("an in-memory SQLite catalog cannot be shared with Spark: give the database a file")
        if database.startswith("file:"):  # sqlite:///file:path?uri=true
            database = database.removeprefix("file:").split("?", 1)[0]
        path = Path(database).expanduser().absolute()
        return f"jdbc:sqlite:{path.as_posix()}", None, None
    if backend == "postgresql":
        host = parsed.host or "127.0.0.1"
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        hostport = f"{host}:{parsed.port}" if parsed.port else host
        jdbc = f"jdbc:postgresql://{hostport}/{quote(parsed.database or '', safe='')}"
        if parsed.query:
            pairs = []
            for key, value in parsed.query.items():
                for item in (value,) if isinstance(value, str) else value:
                    pairs.append(f"{quote(key, safe='')}={quote(item, safe='')}")
            jdbc += "?" + "&".join(pairs)
        password = parsed.password
        return jdbc, parsed.username, str(password) if password is not None else None
    raise ConfigError(
        f"cannot give Spark a {backend!r} catalog: the spark engine shares SQLite and PostgreSQL catalogs "
        "(jdbc:sqlite:, jdbc:postgresql:); use engine: local for this project"
    )


def catalog_settings(catalog_name: str, catalog_uri: str, warehouse_uri: str, storage: dict[str, str] | None = None) -> dict[str, str]:
    """The Spark settings that make ``catalog_name`` an Iceberg catalog on icefield's catalog database
    (``catalog_uri``, SQLAlchemy or JDBC) and warehouse: the properties both sides share. An object-store
    warehouse (``s3://``) reads and writes through Iceberg's ``S3FileIO`` with ``storage``, pyiceberg's
    ``s3.*`` properties of the project (:func:`icefield.catalog.storage_properties`), under Java's names."""
    jdbc_url, user, password = jdbc_url_from_sqlalchemy(catalog_uri)
    warehouse = str(warehouse_uri)
    if "://" not in warehouse:
        warehouse = Path(warehouse).expanduser().absolute().as_uri()
    prefix = f"spark.sql.catalog.{catalog_name}"
    settings = {
        "spark.sql.extensions": CATALOG_EXTENSIONS,
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.type": "jdbc",
        f"{prefix}.uri": jdbc_url,
        f"{prefix}.warehouse": warehouse,
        f"{prefix}.jdbc.schema-version": "V1",
        f"{prefix}.cache-enabled": "false",
    }
    if jdbc_url.startswith("jdbc:sqlite:"):
        settings[f"{prefix}.jdbc.busy_timeout"] = str(SQLITE_BUSY_TIMEOUT_MS)
    if warehouse.startswith(S3_SCHEMES):
        settings.update(_s3_settings(prefix, storage or {}))
    if user is not None:
        settings[f"{prefix}.jdbc.user"] = user
    if password is not None:
        settings[f"{prefix}.jdbc.password"] = password
    return settings


def _s3_settings(prefix: str, props: dict[str, str]) -> dict[str, str]:
    """Iceberg's ``S3FileIO`` for the catalog ``prefix`` with pyiceberg's ``s3.*`` properties ``props``."""
    settings = {f"{prefix}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO"}
    # pyiceberg's s3.region is the AWS SDK's client.region in Java; the other keys have the same names.
    settings[f"{prefix}.client.region"] = props.get("s3.region", "us-east-1")
    for key in ("s3.endpoint", "s3.access-key-id", "s3.secret-access-key", "s3.session-token", "s3.path-style-access"):
        if key in props:
            settings[f"{prefix}.{key}"] = props[key]
    return settings


SERVER_KEYS = ("uri", "warehouse", "token", "credential", "oauth2-server-uri", "scope")
"""The properties of a catalog server (pyiceberg's, :func:`icefield.catalog.server_properties`) that Iceberg's
Java REST and Hive catalogs take under the same names."""


def server_catalog_settings(catalog_name: str, kind: str, props: dict[str, str]) -> dict[str, str]:
    """The Spark settings that make ``catalog_name`` an Iceberg catalog on icefield's catalog server: ``kind``
    ``rest`` (Iceberg's ``RESTCatalog``: ``uri``, ``warehouse``, the ``token`` or the OAuth2 ``credential``)
    or ``hive`` (``HiveCatalog``, a metastore at ``uri``); ``props`` are the project's catalog properties
    (:func:`icefield.catalog.server_properties`). Tables on an object store (``s3.*`` properties, or an
    ``s3://`` warehouse) are read and written through ``S3FileIO``."""
    prefix = f"spark.sql.catalog.{catalog_name}"
    settings = {
        "spark.sql.extensions": CATALOG_EXTENSIONS,
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.type": kind,
        f"{prefix}.cache-enabled": "false",
    }
    settings.update({f"{prefix}.{k}": props[k] for k in SERVER_KEYS if k in props})
    if any(k.startswith("s3.") for k in props) or props.get("warehouse", "").startswith(S3_SCHEMES):
        settings.update(_s3_settings(prefix, props))
    return settings


def import_pyspark() -> Any:
    """Import pyspark and check it is the 4.1 series; raise :class:`ConfigError` naming the fix."""
    try:
        import pyspark
    except ImportError as e:
        raise ConfigError(f"engine spark needs pyspark 4.1 ({e}): run `pip install 'icefield[spark]'`") from None
    if not pyspark.__version__.startswith(PYSPARK_SERIES):
        raise ConfigError(
            f"pyspark {pyspark.__version__} is installed, but the Iceberg runtime {ICEBERG_RUNTIME} needs Spark "
            f"{PYSPARK_SERIES}x: run `pip install 'icefield[spark]'`"
        )
    return pyspark


def project_session(project: Project) -> Any:
    """The Spark session of ``project``'s ``spark`` settings, on its catalog: the running one when it is on
    the same catalog, else a new one (``spark.master``, ``spark.memory``, jars, then ``spark.conf``, which
    wins). Raises :class:`ConfigError` when a session on another catalog runs in this process."""
    from icefield.catalog import sqlite_relative_to, storage_properties
    from icefield.config.secrets import resolve

    cfg = project.config.spark
    name = project.config.catalog.name
    if project.config.catalog.type != "sql":
        from icefield.catalog import server_properties

        shared = server_catalog_settings(name, project.config.catalog.type, server_properties(project))
        s3 = f"spark.sql.catalog.{name}.io-impl" in shared
    else:
        where = f"{project.root / 'icefield.yaml'}: catalog.uri"
        uri = sqlite_relative_to(resolve(project.catalog_uri(), where=where, base_dir=project.root), project.root)
        warehouse = project.warehouse_uri()
        s3 = str(warehouse).startswith(S3_SCHEMES)
        shared = catalog_settings(name, uri, warehouse, storage_properties(project) if s3 else None)
    import_pyspark()
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    with _lock:
        if SparkContext._active_spark_context is not None:
            spark = SparkSession.builder.getOrCreate()
            key = f"spark.sql.catalog.{name}.uri"
            running = spark.conf.get(key, None)
            if running != shared[key]:
                raise ConfigError(
                    f"a Spark session on another catalog ({key}={running!r}) runs in this process; the spark engine "
                    f"needs one on {shared[key]!r}: stop it first (spark.stop())"
                )
            return spark
        if cfg.jars:
            jars = [(project.root / j).absolute() for j in cfg.jars]
        else:
            jars = find_jars((project.root / cfg.jars_dir).absolute() if cfg.jars_dir else None, s3=s3)
        settings = {
            "spark.jars": ",".join(str(p) for p in jars),
            "spark.driver.memory": cfg.memory,
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.session.timeZone": "UTC",
            **shared,
            **cfg.conf,
        }
        # Python code Spark runs (a source's decoder, in its Python workers) runs on this interpreter, with
        # icefield, unless PYSPARK_PYTHON names another (pyspark reads only the variable, when it starts).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if cfg.master.startswith("local"):
            settings.setdefault("spark.driver.host", "127.0.0.1")
            settings.setdefault("spark.driver.bindAddress", "127.0.0.1")
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = SparkSession.builder.master(cfg.master).appName(f"icefield-{project.config.name}")
        for key, value in settings.items():
            builder = builder.config(key, value)
        started = time.monotonic()
        spark = builder.getOrCreate()
        log.info("Spark %s session on %s started in %.1fs (catalog %s)", spark.version, cfg.master, time.monotonic() - started, name)
        return spark
