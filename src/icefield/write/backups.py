"""Catalog backup, restore, verification and recovery of a lost table.

An Iceberg catalog holds little: for every table the location of its current metadata file, and the
namespaces with their properties. Everything else (schemas, snapshots, icefield's source positions in
table properties and snapshot summaries) is in the table's own files on the object store. So a backup of
the catalog is a small JSON document, and a restore registers each table at its metadata location: the
tables come back with their history and every pipeline resumes where the backup saw it.

- :func:`backup_catalog` writes one new file per backup (``icefield-catalog-<UTC time>.json``, never over
  an earlier one) into a local folder or an object-store prefix (``s3://bucket/backups``, reached with the
  catalog's storage properties) holding a format version, the time, the catalog's name and warehouse, the namespaces and
  each table's metadata location, location, properties, current snapshot and snapshot ids. It is
  *consistent*: every location in it was current at one instant. A SQL catalog's table rows are read in
  one statement (the database gives them as of one instant) and the metadata files they name never
  change. Other catalogs are read table by table, then every table's metadata location (and the list of
  tables) is read again, and the whole read is done again when something moved: locations never come back
  once left, so when the second read equals the first, every location was current at one instant between.
- :func:`restore_catalog` registers the backup's namespaces and tables into a catalog (refusing one that
  holds tables unless ``force``).
- :func:`verify_backup` compares the tables of a catalog restored from a backup with the live ones.
- :func:`register_table` recovers one table the catalog lost from the newest metadata file under its
  location.

A backup points at metadata files; it restores a table only while they and the files they reach exist.
Snapshot expiry and orphan cleanup delete what no current snapshot reaches, so keep backups younger than
the expiry age (``icefield catalog verify`` tells).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icefield.catalog import list_tables
from icefield.errors import ConfigError, IcefieldError, TransientError
from icefield.iceberg.storage import list_files
from icefield.iceberg.tables import ensure_namespace, load_table, reaching_storage, table_identifier

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

FORMAT = "icefield-catalog-backup"
FORMAT_VERSION = 1
BACKUP_PREFIX = "icefield-catalog-"
MAX_ROUNDS = 20
"""Reads of the whole catalog a backup makes before giving up on catalog that never holds still."""

_METADATA_FILE = re.compile(r"^(?:(\d+)-.+|v(\d+))(?:\.gz)?\.metadata\.json$")


# ---------------------------------------------------------------------------------------------- backup


@dataclass
class BackupResult:
    """A written backup: its file, when it was taken, what it holds and how many reads it took."""

    path: str
    created_at: str
    tables: int
    namespaces: int
    rounds: int


def backup_catalog(catalog: Catalog, dest: str | Path, *, warehouse: str | None = None) -> BackupResult:
    """Write a consistent backup of ``catalog`` (see the module doc) as a new file in the folder or
    object-store prefix ``dest`` (a folder is created if missing). Raises :class:`ConfigError` for a
    destination that cannot be written, :class:`TransientError` when the catalog kept changing for
    :data:`MAX_ROUNDS` reads or the object store cannot be reached."""
    remote = _remote(dest)
    folder = None if remote else _local_folder(dest, "backup destination")
    tables, rounds = _consistent_tables(catalog)
    namespaces = _namespaces(catalog)
    now = dt.datetime.now(dt.UTC)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "catalog": {"name": catalog.name, "warehouse": warehouse},
        "namespaces": namespaces,
        "tables": tables,
    }
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    path: str | Path
    if remote is not None:
        path = _write_new_remote(_file_io(catalog.properties, remote), remote, now, text)
    else:
        assert folder is not None
        path = _write_new(folder, now, text)
    log.info("backed up %d tables and %d namespaces of catalog %s to %s (%d reads)", len(tables), len(namespaces), catalog.name, path, rounds)
    return BackupResult(path=str(path), created_at=doc["created_at"], tables=len(tables), namespaces=len(namespaces), rounds=rounds)  # type: ignore[arg-type]


def _remote(dest: str | Path) -> str | None:
    """``dest`` without a trailing ``/`` when it is an object-store location (``s3://...``), else None."""
    text = str(dest)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text) and not text.startswith("file://"):
        return text.rstrip("/")
    return None


def _file_io(properties: dict[str, str], location: str) -> Any:
    """The FileIO (pyiceberg's, from the catalog's storage properties) that reaches ``location``."""
    from pyiceberg.io import load_file_io

    return load_file_io(dict(properties), location)


