"""The catalog: pyiceberg's ``SqlCatalog`` on SQLite (embedded default) or PostgreSQL, its ``RestCatalog``
on an Iceberg REST catalog server (``catalog.type: rest``), or its ``HiveCatalog`` on a Hive Metastore
(``catalog.type: hive``).

The layout is the one Java's ``JdbcCatalog`` uses, so Spark and Trino can share it under the same
catalog name. icefield only configures pyiceberg here; it never re-implements a catalog.

A SQLite catalog is a file of the project's: a relative path in its URI is relative to the project
folder (never to the current directory), an in-memory database is refused (every run would forget the
tables it wrote), and so is a database that holds tables other than a catalog's (another application's
database would get the catalog's tables and be switched to WAL for good).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icefield.config.secrets import redact, register_secret, resolve
from icefield.errors import ConfigError, MissingDependencyError, TransientError, driver_install_hint

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from icefield.config import Project

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 60
CATALOG_TABLE_PREFIXES = ("iceberg_", "icefield_")
"""The tables a SQLite catalog database may hold: pyiceberg's (``iceberg_tables``,
``iceberg_namespace_properties``) and icefield's own."""

# A server that refused or dropped the connection, or could not be reached in time: a retry may succeed.
_UNREACHABLE = re.compile(
    r"connection refused|could not connect|timeout expired|timed out|no route to host|network is unreachable|"
    r"server closed the connection|connection reset|could not translate host name|name or service not known|"
    r"temporary failure in name resolution|the database system is (starting up|shutting down)|too many connections",
    re.IGNORECASE,
)


def open_catalog(project: Project) -> Catalog:
    """Open the project's catalog, creating the SQLite file (in WAL mode) when it is the default; a REST
    catalog is asked for its configuration (see :func:`_open_rest`), a Hive Metastore for its databases
    (see :func:`_open_hive`).

    Raises :class:`ConfigError` for an unusable URI or a refused login (token, credential, password), :class:`TransientError` when the
    catalog server cannot be reached, and :class:`MissingDependencyError` when the database driver is
    missing.
    """
    cfg = project.config.catalog
    where = f"{project.root / 'icefield.yaml'}: catalog"
    if cfg.type == "rest":
        return _open_rest(project)
    if cfg.type == "hive":
        return _open_hive(project)
    uri = sqlite_relative_to(resolve(project.catalog_uri(), where=f"{where}.uri", base_dir=project.root), project.root)
    warehouse = project.warehouse_uri()
    local = project.warehouse_path()
    if local is not None:
        try:
            local.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{where}: cannot create the warehouse folder {local}: {e.strerror}; fix 'warehouse'") from None
    props = {k: resolve(v, where=f"{where}.properties.{k}", base_dir=project.root) for k, v in cfg.properties.items()}
    props.update(storage_properties(project))
    return sql_catalog(cfg.name, uri, warehouse, **props)


FILE_IO_PREFIXES = ("s3.", "gcs.", "adls.", "hdfs.", "client.", "py-io-impl", "pyarrow.")
"""Catalog properties that configure the FileIO (how table files are reached), not the catalog itself."""


def file_io_properties(properties: dict[str, str]) -> dict[str, str]:
    """The FileIO properties of a catalog's ``properties`` (:data:`FILE_IO_PREFIXES`): what another catalog
    over the same tables (a scratch catalog, a restore target) needs to reach their files."""
    return {k: v for k, v in properties.items() if k.startswith(FILE_IO_PREFIXES)}


def storage_properties(project: Project) -> dict[str, str]:
    """pyiceberg's FileIO properties (``s3.*``) for the project's ``storage`` section, secrets resolved
    (and registered, so nothing shows them). Empty when the section is empty."""
    st = project.config.storage
    where = f"{project.root / 'icefield.yaml'}: storage"
    out: dict[str, str] = {}
    for key, prop in (
        ("endpoint", "s3.endpoint"),
        ("region", "s3.region"),
        ("access_key", "s3.access-key-id"),
        ("secret_key", "s3.secret-access-key"),
        ("session_token", "s3.session-token"),
    ):
        value = getattr(st, key)
        if value is not None:
            resolved = resolve(value, where=f"{where}.{key}", base_dir=project.root)
            if key in ("secret_key", "session_token"):
                register_secret(resolved)
            out[prop] = resolved
    if st.path_style is not None:
        out["s3.path-style-access"] = "true" if st.path_style else "false"
    return out


