"""Debezium change events as the PostgreSQL connector (3.6) writes them through Kafka's JsonConverter,
for tests, benchmarks and the demo: envelopes with or without the embedded schema, message keys,
tombstones and truncates, with the logical-type encodings (base64 decimals, epoch days and microseconds,
ISO-8601 zoned timestamps).

    events = DebeziumTable("orders", ORDERS_COLUMNS, key=["id"])
    value = events.value("c", after={"id": 1, ...}, lsn=24023128, commit_lsn=24023119, txid=555)
    key = events.key({"id": 1})
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

VERSION = "3.6.1.Final"
EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True)
class Column:
    """A PostgreSQL column as Debezium describes it: the Connect type, the logical name and parameters."""

    name: str
    type: str
    logical: str | None = None
    parameters: dict[str, str] | None = None
    optional: bool = True
    items: dict[str, Any] | None = None
    fields: list[dict[str, Any]] | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.items is not None:
            out["items"] = self.items
        if self.fields is not None:
            out["fields"] = self.fields
        out["optional"] = self.optional
        if self.logical:
            out["name"] = self.logical
            out["version"] = 1
        if self.parameters:
            out["parameters"] = self.parameters
        out["field"] = self.name
        return out


def decimal_column(name: str, precision: int, scale: int, optional: bool = True) -> Column:
    """A ``numeric(p, s)`` column with ``decimal.handling.mode=precise`` (the default)."""
    params = {"scale": str(scale), "connect.decimal.precision": str(precision)}
    return Column(name, "bytes", "org.apache.kafka.connect.data.Decimal", params, optional)


def variable_decimal_column(name: str) -> Column:
    """A ``numeric`` column without precision: Debezium's VariableScaleDecimal struct."""
    fields = [{"type": "int32", "optional": False, "field": "scale"}, {"type": "bytes", "optional": False, "field": "value"}]
    return Column(name, "struct", "io.debezium.data.VariableScaleDecimal", None, True, fields=fields)


# The columns of a realistic orders table, one per common PostgreSQL type.
ORDERS_COLUMNS = [
    Column("id", "int32", optional=False),
    Column("customer_id", "int64"),
    decimal_column("amount", 10, 2),
    Column("note", "string"),
    Column("created_at", "int64", "io.debezium.time.MicroTimestamp"),
    Column("updated_at", "string", "io.debezium.time.ZonedTimestamp"),
    Column("order_date", "int32", "io.debezium.time.Date"),
    Column("uid", "string", "io.debezium.data.Uuid"),
    Column("meta", "string", "io.debezium.data.Json"),
    Column("status", "string", "io.debezium.data.Enum", {"allowed": "new,paid,shipped"}),
    Column("active", "boolean"),
    Column("weight", "double"),
]


def encode_decimal(value: decimal.Decimal | str, scale: int) -> str:
    """A Connect Decimal: the unscaled value as big-endian two's complement bytes, base64."""
    exact = decimal.Context(prec=1000)
    unscaled = int(exact.scaleb(decimal.Decimal(value), scale).to_integral_exact(context=exact))
    size = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(size, "big", signed=True)).decode()


def encode_variable_decimal(value: decimal.Decimal | str) -> dict[str, Any]:
    """A VariableScaleDecimal: ``{"scale": s, "value": <Decimal bytes>}`` at the value's own scale."""
    d = decimal.Decimal(value)
    scale = max(0, -int(d.as_tuple().exponent))
    return {"scale": scale, "value": encode_decimal(d, scale)}


def epoch_days(d: dt.date) -> int:
    return (d - dt.date(1970, 1, 1)).days


def epoch_micros(ts: dt.datetime) -> int:
    """MicroTimestamp of a naive timestamp (PostgreSQL ``timestamp``)."""
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def zoned(ts: dt.datetime) -> str:
    """ZonedTimestamp text of an aware timestamp, as Debezium formats it (UTC, ``Z``, the fraction's
    trailing zeros dropped)."""
    utc = ts.astimezone(dt.UTC).replace(tzinfo=None)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def _source_schema() -> dict[str, Any]:
    def f(t: str, field: str, optional: bool = True, **kw: Any) -> dict[str, Any]:
        return {"type": t, "optional": optional, **kw, "field": field}

    snapshot = {
        "name": "io.debezium.data.Enum",
        "version": 1,
        "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
        "default": "false",
    }
    return {
        "type": "struct",
        "fields": [
            f("string", "version", False),
            f("string", "connector", False),
            f("string", "name", False),
            f("int64", "ts_ms", False),
            f("string", "snapshot", True, **snapshot),
            f("string", "db", False),
            f("string", "sequence"),
            f("int64", "ts_us"),
            f("int64", "ts_ns"),
            f("string", "schema", False),
            f("string", "table", False),
            f("int64", "txId"),
            f("int64", "lsn"),
            f("int64", "xmin"),
        ],
        "optional": False,
        "name": "io.debezium.connector.postgresql.Source",
        "version": 1,
        "field": "source",
    }