def _local_folder(dest: str | Path, what: str) -> Path:
    text = str(dest)
    if text.startswith("file://"):
        from urllib.parse import unquote, urlparse

        text = unquote(urlparse(text).path)
    return Path(text).expanduser()


def _backup_name(now: dt.datetime, n: int) -> str:
    return f"{BACKUP_PREFIX}{now.strftime('%Y%m%dT%H%M%S.%fZ')}{'' if n == 0 else f'-{n}'}.json"


def _write_new_remote(io: Any, prefix: str, now: dt.datetime, text: str) -> str:
    """Write ``text`` as a new backup object under ``prefix``, never over an existing one (an object is
    written whole or not at all, so no temporary name is needed)."""
    data = text.encode("utf-8")
    try:
        with reaching_storage(f"writing a backup under {prefix}"):
            for n in range(100):
                path = f"{prefix}/{_backup_name(now, n)}"
                try:
                    with io.new_output(path).create(overwrite=False) as f:
                        f.write(data)
                    return path
                except FileExistsError:
                    continue
    except (TransientError, ConfigError):
        raise
    except OSError as e:
        raise ConfigError(f"backup destination {prefix}: cannot write a backup there ({e}); check the storage credentials and the bucket") from e
    raise ConfigError(f"backup destination {prefix}: 100 backups named {_backup_name(now, 0)[:-5]}*.json exist already")


def _write_new(folder: Path, now: dt.datetime, text: str) -> Path:
    """Write ``text`` as a new backup file in ``folder``, atomically and never over an existing file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".icefield-backup-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            for n in range(100):
                path = folder / _backup_name(now, n)
                try:
                    os.link(tmp, path)  # fails when the name exists: an earlier backup is never replaced
                    return path
                except FileExistsError:
                    continue
            raise ConfigError(f"backup destination {folder}: 100 backups named {_backup_name(now, 0)[:-5]}*.json exist already")
        finally:
            os.unlink(tmp)
    except OSError as e:
        raise ConfigError(f"backup destination {folder}: cannot write a backup there ({e.strerror or e}); give a writable folder") from e


def _consistent_tables(catalog: Catalog) -> tuple[list[dict[str, Any]], int]:
    """Every table's entry, all current at one instant (see the module doc), and the reads it took."""
    from pyiceberg.catalog.sql import SqlCatalog

    if isinstance(catalog, SqlCatalog):
        return _sql_tables(catalog), 1
    return _reread_tables(catalog)


def _sql_tables(catalog: Any) -> list[dict[str, Any]]:
    """The tables of a SQL catalog from one SELECT of its table rows: the database gives every row as it was
    at one instant, however many commits land meanwhile; the metadata files they name never change."""
    from pyiceberg.catalog import Catalog as PyCatalog
    from pyiceberg.catalog.sql import IcebergTables
    from pyiceberg.io import load_file_io
    from pyiceberg.serializers import FromInputFile
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import Session

    stmt = select(IcebergTables.table_namespace, IcebergTables.table_name, IcebergTables.metadata_location).where(
        IcebergTables.catalog_name == catalog.name
    )
    if (type_filter := catalog._iceberg_type_filter()) is not None:  # views of other engines are not tables
        stmt = stmt.where(type_filter)
    try:
        with Session(catalog.engine) as session:
            rows = session.execute(stmt).all()
    except SQLAlchemyError as e:
        raise TransientError(f"reading the tables of catalog {catalog.name!r} failed ({type(e).__name__}); run it again") from None
    entries = []
    for namespace, name, location in sorted(rows, key=lambda r: (r[0], r[1])):
        if not location:
            continue  # a row without metadata is no table pyiceberg loads either
        ident = (*PyCatalog.identifier_to_tuple(namespace), name)
        io = load_file_io(catalog.properties, location)
        with reaching_storage(f"reading the metadata of {'.'.join(ident)}"):
            md = FromInputFile.table_metadata(io.new_input(location))
        entries.append(_entry_of(ident, location, md))
    return entries


