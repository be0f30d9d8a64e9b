"""The quarantine: an Iceberg table ``<table>__quarantine`` of the rows a batch could not commit.

Each row keeps the raw record (``raw``, text; ``raw_bytes``, the exact bytes when the record is not
UTF-8), the check that failed and why, the source coordinates, the pipeline, the batch id and the run
id. It is written before the batch's own commit and carries the same batch id, so a crash between the
two commits neither loses nor doubles a quarantined row.

``row_id`` identifies a quarantined row for good (a hash of its batch id, coordinates and raw record);
``replay_id`` is set while a replay moves the row into the table (see :mod:`icefield.pipeline.replay`).
Tables written before these columns existed gain them on the next write (an additive schema change);
their rows get a ``row_id`` the first time they are replayed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from icefield.config.models import TargetConfig
from icefield.write import QUARANTINE_SUFFIX, TableWriter, WriteResult

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from icefield.engines import Engine

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("pipeline", pa.string()),
        pa.field("batch_id", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("check", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("source", pa.string()),
        pa.field("quarantined_at", pa.timestamp("us", tz="UTC")),
        # added with replay; absent from tables written before, which gain them on their next write
        pa.field("row_id", pa.string()),
        pa.field("raw_bytes", pa.binary()),
        pa.field("replay_id", pa.string()),
    ]
)


@dataclass(frozen=True)
class QuarantinedRow:
    """A row for the quarantine. ``raw_bytes`` is set only when ``raw`` cannot hold the exact record."""

    check: str
    reason: str
    raw: str
    source: str
    raw_bytes: bytes | None = None


def quarantine_table_name(table: str) -> str:
    return table + QUARANTINE_SUFFIX


def row_ids(batch_id: str, rows: Iterable[tuple[str | None, str | None]]) -> list[str]:
    """The ``row_id`` of each ``(source, raw)`` quarantined by ``batch_id``, in order: deterministic, and
    distinct even for identical rows (the n-th copy of a row is told apart by n)."""
    seen: Counter[tuple[str | None, str | None]] = Counter()
    out = []
    for source, raw in rows:
        n = seen[(source, raw)]
        seen[(source, raw)] += 1
        h = hashlib.sha256(f"{batch_id}\x00{source}\x00{raw}\x00{n}".encode("utf-8", "surrogatepass"))
        out.append(h.hexdigest()[:32])
    return out


def quarantine_writer(catalog: Catalog, engine: Engine, table: str, pipeline: str) -> TableWriter:
    return TableWriter(catalog, TargetConfig(table=quarantine_table_name(table), mode="append"), pipeline, engine)


def upgrade(writer: TableWriter, table: Table) -> Table:
    """Add the columns of :data:`QUARANTINE_SCHEMA` an older quarantine table lacks (additive)."""
    return writer.evolve(table, QUARANTINE_SCHEMA)


def quarantine_rows(
    rows: list[QuarantinedRow], pipeline: str, batch_id: str, run_id: str, now: dt.datetime | None = None
) -> pa.Table:
    """The Arrow rows of :data:`QUARANTINE_SCHEMA` for ``rows`` of one batch."""
    now = now or dt.datetime.now(dt.UTC)
    n = len(rows)
    return pa.table(
        {
            "pipeline": [pipeline] * n,
            "batch_id": [batch_id] * n,
            "run_id": [run_id] * n,
            "check": [r.check for r in rows],
            "reason": [r.reason for r in rows],
            "raw": [r.raw for r in rows],
            "source": [r.source for r in rows],
            "quarantined_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            "row_id": row_ids(batch_id, ((r.source, r.raw) for r in rows)),
            "raw_bytes": pa.array([r.raw_bytes for r in rows], pa.binary()),
            "replay_id": pa.nulls(n, pa.string()),
        },
        schema=QUARANTINE_SCHEMA,
    )


def write_quarantine(
    catalog: Catalog,
    engine: Engine,
    table: str,
    pipeline: str,
    batch_id: str,
    run_id: str,
    rows: list[QuarantinedRow],
) -> WriteResult | None:
    """Append ``rows`` to the quarantine of ``table`` in one commit tagged with ``batch_id`` (skipped if
    that batch is already there). Returns the commit's result (None without rows)."""
    if not rows:
        return None
    writer = quarantine_writer(catalog, engine, table, pipeline)
    existing = writer.load()
    if existing is not None:
        existing = upgrade(writer, existing)
    return writer.commit(
        quarantine_rows(rows, pipeline, batch_id, run_id), batch_id, None, run_id, table=existing
    )
