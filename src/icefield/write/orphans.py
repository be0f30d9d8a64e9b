"""Orphan cleanup: delete the files under a table's location that nothing of the table reaches.

A commit writes its data files, manifests, manifest list and metadata file before the catalog swaps the
table's pointer; a commit that fails (a lost conflict, a crash, a killed process) leaves them behind, and
nothing else ever deletes them (``icefield expire`` deletes only what expired snapshots reached). A crashed
compaction or an abandoned audit branch leaves files the same way. ``remove_orphans`` lists the files under
the table's ``data/`` and ``metadata/`` folders (:func:`icefield.iceberg.storage.list_files`) and deletes
those that are

- reached by nothing: no snapshot of the table's metadata (every branch and tag, held audit branches
  included), no manifest list, manifest or data or delete file entry of one of them (deleted entries too),
  no statistics or partition-statistics file, not the current metadata file nor one in its metadata log;
- and older than the age guard (``older_than``, default 3 days), measured from when the cleanup starts.

The guard is what makes cleanup safe beside writers: a commit in flight has written files the table does
not reach yet, and they must not be taken. Every file a commit adds is written during that commit, so a
commit that takes less than ``older_than`` never loses one; a guard shorter than the slowest commit
(``0s``) is only safe while nothing writes the table. The table is loaded after the listing and again
before deleting, so that a commit landing meanwhile is accounted for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from icefield.config.ages import DEFAULT_ORPHAN_AGE, parse_age
from icefield.errors import ConfigError, TerminalError, TransientError
from icefield.iceberg.reach import MISSING_OBJECT as MISSING_OBJECT
from icefield.iceberg.reach import VERSION_HINT as VERSION_HINT
from icefield.iceberg.reach import gone as _gone
from icefield.iceberg.reach import kept as _kept
from icefield.iceberg.reach import reachable_files as reachable_files
from icefield.iceberg.storage import list_files, path_key
from icefield.iceberg.tables import load_existing, load_table
from icefield.write.expire import delete_paths

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

FOLDERS = ("data", "metadata")
"""The folders under a table's location that cleanup looks in (anything else there is left alone)."""

ATTEMPTS = 5
SHORT_GUARD = 3600.0
"""A guard shorter than this gets a warning: a Spark job's commit can take that long."""


@dataclass
class OrphanResult:
    """What an orphan cleanup did (or, with ``dry_run``, would do)."""

    table: str
    files_listed: int = 0
    files_reachable: int = 0
    orphans: int = 0
    """Files nothing reaches that are older than the guard: deleted (or, dry run, to delete)."""
    orphan_bytes: int = 0
    too_young: int = 0
    """Files nothing reaches yet that are newer than the guard (a commit in flight may own them): kept."""
    files_deleted: int = 0
    bytes_deleted: int = 0
    older_than_seconds: float = 0.0
    seconds: float = 0.0
    dry_run: bool = False


def remove_orphans(
    catalog: Catalog,
    table_name: str,
    *,
    older_than: str | int | float = DEFAULT_ORPHAN_AGE,
    dry_run: bool = False,
) -> OrphanResult:
    """Delete ``table_name``'s orphan files older than ``older_than`` (see the module doc); with
    ``dry_run`` only count them. Returns the counts. Raises :class:`~icefield.errors.ConfigError` for an
    unknown table or a bad age, :class:`~icefield.errors.TransientError` when the store is unreachable."""
    age = parse_age(older_than)
    if age < SHORT_GUARD:
        log.warning(
            "orphan cleanup of %s with a guard of %.0f s: the files of a commit in flight that takes longer are deleted; "
            "use it only while nothing writes the table", table_name, age,
        )
    started = time.perf_counter()
    cutoff = time.time() - age  # before listing: a file written after the cleanup started is never old enough
    table = load_existing(catalog, table_name)  # only for its location and file IO
    result = OrphanResult(table=table_name, older_than_seconds=age, dry_run=dry_run)
    location = table.metadata.location.rstrip("/")
    listed = [f for folder in FOLDERS for f in list_files(table.io, f"{location}/{folder}")]
    result.files_listed = len(listed)

    # Loaded after the listing: whatever a commit that landed before the listing wrote is reached here.
    manifests: dict[str, list[str]] = {}
    table, reached = _reach(catalog, table_name, manifests)
    candidates = [f for f in listed if not _kept(f.uri, reached)]
    _refuse_shared_location(catalog, table_name, [f.uri for f in candidates if f.uri.endswith(".metadata.json")])
    result.files_reachable = len(listed) - len(candidates)
    old = [f for f in candidates if f.mtime < cutoff]
    result.too_young = len(candidates) - len(old)
    if old and not dry_run:
        # A commit may have landed since: reach its metadata too (the manifests already read are reused).
        latest, more = _reach(catalog, table_name, manifests)
        if latest.metadata_location != table.metadata_location:
            reached |= more
            old = [f for f in old if not _kept(f.uri, reached)]
    result.orphans = len(old)
    result.orphan_bytes = sum(f.size for f in old)
    if old and not dry_run:
        left = set(delete_paths(table, [f.uri for f in old]))
        result.files_deleted = sum(1 for f in old if f.uri not in left)
        result.bytes_deleted = sum(f.size for f in old if f.uri not in left)
        log.info("removed %d orphan files (%d bytes) of %s older than %.0f s", result.files_deleted, result.bytes_deleted, table_name, age)
    result.seconds = time.perf_counter() - started
    return result