@dataclass
class DebeziumTable:
    """Builds the Kafka messages Debezium emits for one PostgreSQL table."""

    table: str
    columns: Sequence[Column] = field(default_factory=lambda: list(ORDERS_COLUMNS))
    key: Sequence[str] = ("id",)
    with_schema: bool = True
    server: str = "pg"
    db: str = "shop"
    db_schema: str = "public"

    @property
    def topic(self) -> str:
        return f"{self.server}.{self.db_schema}.{self.table}"

    def value_schema(self) -> dict[str, Any]:
        row = {"type": "struct", "fields": [c.schema() for c in self.columns], "optional": True, "name": f"{self.topic}.Value"}
        block = {
            "type": "struct",
            "fields": [
                {"type": "string", "optional": False, "field": "id"},
                {"type": "int64", "optional": False, "field": "total_order"},
                {"type": "int64", "optional": False, "field": "data_collection_order"},
            ],
            "optional": True,
            "name": "event.block",
            "version": 1,
            "field": "transaction",
        }
        return {
            "type": "struct",
            "fields": [
                {**row, "field": "before"},
                {**row, "field": "after"},
                _source_schema(),
                block,
                {"type": "string", "optional": False, "field": "op"},
                {"type": "int64", "optional": True, "field": "ts_ms"},
                {"type": "int64", "optional": True, "field": "ts_us"},
                {"type": "int64", "optional": True, "field": "ts_ns"},
            ],
            "optional": False,
            "name": f"{self.topic}.Envelope",
            "version": 2,
        }

    def payload(
        self,
        op: str,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        *,
        lsn: int,
        commit_lsn: int | None = None,
        txid: int | None = 555,
        ts_ms: int = 1_709_288_130_125,
        snapshot: str = "false",
        sequence: str | None | bool = True,
    ) -> dict[str, Any]:
        """The event payload. ``commit_lsn`` None writes ``[null,"<lsn>"]`` (snapshot reads);
        ``sequence=None`` leaves ``source.sequence`` null, a string writes it verbatim."""
        if sequence is True:
            first = "null" if commit_lsn is None else f'"{commit_lsn}"'
            seq: str | None = f'[{first},"{lsn}"]'
        else:
            seq = sequence or None
        source = {
            "version": VERSION,
            "connector": "postgresql",
            "name": self.server,
            "ts_ms": ts_ms,
            "snapshot": snapshot,
            "db": self.db,
            "sequence": seq,
            "ts_us": ts_ms * 1000,
            "ts_ns": ts_ms * 1_000_000,
            "schema": self.db_schema,
            "table": self.table,
            "txId": txid,
            "lsn": lsn,
            "xmin": None,
        }
        return {
            "before": before,
            "after": after,
            "source": source,
            "transaction": None,
            "op": op,
            "ts_ms": ts_ms + 331,
            "ts_us": (ts_ms + 331) * 1000,
            "ts_ns": (ts_ms + 331) * 1_000_000,
        }

    def value(self, op: str, before: dict[str, Any] | None = None, after: dict[str, Any] | None = None, **kw: Any) -> bytes:
        """The message value: compact JSON, with the schema first when ``with_schema`` (as JsonConverter)."""
        payload = self.payload(op, before, after, **kw)
        doc = {"schema": self.value_schema(), "payload": payload} if self.with_schema else payload
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    def key_of(self, row: dict[str, Any]) -> bytes:
        """The message key of a row: its key columns, with the key schema when ``with_schema``."""
        payload = {k: row[k] for k in self.key}
        if not self.with_schema:
            return json.dumps(payload, separators=(",", ":")).encode()
        fields = [c.schema() for c in self.columns if c.name in self.key]
        schema = {"type": "struct", "fields": fields, "optional": False, "name": f"{self.topic}.Key"}
        return json.dumps({"schema": schema, "payload": payload}, separators=(",", ":")).encode()