def _server_properties(project: Project) -> tuple[str, dict[str, str]]:
    """The URI (no trailing ``/``) and the pyiceberg properties of a catalog server (REST or Hive): the
    catalog's ``properties``, the storage settings, ``uri`` and ``warehouse`` when given, secrets resolved."""
    cfg = project.config.catalog
    where = f"{project.root / 'icefield.yaml'}: catalog"
    assert cfg.uri is not None  # the config model requires it for a catalog server
    uri = resolve(cfg.uri, where=f"{where}.uri", base_dir=project.root).rstrip("/")
    props = {k: resolve(v, where=f"{where}.properties.{k}", base_dir=project.root) for k, v in cfg.properties.items()}
    props.update(storage_properties(project))
    props["uri"] = uri
    if cfg.warehouse is not None:
        props["warehouse"] = resolve(cfg.warehouse, where=f"{where}.warehouse", base_dir=project.root)
    return uri, props


def server_properties(project: Project) -> dict[str, str]:
    """The properties of the project's catalog server (``catalog.type`` rest or hive), secrets resolved: the
    catalog's ``properties``, the storage settings (``s3.*``), ``uri``, ``warehouse`` when given and, for
    REST, the login (``token``, or ``credential`` with ``oauth2-server-uri``). pyiceberg's names, which are
    also the names Iceberg's Java catalogs take (but ``s3.region``: Java's ``client.region``)."""
    cfg = project.config.catalog
    where = f"{project.root / 'icefield.yaml'}: catalog"
    uri, props = _server_properties(project)
    if cfg.type != "rest":
        return props
    # Without catalog.warehouse a REST server chooses each table's location (the project's warehouse key is
    # not sent: a REST server takes a warehouse name or its own location, never a client's folder).
    if cfg.token is not None:
        props["token"] = resolve(cfg.token, where=f"{where}.token", base_dir=project.root)
    if cfg.credential is not None:
        props["credential"] = resolve(cfg.credential, where=f"{where}.credential", base_dir=project.root)
        # The spec's token endpoint unless the properties name another (an external identity provider);
        # pyiceberg's implicit fallback to it is deprecated and warns.
        props.setdefault("oauth2-server-uri", f"{uri}/v1/oauth/tokens")
    return props


def _with_leases(project: Project, catalog: Catalog) -> Catalog:
    """``catalog`` (a server that holds no database of icefield's) with the engine of its lease database
    attached: ``catalog.leases``, by default SQLite under the project's state folder."""
    cfg = project.config.catalog
    leases_uri = sqlite_relative_to(
        resolve(cfg.leases, where=f"{project.root / 'icefield.yaml'}: catalog.leases", base_dir=project.root)
        if cfg.leases
        else f"sqlite:///{(project.state_dir / 'leases.db').as_posix()}",
        project.root,
    )
    catalog.lease_engine = _lease_engine(leases_uri)  # type: ignore[attr-defined]
    return catalog


def _open_rest(project: Project) -> Catalog:
    """Open the project's Iceberg REST catalog (pyiceberg's ``RestCatalog``) and attach the engine of its
    lease database (see :mod:`icefield.catalog.leases`): the server has no database of icefield's.

    pyiceberg asks the server for its configuration (``GET /v1/config``, after the OAuth2 exchange for a
    ``credential``) when the catalog is built, so an unreachable server or a refused login shows here."""
    from pyiceberg.catalog.rest import RestCatalog

    cfg = project.config.catalog
    props = server_properties(project)
    uri = props["uri"]
    try:
        catalog = RestCatalog(cfg.name, **props)
    except Exception as e:
        # Not chained: pyiceberg's and requests' messages may carry the token or the credential.
        raise _rest_error(uri, e) from None
    return _with_leases(project, catalog)