def _refuse_shared_location(catalog: Catalog, table_name: str, unreached_metadata: list[str]) -> None:
    """Refuse (:class:`ConfigError`) when one of ``unreached_metadata`` is the current metadata file of a
    table of the catalog: another table (or another name of this one) keeps its files under this table's
    location, and what this table does not reach may be that table's."""
    if not unreached_metadata:
        return
    # This table's own current file is one when a commit landed after it was loaded: not another table's.
    current = {k: name for k, name in _current_metadata(catalog).items() if name != table_name}
    shared = sorted(u for u in unreached_metadata if path_key(u) in current)
    if shared:
        raise ConfigError(
            f"orphan cleanup of {table_name}: table {current[path_key(shared[0])]} keeps its metadata under this table's location "
            f"({shared[0]}), so files this table does not reach may be that table's; nothing was deleted. Give each table "
            "its own location (register one of them again elsewhere), then clean up"
        )


def _current_metadata(catalog: Catalog) -> dict[str, str]:
    """The current metadata file of every table of the catalog (key -> ``namespace.table``): one statement for a SQL
    catalog, else each table loaded."""
    from pyiceberg.catalog.sql import IcebergTables, SqlCatalog

    if isinstance(catalog, SqlCatalog):
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        stmt = select(IcebergTables.table_namespace, IcebergTables.table_name, IcebergTables.metadata_location).where(
            IcebergTables.catalog_name == catalog.name
        )
        with Session(catalog.engine) as session:
            return {path_key(loc): f"{ns}.{name}" for ns, name, loc in session.execute(stmt).all() if loc}
    from icefield.catalog import list_tables

    out = {}
    for ident in list_tables(catalog):
        table = load_table(catalog, ident)
        if table is not None and table.metadata_location:
            out[path_key(table.metadata_location)] = ".".join(ident)
    return out


def _reach(catalog: Catalog, table_name: str, manifests: dict[str, list[str]]) -> tuple[Table, set[str]]:
    """The table freshly loaded and what it reaches. A snapshot expired meanwhile has its manifest list or
    manifests deleted under the reading: the table is loaded again and read again."""
    error: OSError | None = None
    seen: str | None = None
    for _ in range(ATTEMPTS):
        table = load_existing(catalog, table_name)
        try:
            return table, reachable_files(table, manifests)
        except OSError as e:
            if not _gone(e):
                raise
            if seen == table.metadata_location:  # missing again in the same metadata: not an expiry meanwhile
                raise TerminalError(
                    f"orphan cleanup of {table_name}: a manifest list or manifest its metadata names is missing ({e}); "
                    "nothing was deleted. The table lost a file (restored from an old backup whose snapshots were expired "
                    f"since?): check `icefield catalog verify` and `icefield show {table_name}`"
                ) from e
            log.info("a file %s names went missing while it was read (an expiry meanwhile): reading it again: %s", table_name, e)
            error, seen = e, table.metadata_location
    raise TransientError(
        f"orphan cleanup of {table_name}: a manifest the table's metadata names was missing in each of {ATTEMPTS} reads "
        f"({error}); nothing was deleted. Run it again once expiry is done; if it persists the table lost a file: "
        f"check `icefield show {table_name}`"
    ) from error
