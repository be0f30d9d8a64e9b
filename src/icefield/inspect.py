"""Read-only views of the catalog for people and scripts: table descriptions (queries: :mod:`icefield.query`)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog


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