def _open_hive(project: Project) -> Catalog:
    """Open the project's Hive Metastore (pyiceberg's ``HiveCatalog``, over Thrift) and attach the engine of
    its lease database, as for a REST catalog: the metastore holds no table of icefield's.

    pyiceberg connects on the first call only, so one cheap call (``get_all_databases``) is made here:
    an unreachable metastore shows as :class:`TransientError` when the catalog is opened, not in the
    middle of a run. Tables go under their database's location, which the metastore gives every
    database it creates (its own warehouse folder); ``catalog.warehouse`` is pyiceberg's fallback for a
    database without one."""
    try:
        from pyiceberg.catalog.hive import HiveCatalog
    except ModuleNotFoundError as e:
        raise MissingDependencyError(
            f"catalog.type: hive needs the Thrift library {e.name!r}: run `pip install 'icefield[hive]'`"
        ) from e

    uri, props = _server_properties(project)
    try:
        catalog = HiveCatalog(project.config.catalog.name, **props)
        catalog.list_namespaces()
    except Exception as e:
        raise _hive_error(uri, e) from None
    return _with_leases(project, catalog)


def _hive_error(uri: str, e: Exception) -> Exception:
    """The icefield error for a Hive Metastore that cannot be opened: :class:`TransientError` when it
    cannot be reached or drops the connection (a retry may succeed), :class:`ConfigError` when it answers
    with a refusal (a retry cannot help)."""
    from thrift.transport.TTransport import TTransportException

    shown = redact(uri)
    detail = redact(str(e).strip())[:300]
    if isinstance(e, TTransportException | OSError):
        return TransientError(
            f"cannot reach the Hive Metastore at {shown!r} ({detail or type(e).__name__}); the metastore is "
            "unreachable, retry later, or fix catalog.uri"
        )
    return ConfigError(
        f"the Hive Metastore at {shown!r} refused the request: {type(e).__name__}: {detail}; fix catalog.uri "
        "(a Hive Metastore 2 or 3: Hive 4's metastore lacks the Thrift calls pyiceberg makes)"
    )


def _rest_error(uri: str, e: Exception) -> Exception:
    """The icefield error for a REST catalog that cannot be opened: :class:`TransientError` when the server
    cannot be reached or fails (5xx; a retry may succeed), :class:`ConfigError` for a refused login or any
    other refusal (a retry cannot help)."""
    import requests
    from pyiceberg.exceptions import (
        AuthorizationExpiredError,
        BadRequestError,
        ForbiddenError,
        OAuthError,
        ServerError,
        ServiceUnavailableError,
        UnauthorizedError,
    )

    shown = redact(uri)
    detail = redact(str(e).strip())[:300]
    if isinstance(e, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return TransientError(
            f"cannot reach the REST catalog at {shown!r} ({type(e).__name__}); the catalog server is unreachable, "
            "retry later, or fix catalog.uri"
        )
    if isinstance(e, ServerError | ServiceUnavailableError):
        return TransientError(f"the REST catalog at {shown!r} failed: {detail}; retry later")
    if isinstance(e, UnauthorizedError | ForbiddenError | OAuthError | AuthorizationExpiredError):
        return ConfigError(
            f"the REST catalog at {shown!r} refused the login: {detail}; fix catalog.token or catalog.credential"
        )
    if isinstance(e, BadRequestError):
        return ConfigError(f"the REST catalog at {shown!r} refused the request: {detail}; fix catalog.uri and catalog.warehouse")
    return ConfigError(f"cannot open the REST catalog at {shown!r}: {type(e).__name__}: {detail}; fix catalog.uri")


def _lease_engine(uri: str) -> Any:
    """The SQLAlchemy engine of a REST or Hive catalog's lease database (created on first use when SQLite)."""
    from sqlalchemy import create_engine

    if uri.startswith("sqlite"):
        db = _sqlite_database(uri)
        if db is None:
            raise ConfigError(f"catalog.leases {_shown(uri)!r} is an in-memory database: leases must outlive a run; give a file")
        Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        return create_engine(uri, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S} if uri.startswith("sqlite") else {})
    except ModuleNotFoundError as e:
        raise MissingDependencyError(f"catalog.leases needs the database driver {e.name!r}: run `{driver_install_hint(e.name)}`") from e
    except Exception as e:
        raise ConfigError(f"catalog.leases {_shown(uri)!r} is not a usable database URL: {redact(str(e))}; fix catalog.leases") from None