def _reread_tables(catalog: Catalog) -> tuple[list[dict[str, Any]], int]:
    """For catalogs without one statement that reads every table: read, read again, compare."""
    for n in range(1, MAX_ROUNDS + 1):
        idents = list_tables(catalog)
        entries: list[dict[str, Any]] = []
        for ident in idents:
            table = load_table(catalog, ident)
            if table is None:  # dropped while read: read again
                break
            entries.append(_entry(ident, table))
        else:
            if list_tables(catalog) == idents and all(
                _location(catalog, tuple(e["identifier"])) == e["metadata_location"] for e in entries
            ):
                return entries, n
        log.info("the catalog changed during backup read %d; reading it again", n)
    raise TransientError(f"the catalog changed during each of {MAX_ROUNDS} reads of it: no consistent backup; run it again when commits are fewer")


def _location(catalog: Catalog, ident: tuple[str, ...]) -> str | None:
    table = load_table(catalog, ident)
    return table.metadata_location if table is not None else None


def _entry(ident: tuple[str, ...], table: Table) -> dict[str, Any]:
    return _entry_of(ident, table.metadata_location, table.metadata)


def _entry_of(ident: tuple[str, ...], metadata_location: str, md: Any) -> dict[str, Any]:
    return {
        "table": ".".join(ident),
        "identifier": list(ident),
        "metadata_location": metadata_location,
        "location": md.location,
        "format_version": md.format_version,
        "current_snapshot_id": md.current_snapshot_id,
        "snapshot_ids": [s.snapshot_id for s in md.snapshots],
        "refs": {name: ref.snapshot_id for name, ref in md.refs.items()},
        "properties": dict(md.properties),
    }


def _namespaces(catalog: Catalog) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    todo = [tuple(n) for n in catalog.list_namespaces()]
    seen = set(todo)
    while todo:
        ns = todo.pop(0)
        out.append({"namespace": list(ns), "properties": dict(catalog.load_namespace_properties(ns))})
        with contextlib.suppress(NotImplementedError):  # a catalog without nested namespaces
            children = [tuple(c) for c in catalog.list_namespaces(ns)]
            todo.extend(c for c in children if c not in seen)
            seen.update(children)
    return sorted(out, key=lambda d: d["namespace"])


# ---------------------------------------------------------------------------------------------- reading a backup


def newest_backup(folder: Path) -> Path:
    """The newest backup file in ``folder``; :class:`ConfigError` when it holds none."""
    found = sorted(folder.glob(f"{BACKUP_PREFIX}*.json"))
    if not found:
        raise ConfigError(f"backup {folder}: the folder holds no {BACKUP_PREFIX}*.json file; give a backup file or the folder `icefield catalog backup` wrote to")
    return max(found, key=lambda p: (_stamp(p.name), p.name))


def _stamp(name: str) -> str:
    return name.removeprefix(BACKUP_PREFIX).split("-")[0]


