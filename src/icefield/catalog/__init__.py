"""The catalog: pyiceberg's ``SqlCatalog`` on SQLite (embedded default) or PostgreSQL.

The layout is the one Java's ``JdbcCatalog`` uses, so Spark and Trino can share it under the same
catalog name. icefield only configures pyiceberg here; it never re-implements a catalog.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icefield.config.secrets import resolve
from icefield.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from icefield.config import Project

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 60


def open_catalog(project: Project) -> Catalog:
    """Open the project's catalog, creating the SQLite file (in WAL mode) when it is the default.

    Raises :class:`ConfigError` for an unusable URI and :class:`MissingDependencyError` when the
    database driver is missing.
    """
    cfg = project.config.catalog
    uri = resolve(project.catalog_uri(), where=f"{project.root / 'icefield.yaml'}: catalog.uri")
    warehouse = project.warehouse_uri()
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    props = {k: resolve(v, where=f"catalog.properties.{k}") for k, v in cfg.properties.items()}
    return sql_catalog(cfg.name, uri, warehouse, **props)


def sql_catalog(name: str, uri: str, warehouse: str, **props: str) -> Catalog:
    """Build a pyiceberg ``SqlCatalog`` for ``uri`` (SQLAlchemy URL) and ``warehouse`` (URI)."""
    from pyiceberg.catalog.sql import SqlCatalog

    if uri.startswith("sqlite"):
        db_path = uri.split("///", 1)[1] if "///" in uri else ""
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            _enable_wal(Path(db_path))
    try:
        catalog = _sql_catalog(SqlCatalog, name, uri, warehouse, props)
    except ModuleNotFoundError as e:
        raise MissingDependencyError(
            f"the catalog URI needs the database driver {e.name!r}: run `pip install icefield[postgres]`"
        ) from e
    except Exception as e:  # SQLAlchemy raises many types for a bad URL or an unreachable server
        from icefield.config.secrets import redact

        raise ConfigError(f"cannot open the catalog at {redact(uri)!r}: {redact(str(e))}") from None
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


def _enable_wal(db_path: Path) -> None:
    import sqlite3
    import time

    con = sqlite3.connect(db_path, timeout=SQLITE_BUSY_TIMEOUT_S)
    try:
        if con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            return
        # WAL is persistent in the file: readers never block the single writer. Switching needs the
        # database to itself, and SQLite says "locked" at once (no busy wait) while another process that
        # opens it too holds it: try again for a while.
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
        while True:
            try:
                con.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise ConfigError(f"cannot switch the catalog database {db_path} to WAL mode: {e}") from None
                time.sleep(0.05)
    finally:
        con.close()


def _tune_sqlite_engine(catalog: Any) -> None:
    from sqlalchemy import event

    @event.listens_for(catalog.engine, "connect")
    def _on_connect(dbapi_con: Any, _record: Any) -> None:
        dbapi_con.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
