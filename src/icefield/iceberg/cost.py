"""Storage cost: the bytes each table keeps on the object store, by why it keeps them, and their monthly price.

For a table, :func:`table_cost` sorts every file it pays for into one of four parts (they add up to what the
table stores; no file is counted twice):

- **current**: the data and delete files of the current snapshot of ``main`` (sizes from the manifests'
  ``file_size_in_bytes``, wherever the files live: an archive tier included);
- **history**: the data and delete files that only other snapshots still in the metadata keep (older
  snapshots kept for time travel, other branches and tags): what expiring them (``icefield expire``) would
  free. A file an older snapshot's manifest names only as deleted is counted here too (it is on the store
  and nothing but the history names it);
- **metadata**: the metadata files, manifest lists and manifests the table reaches (listed sizes);
- **orphans**: the files under the table's ``data/`` and ``metadata/`` folders that nothing of the table
  reaches, found as orphan cleanup finds them (:func:`icefield.iceberg.reach.reachable_files`), at any
  age: what ``icefield orphans`` would free once they are older than its guard. The files of a commit in
  flight count here until it lands.

**Small files** are the current data files under the project's ``cost.small_file_bytes`` (default: a quarter of
the table's target file size); they are part of *current*, reported apart because compaction
(``icefield compact``) folds them.

Prices come from the project's ``cost:`` block (:mod:`icefield.config.cost`): each file is priced at the
storage class of the longest ``cost.locations`` prefix it lies under, or ``cost.archive_class`` under an
archive location of the project (``target.maintenance.archive_location``), else ``cost.storage_class``.
A price is per GB-month, GB = 2^30 bytes.

The owner of a table is the ``scheduling.owner`` of the pipeline that writes it (its ``__quarantine`` and
``__tombstones`` tables too), or of the project for a SQL model's table; a table nothing of the project
writes has none. :func:`storage_costs` is the one function the command (``icefield cost``) and the metrics
exporter call; :func:`totals` sums its result by namespace or owner.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from icefield.config.archive import archive_location
from icefield.config.cost import GB, CostConfig
from icefield.config.ownership import RESERVED_SUFFIXES
from icefield.errors import TerminalError, TransientError
from icefield.iceberg.reach import gone, kept, reachable_files
from icefield.iceberg.storage import list_files, path_key
from icefield.iceberg.tables import load_existing, reaching_storage

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from icefield.config.loader import Project

log = logging.getLogger(__name__)

FOLDERS = ("data", "metadata")
"""The folders under a table's location listed for metadata and orphan files (as orphan cleanup lists)."""
SMALL_SHARE = 4
"""Without ``cost.small_file_bytes``, a data file is small under the table's target file size / this."""
ATTEMPTS = 3
PARTS = ("current", "history", "metadata", "orphan")
"""The parts a table's bytes are sorted into; ``total_bytes`` is their sum."""
NO_OWNER = ""


@dataclass
class TableCost:
    """The storage of one table (see the module) and its price per month in ``currency``."""

    table: str
    namespace: str
    owner: str
    """The owner of the pipeline writing the table (``scheduling.owner``); empty when none is known."""
    location: str
    storage_class: str
    """The class of the table's location (that of its metadata and orphans; data files may differ)."""
    currency: str
    snapshots: int = 0
    current_files: int = 0
    current_bytes: int = 0
    """Data and delete files of the current snapshot."""
    data_bytes: int = 0
    delete_bytes: int = 0
    history_files: int = 0
    history_bytes: int = 0
    metadata_files: int = 0
    metadata_bytes: int = 0
    orphan_files: int = 0
    orphan_bytes: int = 0
    small_files: int = 0
    small_bytes: int = 0
    """Part of ``current_bytes``: the current data files under ``small_file_threshold``."""
    small_file_threshold: int = 0
    total_bytes: int = 0
    current_cost: float = 0.0
    history_cost: float = 0.0
    metadata_cost: float = 0.0
    orphan_cost: float = 0.0
    small_cost: float = 0.0
    total_cost: float = 0.0
    """Monthly price of ``total_bytes`` (current + history + metadata + orphans)."""
    bytes_by_class: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The figures as a JSON-able mapping."""
        return asdict(self)

    def by_part(self) -> dict[str, tuple[int, int, float]]:
        """``part -> (files, bytes, monthly price)`` for :data:`PARTS` and ``small`` (a share of ``current``):
        one labelled sample per part, as the metrics exporter publishes them."""
        return {p: (getattr(self, f"{p}_files"), getattr(self, f"{p}_bytes"), getattr(self, f"{p}_cost")) for p in (*PARTS, "small")}


@dataclass
class CostTotal:
    """The sum of several tables' :class:`TableCost` (a namespace's, an owner's, all of them)."""

    tables: int = 0
    current_files: int = 0
    history_files: int = 0
    metadata_files: int = 0
    orphan_files: int = 0
    small_files: int = 0
    current_bytes: int = 0
    history_bytes: int = 0
    metadata_bytes: int = 0
    orphan_bytes: int = 0
    small_bytes: int = 0
    total_bytes: int = 0
    current_cost: float = 0.0
    history_cost: float = 0.0
    metadata_cost: float = 0.0
    orphan_cost: float = 0.0
    small_cost: float = 0.0
    total_cost: float = 0.0

    def add(self, c: TableCost) -> None:
        self.tables += 1
        for f in (*PARTS, "small"):
            setattr(self, f"{f}_files", getattr(self, f"{f}_files") + getattr(c, f"{f}_files"))
        for f in (*PARTS, "small", "total"):
            setattr(self, f"{f}_bytes", getattr(self, f"{f}_bytes") + getattr(c, f"{f}_bytes"))
            setattr(self, f"{f}_cost", getattr(self, f"{f}_cost") + getattr(c, f"{f}_cost"))

    def as_dict(self) -> dict[str, Any]:
        """The figures as a JSON-able mapping."""
        return asdict(self)


