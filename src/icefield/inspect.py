"""Read-only views of the catalog for people and scripts: table descriptions and statistics (queries:
:mod:`icefield.query`)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from icefield.config.loader import Project
    from icefield.iceberg.cost import TableCost

log = logging.getLogger(__name__)


def describe_table(catalog: Catalog, name: str, max_snapshots: int = 20) -> dict[str, Any]:
    """A JSON-able description of table ``name``: schema, partition spec, properties, snapshots.

    Raises :class:`ConfigError` when the table does not exist.
    """
    from icefield.iceberg.history import is_held
    from icefield.iceberg.tables import load_existing

    t = load_existing(catalog, name)
    schema = t.schema()
    spec = t.spec()
    snaps = []
    for s in t.metadata.snapshots[-max_snapshots:]:
        summary = s.summary
        extra = {k: v for k, v in (summary.additional_properties.items() if summary else []) if k.startswith("icefield.")}
        snaps.append(
            {
                "snapshot_id": s.snapshot_id,
                "parent_id": s.parent_snapshot_id,
                "timestamp": dt.datetime.fromtimestamp(s.timestamp_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                "operation": summary.operation.value if summary else None,
                "total_records": int(summary["total-records"] or 0) if summary else None,
                "added_records": int(summary["added-records"] or 0) if summary else None,
                "deleted_records": int(summary["deleted-records"] or 0) if summary else None,
                "icefield": extra,
            }
        )
    return {
        "table": name,
        "location": t.metadata.location,
        "format_version": t.metadata.format_version,
        "schema": [{"id": f.field_id, "name": f.name, "type": str(f.field_type), "required": f.required} for f in schema.fields],
        "partition_spec": [
            {"name": p.name, "source": schema.find_column_name(p.source_id), "transform": str(p.transform)} for p in spec.fields
        ],
        "properties": dict(t.metadata.properties),
        "current_snapshot": current.snapshot_id if (current := t.current_snapshot()) else None,
        "storage": _storage(current.summary if current else None, len(t.metadata.snapshots)),
        "branches": [
            {"branch": name, "snapshot_id": ref.snapshot_id, "held": is_held(t, name)}
            for name, ref in sorted(t.metadata.refs.items())
            if str(ref.snapshot_ref_type) == "branch"
        ],
        "snapshots": snaps,
    }


def _storage(summary: Any, snapshots: int) -> dict[str, Any]:
    """The current snapshot's files, from its summary (no manifest is read): what tells when to run
    ``icefield compact`` (many small files, delete files) and ``icefield expire`` (many snapshots)."""

    def total(key: str) -> int:
        return int(summary[key] or 0) if summary is not None else 0

    return {
        "data_files": total("total-data-files"),
        "delete_files": total("total-delete-files"),
        "position_deletes": total("total-position-deletes"),
        "bytes": total("total-files-size"),
        "snapshots": snapshots,
    }


TABLE_STATS = ("data_files", "delete_files", "small_files", "bytes", "records", "snapshots")
"""The statistics :func:`table_stats` reads per table (``icefield metrics serve`` exports them)."""


def table_stats(table: Any, small_file_bytes: float) -> dict[str, int]:
    """Statistics of ``table``'s current snapshot, read from its manifests: live data files, delete files,
    data files smaller than ``small_file_bytes``, bytes of all live files, records in the data files (before
    deletes are applied), and the snapshots the metadata keeps. All 0 but ``snapshots`` for an empty table."""
    stats = dict.fromkeys(TABLE_STATS, 0)
    stats["snapshots"] = len(table.metadata.snapshots)
    snap = table.current_snapshot()
    if snap is None:
        return stats
    for manifest in snap.manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            f = entry.data_file
            stats["bytes"] += f.file_size_in_bytes
            if int(f.content) == 0:  # DataFileContent.DATA
                stats["data_files"] += 1
                stats["records"] += f.record_count
                stats["small_files"] += f.file_size_in_bytes < small_file_bytes
            else:
                stats["delete_files"] += 1
    return stats


def small_file_bytes(table: Any, ratio: float) -> float:
    """The size below which a data file of ``table`` is small: ``ratio`` of its target file size
    (``write.target-file-size-bytes``; compaction's rule, :mod:`icefield.write.compact`)."""
    from icefield.iceberg.datafiles import target_file_size

    return ratio * target_file_size(table.metadata)


class TableStatsCollector:
    """A Prometheus collector of :func:`table_stats` for every table of ``catalog``, read at each scrape:
    ``icefield_table_<stat>{table}`` gauges (``icefield_table_bytes``, ``icefield_table_small_files``...).
    A table that cannot be read is logged and left out of that scrape; ``icefield_table_stats_errors`` counts
    them per scrape."""

    def __init__(self, catalog: Catalog, small_ratio: float) -> None:
        self.catalog = catalog
        self.small_ratio = small_ratio

    def describe(self) -> list[Any]:
        return []  # no eager collect when registered: the catalog is read at scrape time only

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        from icefield.catalog import list_tables

        help_ = {
            "data_files": "Live data files of the table's current snapshot.",
            "delete_files": "Live delete files (position and equality) of the current snapshot.",
            "small_files": "Live data files smaller than the compaction threshold (0.75 of the target file size).",
            "bytes": "Bytes of the live data and delete files of the current snapshot.",
            "records": "Records in the live data files (before deletes are applied).",
            "snapshots": "Snapshots the table's metadata keeps (history for time travel).",
        }
        families = {k: GaugeMetricFamily(f"icefield_table_{k}", help_[k], labels=["table"]) for k in TABLE_STATS}
        errors = 0
        for ident in list_tables(self.catalog):
            name = ".".join(ident)
            try:
                table = self.catalog.load_table(ident)
                stats = table_stats(table, small_file_bytes(table, self.small_ratio))
            except Exception as e:  # one unreadable table leaves the others exported
                errors += 1
                log.warning("cannot read the statistics of %s: %s", name, e)
                continue
            for k, v in stats.items():
                families[k].add_metric([name], v)
        yield from families.values()
        err = GaugeMetricFamily("icefield_table_stats_errors", "Tables whose statistics could not be read at this scrape.")
        err.add_metric([], errors)
        yield err


COST_METRICS = (
    "icefield_table_storage_files",
    "icefield_table_storage_bytes",
    "icefield_table_storage_cost_per_month",
    "icefield_table_storage_cost_age_seconds",
    "icefield_table_cost_errors",
)
"""The names of the gauges :class:`CostCollector` exports."""

COST_EVERY = 900.0
"""Seconds :class:`CostCollector` keeps its figures before it computes them again (listing every table's
folders at each scrape would cost more than the figures are worth)."""


class CostCollector:
    """A Prometheus collector of the storage cost of every table of ``catalog`` (:func:`~icefield.iceberg.cost.
    storage_costs`, the figures ``icefield cost`` prints), computed at a scrape when the last figures are older
    than ``every`` seconds, else the last figures again:

    - ``icefield_table_storage_bytes{table,namespace,owner,part}`` and ``icefield_table_storage_files{...}``:
      ``part`` is ``current``, ``history``, ``metadata`` or ``orphan`` (they add up to what the table stores)
      or ``small`` (the current data files under the small-file size: a share of ``current``, so sum the
      parts with ``part!="small"``);
    - ``icefield_table_storage_cost_per_month{table,namespace,owner,part,currency}``: their monthly price;
    - ``icefield_table_storage_cost_age_seconds``: how old the figures are; ``icefield_table_cost_errors``:
      tables whose figures could not be computed the last time (logged; their last figures are kept)."""

    def __init__(self, catalog: Catalog, project: Project, every: float = COST_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.catalog = catalog
        self.project = project
        self.every = every
        self.clock = clock
        self._costs: dict[str, TableCost] = {}
        self._at: float | None = None
        self._errors = 0

    def describe(self) -> list[Any]:
        return []  # no eager collect when registered: the storage is read at scrape time only

    def _refresh(self) -> None:
        from icefield.catalog import list_tables
        from icefield.iceberg.cost import storage_costs

        names = [".".join(ident) for ident in list_tables(self.catalog)]
        costs: dict[str, TableCost] = {}
        errors = 0
        for name in names:
            try:
                (costs[name],) = storage_costs(self.catalog, self.project, [name])
            except Exception as e:  # one unreadable table leaves the others exported, with its last figures
                errors += 1
                log.warning("cannot compute the storage cost of %s: %s", name, e)
                if name in self._costs:
                    costs[name] = self._costs[name]
        self._costs, self._errors, self._at = costs, errors, self.clock()

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        if self._at is None or self.clock() - self._at >= self.every:
            self._refresh()
        labels = ["table", "namespace", "owner", "part"]
        files = GaugeMetricFamily("icefield_table_storage_files", "Files a table keeps, by part (current, history, metadata, orphan; small: a share of current).", labels=labels)
        size = GaugeMetricFamily("icefield_table_storage_bytes", "Bytes a table keeps, by part (current, history, metadata, orphan; small: a share of current).", labels=labels)
        price = GaugeMetricFamily(
            "icefield_table_storage_cost_per_month", "Monthly price of the bytes a table keeps, by part, at the project's prices (cost: in icefield.yaml).", labels=[*labels, "currency"]
        )
        for name, c in sorted(self._costs.items()):
            for part, (n, b, v) in c.by_part().items():
                key = [name, c.namespace, c.owner, part]
                files.add_metric(key, n)
                size.add_metric(key, b)
                price.add_metric([*key, c.currency], v)
        yield from (files, size, price)
        age = GaugeMetricFamily("icefield_table_storage_cost_age_seconds", "Seconds since the storage figures were computed.")
        age.add_metric([], self.clock() - (self._at or 0.0))
        yield age
        err = GaugeMetricFamily("icefield_table_cost_errors", "Tables whose storage figures could not be computed the last time.")
        err.add_metric([], self._errors)
        yield err
