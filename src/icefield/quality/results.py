"""The results of gates, kept in the Iceberg table ``icefield.quality_results`` (one row per check per
evaluation), appended through the same writer as any batch so every engine can query them."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from icefield.config.models import TargetConfig
from icefield.write import TableWriter, batch_id_for

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from icefield.engines import Engine
    from icefield.pipeline.results import CheckResult

QUALITY_RESULTS_TABLE = "icefield.quality_results"

RESULTS_SCHEMA = pa.schema(
    [
        pa.field("pipeline", pa.string()),
        pa.field("table", pa.string()),
        pa.field("snapshot_id", pa.int64()),
        pa.field("branch", pa.string()),
        pa.field("check", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("threshold", pa.string()),
        pa.field("status", pa.string()),
        pa.field("severity", pa.string()),
        pa.field("message", pa.string()),
        pa.field("checked_at", pa.timestamp("us", tz="UTC")),
        pa.field("run_id", pa.string()),
    ]
)


def store_results(catalog: Catalog, engine: Engine, results: list[CheckResult]) -> None:
    """Append ``results`` (one evaluation of one pipeline's gates) to ``icefield.quality_results`` in one
    commit; the commit's batch id is made of the pipeline, the snapshot, the run and the time, so a retry
    of the same evaluation is not stored twice."""
    if not results:
        return
    first = results[0]
    cols: dict[str, list[Any]] = {f.name: [] for f in RESULTS_SCHEMA}
    for r in results:
        for name in cols:
            cols[name].append(getattr(r, name))
    data = pa.table(cols, schema=RESULTS_SCHEMA)
    key = f"{first.table}\x00{first.snapshot_id}\x00{first.run_id}\x00{first.checked_at.isoformat()}"
    target = TargetConfig(table=QUALITY_RESULTS_TABLE, mode="append")
    TableWriter(catalog, target, first.pipeline, engine).commit(data, batch_id_for("quality", key), None, first.run_id)


def latest_results(catalog: Catalog, table: str, history: int = 1) -> list[dict[str, Any]]:
    """The results of the newest ``history`` evaluations of ``table``'s gates by each pipeline that writes
    it: newest evaluation first, checks in evaluation order within one. [] when nothing was checked yet."""
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import EqualTo

    from icefield.query import readonly

    try:
        t = catalog.load_table(tuple(QUALITY_RESULTS_TABLE.split(".")))
    except NoSuchTableError:
        return []
    data = t.scan(row_filter=EqualTo("table", table)).to_arrow()  # type: ignore[call-arg,arg-type]
    con = readonly.open_connection()
    try:
        con.register("r", data)
        readonly.lock(con)
        rows = readonly.query(
            con,
            "SELECT * EXCLUDE (rn, pos) FROM (SELECT *, dense_rank() OVER (PARTITION BY pipeline ORDER BY checked_at DESC) AS rn, "
            f"row_number() OVER () AS pos FROM r) WHERE rn <= {int(history)} ORDER BY checked_at DESC, pipeline, pos",
            "the quality results query",
        )
    finally:
        con.close()
    out: list[dict[str, Any]] = rows.to_pylist()
    for r in out:
        ts = r.get("checked_at")
        if isinstance(ts, dt.datetime):
            r["checked_at"] = ts.astimezone(dt.UTC)
    return out