def totals(costs: Iterable[TableCost], by: str) -> dict[str, CostTotal]:
    """``costs`` summed per ``by`` (``namespace`` or ``owner``; an empty owner stays ``""``), sorted by key."""
    out: dict[str, CostTotal] = defaultdict(CostTotal)
    for c in costs:
        out[getattr(c, by)].add(c)
    return dict(sorted(out.items()))


def grand_total(costs: Iterable[TableCost]) -> CostTotal:
    out = CostTotal()
    for c in costs:
        out.add(c)
    return out


def table_owners(project: Project) -> dict[str, str]:
    """``namespace.table`` -> owner, for the tables the project writes (see the module). Shared tables with
    several owners get them joined by ``,``."""
    owners: dict[str, set[str]] = defaultdict(set)
    for pipe in project.pipelines.values():
        if pipe.scheduling.owner:
            owners[pipe.target.table].add(pipe.scheduling.owner)
    if project.config.scheduling.owner:
        for model in project.models.values():
            owners[model.target.table].add(project.config.scheduling.owner)
    out = {table: ",".join(sorted(names)) for table, names in owners.items()}
    for table, owner in list(out.items()):
        out.update({f"{table}{suffix}": owner for suffix in RESERVED_SUFFIXES})
    return out


def class_locations(project: Project) -> list[tuple[str, str]]:
    """``(location key, storage class)`` pairs, longest location first: ``cost.locations`` and, with
    ``cost.archive_class``, every archive location of the project's pipelines."""
    cost = project.config.cost
    pairs = dict(cost.locations)
    if cost.archive_class is not None:
        for pipe in project.pipelines.values():
            where = pipe.target.maintenance.archive_location
            if where is not None:
                pairs.setdefault(archive_location(where), cost.archive_class)
    return sorted(((path_key(loc).rstrip("/"), c) for loc, c in pairs.items()), key=lambda p: -len(p[0]))


def storage_costs(catalog: Catalog, project: Project, names: Iterable[str] | None = None) -> list[TableCost]:
    """The :class:`TableCost` of the tables ``names`` (``namespace.table``), or of every table of the catalog,
    sorted by name, priced with ``project``'s ``cost:`` block. This is what ``icefield cost`` prints and what
    the metrics exporter publishes. Raises :class:`~icefield.errors.ConfigError` for an unknown table,
    :class:`~icefield.errors.TransientError` when the store cannot be reached."""
    if names is None:
        names = sorted(".".join(ident) for ns in catalog.list_namespaces() for ident in catalog.list_tables(ns))
    owners = table_owners(project)
    locations = class_locations(project)
    return [
        table_cost(catalog, name, project.config.cost, owner=owners.get(name, NO_OWNER), locations=locations)
        for name in sorted(set(names))
    ]