def list_tables(catalog: Catalog, namespaces: Callable[[tuple[str, ...]], bool] | None = None) -> list[tuple[str, ...]]:
    """The identifiers of the catalog's tables, sorted; only those of the namespaces ``namespaces``
    accepts when it is given (the others are not listed)."""
    out: list[tuple[str, ...]] = []
    for ns in catalog.list_namespaces():
        if namespaces is None or namespaces(ns):
            out.extend(catalog.list_tables(ns))
    return sorted(out)


def sqlite_relative_to(uri: str, base: Path) -> str:
    """``uri`` with the path of a SQLite database made absolute against ``base`` when it is relative; other
    URIs as they are. Raises :class:`ConfigError` for an in-memory SQLite database."""
    if not uri.startswith("sqlite"):
        return uri
    db = _sqlite_database(uri)
    if db is None:
        raise _in_memory(uri)
    path = Path(db).expanduser()
    if path.is_absolute():
        return uri
    from sqlalchemy.engine import make_url

    return make_url(uri).set(database=str(base / path)).render_as_string(hide_password=False)


def sqlite_path(uri: str, base: Path) -> Path | None:
    """The database file of a SQLite catalog URI (relative to ``base`` when relative), or None when ``uri``
    is not a SQLite file URI."""
    if not uri.startswith("sqlite"):
        return None
    try:
        db = _sqlite_database(uri)
    except ConfigError:
        return None
    if db is None:
        return None
    path = Path(db).expanduser()
    return path if path.is_absolute() else base / path


def _shown(uri: str) -> str:
    """``uri`` as it may be shown: without its password, and without any secret resolved so far."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return redact(make_url(uri).render_as_string(hide_password=True))
    except (ArgumentError, ValueError):
        return redact(uri)


def _in_memory(uri: str) -> ConfigError:
    return ConfigError(
        f"catalog.uri {_shown(uri)!r} is an in-memory SQLite database: every run would forget the tables it "
        "wrote and leave their files behind; give a file, e.g. sqlite:///.icefield/catalog.db (relative to "
        "the project), or leave catalog.uri unset"
    )


def _sqlite_database(uri: str) -> str | None:
    """The database file of a SQLite URL, or None when the database is in memory."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except ArgumentError as e:
        raise ConfigError(f"catalog.uri {_shown(uri)!r} is not a database URL: {e}; e.g. sqlite:///.icefield/catalog.db") from None
    db = url.database or ""
    if db in ("", ":memory:") or "mode=memory" in db or url.query.get("mode") == "memory":
        return None
    if db.startswith("file:"):  # a SQLite URI filename (uri=true)
        db = db.removeprefix("file:").split("?", 1)[0]
    return db


def sql_catalog(name: str, uri: str, warehouse: str, **props: str) -> Catalog:
    """Build a pyiceberg ``SqlCatalog`` for ``uri`` (SQLAlchemy URL) and ``warehouse`` (URI).

    A SQLite database must be a file (absolute path) that is new or holds only a catalog's tables."""
    from pyiceberg.catalog.sql import SqlCatalog

    if uri.startswith("sqlite"):
        db = _sqlite_database(uri)
        if db is None:
            raise _in_memory(uri)
        db_path = Path(db).expanduser()
        _check_sqlite_file(db_path, uri)
        _enable_wal(db_path, uri)
    try:
        catalog = _sql_catalog(SqlCatalog, name, uri, warehouse, props)
    except ModuleNotFoundError as e:
        hint = "pip install 'icefield[postgres]'" if (e.name or "").startswith("psycopg2") else driver_install_hint(e.name)
        raise MissingDependencyError(f"the catalog URI needs the database driver {e.name!r}: run `{hint}`") from e
    except Exception as e:  # SQLAlchemy raises many types for a bad URL or an unreachable server
        # Not chained: the driver's exception holds the URL, password included.
        raise _open_error(uri, e) from None
    if uri.startswith("sqlite"):
        _tune_sqlite_engine(catalog)
    return catalog


