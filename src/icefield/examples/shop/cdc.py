"""A stand-in for Debezium's PostgreSQL connector over the shop's SQLite ``orders`` table, for the demo.

:func:`capture` compares the table with what it captured last time (kept in
``data/cdc/.capture-state.json``) and appends the differences as Debezium 3.6 change events, the way
Kafka Connect's ``JsonConverter`` writes them with ``schemas.enable=true`` (embedded schema, ``amount`` as
``org.apache.kafka.connect.data.Decimal``, timestamps as ``io.debezium.time.MicroTimestamp``), one JSON
object per line, to a new ``data/cdc/orders-NNNN.jsonl`` file. The first call writes a snapshot
(``op = r``, no commit LSN); later calls write inserts (``c``), updates (``u``) and deletes (``d``, each
followed by a tombstone line ``null``), grouped in transactions whose ``source.sequence`` is
``[commit LSN, LSN]``. Like the real connector the stream is at-least-once and interleaved:

* the last events of the previous capture are delivered again (a connector restart), and
* two transactions are interleaved: the one that commits second wrote its rows first, so its row LSNs
  are lower than those of the transaction that committed before it. Ordering by LSN alone would keep
  the wrong version; ordering by ``[commit LSN, LSN]`` keeps the right one.

Everything is deterministic: no clock is read and LSNs come from a counter in the state file.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

__all__ = ["CaptureResult", "capture", "delete_orders", "source_rows"]

TOPIC = "shop.public.orders"
REDELIVERED = 5
_COLUMNS = ("order_id", "customer_id", "status", "amount", "currency", "created_at", "updated_at")
_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class CaptureResult:
    """What one :func:`capture` call appended: ``events`` lines in ``path`` (None when nothing changed),
    of which ``redelivered`` repeat earlier events and ``tombstones`` are ``null`` lines."""

    path: Path | None
    snapshot: int
    inserts: int
    updates: int
    deletes: int
    redelivered: int
    tombstones: int
    events: int


def _field(name: str, kind: str, logical: str | None = None, optional: bool = True, **extra: Any) -> dict[str, Any]:
    f: dict[str, Any] = {"type": kind, "optional": optional, "field": name}
    if logical:
        f["name"] = logical
        f["version"] = 1
    f.update(extra)
    return f


def _row_schema(name: str) -> dict[str, Any]:
    return {
        "type": "struct",
        "optional": True,
        "name": "shop.public.orders.Value",
        "field": name,
        "fields": [
            _field("order_id", "int64", optional=False),
            _field("customer_id", "int64"),
            _field("status", "string"),
            _field("amount", "bytes", "org.apache.kafka.connect.data.Decimal", parameters={"scale": "2", "connect.decimal.precision": "10"}),
            _field("currency", "string"),
            _field("created_at", "int64", "io.debezium.time.MicroTimestamp"),
            _field("updated_at", "int64", "io.debezium.time.MicroTimestamp"),
        ],
    }


_SCHEMA = {
    "type": "struct",
    "optional": False,
    "name": "shop.public.orders.Envelope",
    "version": 2,
    "fields": [
        _row_schema("before"),
        _row_schema("after"),
        {
            "type": "struct",
            "optional": False,
            "name": "io.debezium.connector.postgresql.Source",
            "field": "source",
            "fields": [
                _field("version", "string", optional=False),
                _field("connector", "string", optional=False),
                _field("name", "string", optional=False),
                _field("ts_ms", "int64", optional=False),
                _field("snapshot", "string", "io.debezium.data.Enum", parameters={"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"}),
                _field("db", "string", optional=False),
                _field("sequence", "string"),
                _field("schema", "string", optional=False),
                _field("table", "string", optional=False),
                _field("txId", "int64"),
                _field("lsn", "int64"),
                _field("xmin", "int64"),
            ],
        },
        _field("op", "string", optional=False),
        _field("ts_ms", "int64"),
    ],
}


def _encode_decimal(value: float | None) -> str | None:
    if value is None:
        return None
    unscaled = int((Decimal(str(value)) * 100).to_integral_value())
    raw = unscaled.to_bytes(max(1, (unscaled.bit_length() + 8) // 8), "big", signed=True)
    return base64.b64encode(raw).decode("ascii")


def _micros(value: str | None) -> int | None:
    if value is None:
        return None
    delta = datetime.strptime(value, "%Y-%m-%d %H:%M:%S") - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000


def _image(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "amount": _encode_decimal(row["amount"]),
        "created_at": _micros(row["created_at"]),
        "updated_at": _micros(row["updated_at"]),
    }


def source_rows(db_path: Path) -> dict[int, dict[str, Any]]:
    """The ``orders`` rows of the shop database by ``order_id`` (amounts as floats, times as text)."""
    with sqlite3.connect(db_path) as conn:
        cur = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM orders ORDER BY order_id")
        return {r[0]: dict(zip(_COLUMNS, r, strict=True)) for r in cur.fetchall()}


def delete_orders(db_path: Path, order_ids: list[int]) -> None:
    """Delete ``order_ids`` (and their items) from the shop database, in one transaction."""
    with sqlite3.connect(db_path) as conn:
        marks = ",".join("?" * len(order_ids))
        conn.execute(f"DELETE FROM order_items WHERE order_id IN ({marks})", order_ids)
        conn.execute(f"DELETE FROM orders WHERE order_id IN ({marks})", order_ids)


def _envelope(op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, commit_lsn: int | None, lsn: int, txid: int | None, ts_ms: int) -> str:
    source = {
        "version": "3.6.1.Final",
        "connector": "postgresql",
        "name": "shop",
        "ts_ms": ts_ms,
        "snapshot": "true" if op == "r" else "false",
        "db": "shop",
        "sequence": json.dumps([None if commit_lsn is None else str(commit_lsn), str(lsn)]),
        "schema": "public",
        "table": "orders",
        "txId": txid,
        "lsn": lsn,
        "xmin": None,
    }
    payload = {
        "before": None if before is None else _image(before),
        "after": None if after is None else _image(after),
        "source": source,
        "op": op,
        "ts_ms": ts_ms,
    }
    return json.dumps({"schema": _SCHEMA, "payload": payload}, separators=(",", ":"))


def capture(project_dir: Path) -> CaptureResult:
    """Append the changes of the shop's ``orders`` table since the last call as Debezium events.

    Raises :class:`FileNotFoundError` if the shop database is missing.
    """
    data = Path(project_dir) / "data"
    db_path = data / "shop.db"
    if not db_path.is_file():
        raise FileNotFoundError(f"{db_path} is missing; generate the shop first")
    out_dir = data / "cdc"
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / ".capture-state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"lsn": 10_000_000, "txid": 700, "rows": None, "tail": []}
    rows = source_rows(db_path)
    lsn, txid = int(state["lsn"]), int(state["txid"])
    ts_ms = 1_790_000_000_000 + lsn // 1000
    lines: list[str] = []
    counts = {"r": 0, "c": 0, "u": 0, "d": 0}
    if state["rows"] is None:
        for row in rows.values():
            lsn += 8
            lines.append(_envelope("r", None, row, None, lsn, txid, ts_ms))
            counts["r"] += 1
        redelivered: list[str] = []
    else:
        before = {int(k): v for k, v in state["rows"].items()}
        changes: list[tuple[str, Any, Any]] = [("c", None, rows[k]) for k in sorted(rows.keys() - before.keys())]
        changes += [("u", before[k], rows[k]) for k in sorted(rows.keys() & before.keys()) if rows[k] != before[k]]
        changes += [("d", before[k], None) for k in sorted(before.keys() - rows.keys())]
        # At-least-once: a restarted connector sends the end of the previous capture again.
        redelivered = list(state["tail"]) if changes else []
        lines.extend(redelivered)
        txns = [changes[i : i + 4] for i in range(0, len(changes), 4)]
        lines.extend(_transactions(txns, lsn, txid, ts_ms, counts))
        lsn += 64 * (len(changes) + 2)
        txid += len(txns)
    if not lines:
        return CaptureResult(None, 0, 0, 0, 0, 0, 0, 0)
    existing = sorted(out_dir.glob("orders-*.jsonl"))
    path = out_dir / f"orders-{len(existing) + 1:04d}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    events = [line for line in lines if line != "null"]
    state = {"lsn": lsn, "txid": txid, "rows": {str(k): v for k, v in rows.items()}, "tail": events[-REDELIVERED:]}
    state_path.write_text(json.dumps(state))
    return CaptureResult(
        path=path,
        snapshot=counts["r"],
        inserts=counts["c"],
        updates=counts["u"],
        deletes=counts["d"],
        redelivered=len(redelivered),
        tombstones=lines.count("null"),
        events=len(lines),
    )


def _transactions(txns: list[list[tuple[str, Any, Any]]], lsn: int, txid: int, ts_ms: int, counts: dict[str, int]) -> list[str]:
    """Lines for ``txns`` in commit order. The first two are interleaved: the second transaction's rows
    were written (lower LSNs) before the first's, but it commits after it."""
    row_lsns: list[list[int]] = []
    commit_lsns: list[int] = []
    cursor = lsn
    for n, txn in enumerate(txns):
        if n == 0 and len(txns) > 1:
            # Reserve room: the second transaction writes first.
            second_start = cursor + 8
            first_start = second_start + 8 * (len(txns[1]) + 1)
            row_lsns.append([first_start + 8 * i for i in range(len(txn))])
            cursor = first_start + 8 * len(txn)
            commit_lsns.append(cursor + 8)
            cursor += 16
        elif n == 1:
            row_lsns.append([second_start + 8 * i for i in range(len(txn))])
            commit_lsns.append(cursor + 8)
            cursor += 16
        else:
            row_lsns.append([cursor + 8 * (i + 1) for i in range(len(txn))])
            cursor += 8 * (len(txn) + 1)
            commit_lsns.append(cursor)
            cursor += 8
    out: list[str] = []
    for n, txn in enumerate(txns):
        for (op, before, after), row_lsn in zip(txn, row_lsns[n], strict=True):
            out.append(_envelope(op, before, after, commit_lsns[n], row_lsn, txid + n, ts_ms + n))
            counts[op] += 1
            if op == "d":
                out.append("null")
    return out