def table_cost(
    catalog: Catalog, name: str, cost: CostConfig, *, owner: str = NO_OWNER, locations: list[tuple[str, str]] | None = None
) -> TableCost:
    """The :class:`TableCost` of table ``name`` priced with ``cost`` (``locations``: see :func:`class_locations`;
    default ``cost.locations``). Lists the table's folders, then reads its metadata and every manifest once."""
    started = time.perf_counter()
    if locations is None:
        locations = sorted(((path_key(k).rstrip("/"), c) for k, c in cost.locations.items()), key=lambda p: -len(p[0]))
    table = load_existing(catalog, name)
    location = table.metadata.location.rstrip("/")
    # Listed before the metadata is read (as orphan cleanup does): a commit landing in between has its files
    # reached by the metadata read next, never counted as orphans.
    listed = [f for folder in FOLDERS for f in list_files(table.io, f"{location}/{folder}")]
    table, files = _read(catalog, name)

    def storage_class(uri: str) -> str:
        key = path_key(uri)
        return next((c for loc, c in locations if key == loc or key.startswith(loc + "/")), cost.storage_class)

    out = TableCost(
        table=name, namespace=name.rpartition(".")[0], owner=owner, location=location,
        storage_class=storage_class(location + "/"), currency=cost.currency, snapshots=len(table.metadata.snapshots),
    )
    out.small_file_threshold = cost.small_file_bytes or _target_file_size(table) // SMALL_SHARE
    by_class: dict[str, int] = defaultdict(int)
    costs: dict[str, float] = defaultdict(float)

    def count(part: str, uri: str, size: int) -> None:
        setattr(out, f"{part}_files", getattr(out, f"{part}_files") + 1)
        setattr(out, f"{part}_bytes", getattr(out, f"{part}_bytes") + size)
        c = storage_class(uri)
        by_class[c] += size
        costs[part] += size / GB * cost.price(c)

    for key, f in files.live.items():
        if key in files.current:
            count("current", f.uri, f.size)
            if f.delete:
                out.delete_bytes += f.size
            else:
                out.data_bytes += f.size
                if f.size < out.small_file_threshold:
                    out.small_files += 1
                    out.small_bytes += f.size
                    costs["small"] += f.size / GB * cost.price(storage_class(f.uri))
        else:
            count("history", f.uri, f.size)
    for s in listed:
        key = path_key(s.uri)
        if key in files.live:
            continue
        if not kept(s.uri, files.reached):
            count("orphan", s.uri, s.size)
        elif key in files.deleted:
            count("history", s.uri, s.size)
        else:
            count("metadata", s.uri, s.size)
    out.total_bytes = sum(getattr(out, f"{p}_bytes") for p in PARTS)
    for part in (*PARTS, "small"):
        setattr(out, f"{part}_cost", costs[part])
    out.total_cost = sum(costs[p] for p in PARTS)
    out.bytes_by_class = dict(sorted(by_class.items()))
    log.debug("storage cost of %s: %d bytes in %.2f s", name, out.total_bytes, time.perf_counter() - started)
    return out


@dataclass(frozen=True)
class _File:
    uri: str
    size: int
    delete: bool


@dataclass
class _Files:
    live: dict[str, _File] = field(default_factory=dict)
    """Every data and delete file some snapshot of the metadata holds (key -> file)."""
    current: set[str] = field(default_factory=set)
    """The keys of those the current snapshot of ``main`` holds."""
    deleted: set[str] = field(default_factory=set)
    """Keys named only by deleted manifest entries (and in no snapshot)."""
    reached: set[str] = field(default_factory=set)


def _read(catalog: Catalog, name: str) -> tuple[Table, _Files]:
    """The table loaded and its files; loaded and read again when an expiry deleted a manifest meanwhile."""
    error: OSError | None = None
    for _ in range(ATTEMPTS):
        table = load_existing(catalog, name)
        try:
            with reaching_storage(f"reading the manifests of {name}"):  # an unreachable store: TransientError
                return table, _files(table)
        except OSError as e:
            if not gone(e):
                raise TerminalError(f"reading the manifests of {name} failed: {e}; check that the warehouse can be read") from e
            log.info("a file %s names went missing while it was read (an expiry meanwhile): reading it again: %s", name, e)
            error = e
    raise TransientError(
        f"storage cost of {name}: a manifest its metadata names was missing in each of {ATTEMPTS} reads ({error}). "
        f"Run it again once expiry is done; if it persists the table lost a file: check `icefield show {name}`"
    ) from error


def _files(table: Table) -> _Files:
    from pyiceberg.manifest import DataFileContent, ManifestEntryStatus

    out = _Files()
    entries: dict[str, list[Any]] = {}  # manifest path -> its entries (a manifest is shared by many snapshots)
    current = table.current_snapshot()
    named: set[str] = set()
    for snap in table.metadata.snapshots:
        is_current = current is not None and snap.snapshot_id == current.snapshot_id
        for manifest in snap.manifests(table.io):
            got = entries.get(manifest.manifest_path)
            if got is None:
                got = entries[manifest.manifest_path] = manifest.fetch_manifest_entry(table.io, discard_deleted=False)
            for e in got:
                df = e.data_file
                key = path_key(df.file_path)
                if e.status == ManifestEntryStatus.DELETED:
                    named.add(key)
                    continue
                out.live.setdefault(key, _File(df.file_path, int(df.file_size_in_bytes), df.content != DataFileContent.DATA))
                if is_current:
                    out.current.add(key)
    out.deleted = named - out.live.keys()
    paths = {m: [e.data_file.file_path for e in es] for m, es in entries.items()}
    out.reached = reachable_files(table, paths)
    return out


def _target_file_size(table: Table) -> int:
    from icefield.iceberg.datafiles import target_file_size

    return target_file_size(table.metadata)
