"""The quarantine: an Iceberg table ``<table>__quarantine`` of the rows a batch could not commit.

Each row keeps the raw record, the check that failed and why, the source coordinates, the pipeline,
the batch id and the run id. It is written before the batch's own commit and carries the same batch id,
so a crash between the two commits neither loses nor doubles a quarantined row.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from icefield.config.models import TargetConfig
from icefield.write import QUARANTINE_SUFFIX, TableWriter

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

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
    ]
)


@dataclass(frozen=True)
class QuarantinedRow:
    check: str
    reason: str
    raw: str
    source: str


def quarantine_table_name(table: str) -> str:
    return table + QUARANTINE_SUFFIX


def write_quarantine(
    catalog: Catalog, engine: Engine, table: str, pipeline: str, batch_id: str, run_id: str, rows: list[QuarantinedRow]
) -> None:
    """Append ``rows`` to the quarantine of ``table`` in one commit tagged with ``batch_id`` (skipped if
    that batch is already there)."""
    if not rows:
        return
    now = dt.datetime.now(dt.UTC)
    data = pa.table(
        {
            "pipeline": [pipeline] * len(rows),
            "batch_id": [batch_id] * len(rows),
            "run_id": [run_id] * len(rows),
            "check": [r.check for r in rows],
            "reason": [r.reason for r in rows],
            "raw": [r.raw for r in rows],
            "source": [r.source for r in rows],
            "quarantined_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
        },
        schema=QUARANTINE_SCHEMA,
    )
    target = TargetConfig(table=quarantine_table_name(table), mode="append")
    TableWriter(catalog, target, pipeline, engine).commit(data, batch_id, None, run_id)