def backup_name(path: str | Path) -> str:
    """The file name of the backup at ``path`` (a local path or an object-store location)."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def read_backup(source: str | Path, properties: dict[str, str] | None = None) -> tuple[str | Path, dict[str, Any]]:
    """The backup file ``source`` (or the newest in the folder or object-store prefix ``source``) and its
    document; an object store is reached with the storage ``properties`` (the catalog's). Raises
    :class:`ConfigError` when it is missing, not a backup, or of a newer format than this icefield reads."""
    path: str | Path
    remote = _remote(source)
    if remote is not None:
        path, text = _read_remote(_file_io(properties or {}, remote), remote)
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"backup {path}: cannot read it as JSON ({e}); give a file `icefield catalog backup` wrote") from e
    else:
        path = _local_folder(source, "backup")
        if path.is_dir():
            path = newest_backup(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"backup {path}: no such file; give a file `icefield catalog backup` wrote, or its folder") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"backup {path}: cannot read it as JSON ({e}); give a file `icefield catalog backup` wrote") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"backup {path}: not an icefield catalog backup (no \"format\": \"{FORMAT}\"); give a file `icefield catalog backup` wrote")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(f"backup {path}: format_version {version!r} is newer than this icefield reads ({FORMAT_VERSION}); restore it with a newer icefield")
    tables, namespaces = doc.get("tables"), doc.get("namespaces")
    keys = ("table", "identifier", "metadata_location", "location")
    if not isinstance(tables, list) or not all(isinstance(t, dict) and all(k in t for k in keys) for t in tables):
        raise ConfigError(f"backup {path}: \"tables\" must list entries with {', '.join(keys)}; the file was changed or cut short, use another backup")
    if not isinstance(namespaces, list) or not all(isinstance(n, dict) and isinstance(n.get("namespace"), list) for n in namespaces):
        raise ConfigError(f"backup {path}: \"namespaces\" must list entries with a namespace; the file was changed or cut short, use another backup")
    return path, doc


def _read_remote(io: Any, location: str) -> tuple[str, str]:
    """The backup object at ``location`` (a ``.json`` object) or the newest under the prefix ``location``,
    and its text."""
    if not location.endswith(".json"):
        found = [f.uri for f in list_files(io, location) if backup_name(f.uri).startswith(BACKUP_PREFIX) and f.uri.endswith(".json")]
        if not found:
            raise ConfigError(
                f"backup {location}: the prefix holds no {BACKUP_PREFIX}*.json object; give a backup or the prefix "
                "`icefield catalog backup` wrote to"
            )
        location = max(found, key=lambda u: (_stamp(backup_name(u)), backup_name(u)))
    try:
        with reaching_storage(f"reading the backup {location}"), io.new_input(location).open() as f:
            return location, f.read().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"backup {location}: no such object; give a backup `icefield catalog backup` wrote, or its prefix") from None


# ---------------------------------------------------------------------------------------------- restore


@dataclass
class RestoreResult:
    """What a restore did: per table ``restored``, ``unchanged`` (already there at that metadata),
    ``replaced`` (``force``: it was at another metadata) or ``failed`` (with the error)."""

    backup: str
    namespaces: int = 0
    tables: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [t for t in self.tables if t["status"] == "failed"]


def restore_catalog(catalog: Catalog, doc: dict[str, Any], *, force: bool = False, newest: bool = False, backup: str = "") -> RestoreResult:
    """Register the namespaces (with their properties) and tables of the backup ``doc`` into ``catalog``:
    each table at the backup's metadata file, or with ``newest`` at the newest metadata file under its
    location (see :func:`newest_metadata`: the commits made after the backup are kept).

    Refuses (:class:`ConfigError`, nothing changed) a catalog that holds tables, unless ``force``: then a
    table already there at the backup's metadata stays, one at another metadata is replaced (only its
    catalog entry: no file is deleted), and tables the backup lacks are left alone. A table whose metadata
    file is gone is reported ``failed`` and the others are restored."""
    from pyiceberg.exceptions import NoSuchTableError

    existing = list_tables(catalog)
    if existing and not force:
        shown = ", ".join(".".join(i) for i in existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise ConfigError(
            f"the catalog {catalog.name!r} already holds {len(existing)} table(s) ({shown}): restoring would mix two "
            "states; restore into an empty catalog (--into URI), or pass --force to register the backup's tables over it"
        )
    result = RestoreResult(backup=backup)
    for ns in doc.get("namespaces", []):
        ident = tuple(ns["namespace"])
        ensure_namespace(catalog, ident)
        props = {k: v for k, v in (ns.get("properties") or {}).items() if k != "exists"}
        if props:
            catalog.update_namespace_properties(ident, updates=props)
        result.namespaces += 1
    for entry in doc.get("tables", []):
        ident = tuple(entry["identifier"])
        name, location = entry["table"], entry["metadata_location"]
        item: dict[str, Any] = {"table": name, "metadata_location": location}
        try:
            if newest:
                from pyiceberg.io import load_file_io

                table_location = entry["location"].rstrip("/")
                location = newest_metadata(load_file_io(catalog.properties, table_location), table_location, name)
                item.update(metadata_location=location, newer_than_backup=location != entry["metadata_location"])
            ensure_namespace(catalog, ident[:-1])
            current = load_table(catalog, ident)
            if current is not None and current.metadata_location == location:
                item["status"] = "unchanged"
            else:
                _check_metadata(catalog, name, location)
                if current is not None:
                    with contextlib.suppress(NoSuchTableError):
                        catalog.drop_table(ident)  # the SQL catalog drops its row only; the files stay
                    item["status"] = "replaced"
                else:
                    item["status"] = "restored"
                catalog.register_table(ident, location)
        except IcefieldError as e:
            item.update(status="failed", error=str(e))
        except Exception as e:  # a catalog or storage error of one table: report it, restore the others
            item.update(status="failed", error=f"{type(e).__name__}: {e}")
        result.tables.append(item)
    log.info("restored %d of %d tables into catalog %s", sum(t["status"] != "failed" for t in result.tables), len(result.tables), catalog.name)
    return result


def _check_metadata(catalog: Catalog, name: str, location: str) -> None:
    from pyiceberg.io import load_file_io

    io = load_file_io(catalog.properties, location)
    with reaching_storage(f"reading the metadata of {name}"):
        present = io.new_input(location).exists()
    if not present:
        raise ConfigError(
            f"table {name}: its metadata file {location} is gone (expired or deleted since the backup); recover the "
            f"table from its newest metadata file with `icefield catalog register {name}`"
        )


# ---------------------------------------------------------------------------------------------- verify


@dataclass
class VerifyResult:
    """Per table of the backup: ``status`` ``ok``, ``moved`` (the live table committed after the backup),
    ``mismatch`` (the restored table reads other rows or snapshots than the live one at the backup's
    snapshot), ``unreadable`` (the restored table cannot be read) or ``missing`` (no live table)."""

    backup: str
    tables: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t["status"] == "ok" for t in self.tables)


def verify_backup(live: Catalog, doc: dict[str, Any], *, backup: str = "", warehouse: str | None = None) -> VerifyResult:
    """Restore the backup ``doc`` into a scratch SQLite catalog in a temporary folder and compare each
    table with the live catalog's: current snapshot id, snapshot ids and rows read. A table the live
    catalog committed to since the backup is ``moved`` (the backup restores it as it was; the restored
    table is still compared with the live one at the backup's snapshot). Never raises for one table's
    problem: it is reported in its entry."""
    from icefield.catalog import file_io_properties, sql_catalog

    result = VerifyResult(backup=backup)
    with tempfile.TemporaryDirectory(prefix="icefield-verify-") as tmp:
        scratch = sql_catalog(
            live.name, f"sqlite:///{Path(tmp) / 'catalog.db'}", warehouse or live.properties.get("warehouse", Path(tmp).as_uri()),
            **file_io_properties(live.properties),
        )
        try:
            restored = restore_catalog(scratch, doc, backup=backup)
            failed = {t["table"]: t.get("error", "") for t in restored.failed}
            for entry in doc.get("tables", []):
                result.tables.append(_verify_table(live, scratch, entry, failed.get(entry["table"])))
        finally:
            scratch.engine.dispose()  # type: ignore[attr-defined]
    return result


def _verify_table(live: Catalog, scratch: Catalog, entry: dict[str, Any], restore_error: str | None) -> dict[str, Any]:
    name, ident = entry["table"], tuple(entry["identifier"])
    out: dict[str, Any] = {"table": name, "backup_snapshot_id": entry.get("current_snapshot_id")}
    if restore_error is not None:
        return {**out, "status": "unreadable", "message": restore_error}
    try:
        restored = load_table(scratch, ident)
        assert restored is not None
        snap = restored.metadata.current_snapshot_id
        out.update(restored_snapshot_id=snap, restored_rows=_rows(restored, snap))
    except Exception as e:  # a missing manifest or data file, an unreadable metadata file
        return {**out, "status": "unreadable", "message": f"the restored table cannot be read: {type(e).__name__}: {e}"}
    try:
        current = load_table(live, ident)
    except TransientError as e:
        return {**out, "status": "missing", "message": f"the live table cannot be loaded: {e}"}
    if current is None:
        return {**out, "status": "missing", "message": "the live catalog has no such table (restore the backup to get it back)"}
    live_ids = [s.snapshot_id for s in current.metadata.snapshots]
    out.update(live_snapshot_id=current.metadata.current_snapshot_id)
    restored_ids = [s.snapshot_id for s in restored.metadata.snapshots]
    moved = current.metadata_location != entry["metadata_location"]
    try:
        live_rows = _rows(current, snap) if snap is None or current.snapshot_by_id(snap) is not None else None
    except Exception as e:
        return {**out, "status": "mismatch", "message": f"the live table cannot be read at snapshot {snap}: {type(e).__name__}: {e}"}
    out["live_rows"] = live_rows
    if moved:
        newer = len([i for i in live_ids if i not in set(restored_ids)])
        same = live_rows is not None and live_rows == out["restored_rows"]
        return {
            **out,
            "status": "moved",
            "message": (
                f"the live table moved on after the backup ({newer} snapshot(s) newer, current {current.metadata.current_snapshot_id}); "
                f"the backup restores it at snapshot {snap}"
                + (" and reads the same rows there" if same else ", which the live table no longer holds" if live_rows is None else
                   f", where it reads {out['restored_rows']} rows against the live table's {live_rows}")
                + "; take a new backup"
            ),
        }
    problems = []
    if current.metadata.current_snapshot_id != snap:
        problems.append(f"current snapshot {snap} (restored) != {current.metadata.current_snapshot_id} (live)")
    if restored_ids != live_ids:
        problems.append(f"snapshots differ ({len(restored_ids)} restored, {len(live_ids)} live)")
    if live_rows != out["restored_rows"]:
        problems.append(f"rows {out['restored_rows']} (restored) != {live_rows} (live)")
    if problems:
        return {**out, "status": "mismatch", "message": "; ".join(problems)}
    return {**out, "status": "ok", "message": f"{live_rows} rows, {len(live_ids)} snapshots, current {snap}"}


def _rows(table: Table, snapshot_id: int | None) -> int:
    """The rows ``table`` reads at ``snapshot_id`` (0 without a snapshot), after checking that each data
    and delete file the snapshot reaches exists. Raises ``FileNotFoundError`` naming a missing file."""
    if snapshot_id is None:
        return 0
    scan = table.scan(snapshot_id=snapshot_id)
    for task in scan.plan_files():
        for f in (task.file, *task.delete_files):
            if not table.io.new_input(f.file_path).exists():
                raise FileNotFoundError(f"{f.file_path} is missing")
    return int(scan.count())


# ---------------------------------------------------------------------------------------------- register


@dataclass
class RegisterResult:
    """A table registered again: at which metadata file, with which current snapshot."""

    table: str
    metadata_location: str
    current_snapshot_id: int | None
    snapshots: int


def register_table(catalog: Catalog, name: str, *, metadata_file: str | None = None, location: str | None = None) -> RegisterResult:
    """Register the table ``name`` the catalog lost at ``metadata_file``, by default the newest metadata
    file (highest version) under ``location`` (by default where the catalog puts the table) ``/metadata``.

    Raises :class:`ConfigError` when the catalog has the table already, when no metadata file is found,
    or when two metadata files share the highest version (a commit that lost a race left one: name the
    one to use with ``metadata_file``)."""
    from pyiceberg.exceptions import NoSuchNamespaceError
    from pyiceberg.io import load_file_io

    ident = table_identifier(name)
    if load_table(catalog, ident) is not None:
        raise ConfigError(f"table {name} is in the catalog already; nothing to recover (`icefield show {name}` shows it)")
    if metadata_file is None:
        if location is None:
            try:
                location = catalog._resolve_table_location(None, ident[0], ident[1])  # type: ignore[attr-defined]
            except (NoSuchNamespaceError, ValueError):
                warehouse = catalog.properties.get("warehouse", "").rstrip("/")
                location = f"{warehouse}/{ident[0]}/{ident[1]}"
        assert location is not None
        metadata_file = newest_metadata(load_file_io(catalog.properties, location), location.rstrip("/"), name)
    ensure_namespace(catalog, ident[:-1])
    _check_metadata(catalog, name, metadata_file)
    with reaching_storage(f"registering {name}"):
        table = catalog.register_table(ident, metadata_file)
    log.info("registered %s at %s", name, metadata_file)
    return RegisterResult(name, metadata_file, table.metadata.current_snapshot_id, len(table.metadata.snapshots))


def newest_metadata(io: Any, location: str, name: str) -> str:
    """The metadata file of the highest version under ``location``/metadata (see :func:`register_table`)."""
    by_version: dict[int, list[str]] = {}
    for f in list_files(io, f"{location}/metadata"):
        m = _METADATA_FILE.match(f.uri.rsplit("/", 1)[-1])
        if m is not None:
            by_version.setdefault(int(m.group(1) or m.group(2)), []).append(f.uri)
    if not by_version:
        raise ConfigError(
            f"table {name}: no metadata file (NNNNN-<uuid>.metadata.json) under {location}/metadata; give the table's "
            "folder with --location, or the file with --metadata-file"
        )
    top = max(by_version)
    found = sorted(by_version[top])
    if len(found) > 1:
        raise ConfigError(
            f"table {name}: {len(found)} metadata files share the newest version {top} ({', '.join(found)}): one is of a "
            "commit that lost a race and never landed; pick the right one (its snapshots and `icefield.batch-id`s) and "
            "pass it with --metadata-file"
        )
    return found[0]
