"""The results of gates (:class:`CheckResult`) and the Iceberg table ``icefield.quality_results`` that keeps
them (one row per check per evaluation), so every engine can query them. The pipeline appends them
through the same writer as any batch (:func:`icefield.pipeline.audit.store_results`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

CHECK_STATUSES = ("pass", "warn", "fail", "error")


@dataclass
class CheckResult:
    """One gate (or one expectation of a suite) evaluated on one snapshot.

    ``status``: ``pass``; ``warn`` (failed, severity warn); ``fail`` (failed, severity error); ``error``
    (could not be evaluated: a missing column, a failing query). ``blocking`` is True when it holds the
    batch: severity ``error`` and status ``fail`` or ``error``."""

    pipeline: str
    table: str
    snapshot_id: int | None
    branch: str
    check: str
    kind: str
    value: float | None
    threshold: str
    status: str
    severity: str
    message: str
    checked_at: dt.datetime
    run_id: str

    @property
    def blocking(self) -> bool:
        return self.severity == "error" and self.status in ("fail", "error")


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


def results_table(results: list[CheckResult]) -> pa.Table:
    """``results`` as rows of :data:`RESULTS_SCHEMA`."""
    cols: dict[str, list[Any]] = {f.name: [] for f in RESULTS_SCHEMA}
    for r in results:
        for name in cols:
            cols[name].append(getattr(r, name))
    return pa.table(cols, schema=RESULTS_SCHEMA)


def evaluation_key(results: list[CheckResult]) -> str:
    """What identifies one evaluation of one pipeline's gates (``results``, not empty): the table, the
    snapshot, the run and the time. The batch id of the commit that stores them derives from it, so a
    retry of the same evaluation is not stored twice."""
    first = results[0]
    return f"{first.table}\x00{first.snapshot_id}\x00{first.run_id}\x00{first.checked_at.isoformat()}"


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
