"""PostgreSQL column types as the Debezium connector encodes them, for events without the embedded schema.

An event written with ``value.converter.schemas.enable=false`` carries bare JSON values: a ``date`` is a
number of days, a ``numeric(10,2)`` base64 bytes or text or a double (``decimal.handling.mode``), a
``timestamp(3)`` milliseconds or microseconds (``time.precision.mode``). Given a column's PostgreSQL type
(``source.postgres_types``) and the connector's settings (``source.connector``), :func:`field_schema` returns
the Connect field schema the connector would have embedded, so those events are typed exactly as events
with the schema are (:func:`icefield.ingest.debezium_types.plan_field`).
"""

from __future__ import annotations

from typing import Any

from icefield.config.postgres_types import PostgresType

DECIMAL = "org.apache.kafka.connect.data.Decimal"
DECIMAL_TEXT = "icefield.DecimalText"
"""A logical name of icefield's own (the connector never writes it): a numeric sent as text by
``decimal.handling.mode=string``, typed as the decimal the column is."""

def field_schema(pg: PostgresType, decimal_mode: str = "precise", time_mode: str = "adaptive", interval_mode: str = "numeric") -> dict[str, Any]:
    """The Connect field schema the PostgreSQL connector embeds for a column of type ``pg`` under the
    given ``decimal.handling.mode``, ``time.precision.mode`` and ``interval.handling.mode``."""
    item = _scalar_schema(pg, decimal_mode, time_mode, interval_mode)
    if pg.array:
        return {"type": "array", "items": item, "optional": True}
    return item


def _scalar_schema(pg: PostgresType, decimal_mode: str, time_mode: str, interval_mode: str) -> dict[str, Any]:
    def logical(ctype: str, name: str, **extra: Any) -> dict[str, Any]:
        return {"type": ctype, "optional": True, "name": name, **extra}

    plain = {"smallint": "int16", "integer": "int32", "bigint": "int64", "real": "float", "double precision": "double",
             "boolean": "boolean", "text": "string", "bytea": "bytes", "uuid": "string", "json": "string", "xml": "string",
             "enum": "string"}  # fmt: skip
    n = pg.name
    if n in plain:
        return {"type": plain[n], "optional": True}
    if n in ("numeric", "money"):
        if decimal_mode == "double":
            return {"type": "double", "optional": True}
        if decimal_mode == "string":
            # Text, which the embedded schema would call a plain string: read back as the number it is.
            return logical("string", DECIMAL_TEXT, parameters=_decimal_parameters(pg))
        if n == "numeric" and not pg.args:
            return logical("struct", "io.debezium.data.VariableScaleDecimal")
        return logical("bytes", DECIMAL, parameters=_decimal_parameters(pg))
    if n == "timetz":
        return logical("string", "io.debezium.time.ZonedTime")
    if n == "timestamptz":
        return logical("string", "io.debezium.time.ZonedTimestamp")
    if n == "interval":
        return logical("string", "io.debezium.time.Interval") if interval_mode == "string" else logical("int64", "io.debezium.time.MicroDuration")
    precision = pg.args[0] if pg.args else 6
    if time_mode == "isostring":
        return logical("string", {"date": "io.debezium.time.IsoDate", "time": "io.debezium.time.IsoTime", "timestamp": "io.debezium.time.IsoTimestamp"}[n])
    if n == "date":
        return logical("int32", "org.apache.kafka.connect.data.Date" if time_mode == "connect" else "io.debezium.time.Date")
    if n == "time":
        if time_mode == "connect":
            return logical("int32", "org.apache.kafka.connect.data.Time")
        if time_mode == "adaptive" and precision <= 3:
            return logical("int32", "io.debezium.time.Time")
        return logical("int64", "io.debezium.time.MicroTime")
    # timestamp
    if time_mode == "connect":
        return logical("int64", "org.apache.kafka.connect.data.Timestamp")
    return logical("int64", "io.debezium.time.Timestamp" if precision <= 3 else "io.debezium.time.MicroTimestamp")


def _decimal_parameters(pg: PostgresType) -> dict[str, str]:
    if pg.name == "money":
        return {"scale": "2"}
    if len(pg.args) == 2:
        return {"scale": str(pg.args[1]), "connect.decimal.precision": str(pg.args[0])}
    if len(pg.args) == 1:
        return {"scale": "0", "connect.decimal.precision": str(pg.args[0])}
    return {}


__all__ = ["field_schema"]