def _sql_catalog(cls: Any, name: str, uri: str, warehouse: str, props: dict[str, str]) -> Catalog:
    """``cls(name, ...)``; when several processes open a new catalog database at once, pyiceberg's table
    creation of the losers fails with "already exists": the tables are there then, so open it again."""
    attempt = 1
    while True:
        try:
            return cls(name, uri=uri, warehouse=warehouse, **props)  # type: ignore[no-any-return]
        except Exception as e:
            if attempt == 3 or "already exists" not in str(e):
                raise
            log.debug("catalog tables were created by another process meanwhile: %s", e)
            attempt += 1


def _open_error(uri: str, e: Exception) -> Exception:
    """The icefield error for a catalog that cannot be opened: :class:`TransientError` when its server cannot
    be reached (a retry may succeed), :class:`ConfigError` otherwise (a refused login, a missing database,
    a bad URL: a retry cannot help)."""
    from sqlalchemy.exc import OperationalError

    detail = str(getattr(e, "orig", None) or e)
    message = f"cannot open the catalog at {_shown(uri)!r}: {redact(detail.strip())}"
    if isinstance(e, OperationalError) and not uri.startswith("sqlite") and _UNREACHABLE.search(detail):
        return TransientError(f"{message}; the catalog server is unreachable, retry later")
    return ConfigError(f"{message}; fix catalog.uri")


def _check_sqlite_file(db_path: Path, uri: str) -> None:
    """Refuse a SQLite catalog path that is a folder, a file that is no SQLite database, or the database of
    another application (tables other than a catalog's). Opens it read-only: nothing is changed."""
    import sqlite3

    shown = redact(str(db_path))
    if db_path.is_dir():
        raise ConfigError(f"catalog.uri {_shown(uri)!r}: {shown} is a folder; give a database file, e.g. {shown}/catalog.db")
    if not db_path.exists() or db_path.stat().st_size == 0:
        return
    try:
        con = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise ConfigError(
            f"catalog.uri {_shown(uri)!r}: {shown} is not a SQLite database ({e}); point catalog.uri at a new "
            "file or at an icefield catalog"
        ) from None
    foreign = sorted(n for n in names if not n.startswith(CATALOG_TABLE_PREFIXES) and not n.startswith("sqlite_"))
    if foreign:
        shown_tables = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(
            f"catalog.uri {_shown(uri)!r}: {shown} holds tables that are not a catalog's ({shown_tables}): it is "
            "another application's database, which icefield would change; point catalog.uri at a new file, "
            "e.g. sqlite:///.icefield/catalog.db"
        )


def _enable_wal(db_path: Path, uri: str) -> None:
    import sqlite3
    import time

    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(db_path, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            # WAL is persistent in the file: readers never block the single writer. Switching needs the
            # database to itself, and SQLite says "locked" at once (no busy wait) while another process
            # that opens it too holds it: try again for a while.
            deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
            while True:
                try:
                    con.execute("PRAGMA journal_mode=WAL")
                    return
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            con.close()
    except (OSError, sqlite3.Error) as e:
        raise ConfigError(f"cannot open the catalog at {_shown(uri)!r}: {redact(str(e))}; fix catalog.uri") from None


def _tune_sqlite_engine(catalog: Any) -> None:
    from sqlalchemy import event

    @event.listens_for(catalog.engine, "connect")
    def _on_connect(dbapi_con: Any, _record: Any) -> None:
        dbapi_con.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
