"""Kafka Connect and Debezium types to Arrow: the embedded schema of a change event, read once per schema,
becomes a plan (one :class:`FieldPlan` per column) that converts whole columns of JSON values at a time.

Each converter tries a vectorised path first (a type check of the column, one ``pa.array``, Arrow
compute) and only when that fails walks the values one by one to find the culprits, so a batch with one
bad value costs one slow column, not a slow batch. A value that does not fit its declared type marks its
row bad with a reason naming the column, the value and the type; nothing is nulled silently.

Mapping (PostgreSQL connector, ``decimal.handling.mode`` and ``time.precision.mode`` in any setting):

==============================================  =========================  ===============================
Connect type / logical name                     JSON value                 Arrow
==============================================  =========================  ===============================
int8, int16, int32, int64                       number                     int8, int16, int32, int64
float (float32), double (float64)               number, "NaN", "Infinity"  float32, float64
boolean, string, bytes                          bool, text, base64         bool, string, binary
org.apache.kafka.connect.data.Decimal           base64 unscaled bytes      decimal128(p, s) (string if p > 38)
io.debezium.data.VariableScaleDecimal           {"scale", "value"}         the declared type (see below)
io.debezium.time.Date, connect Date             days (int32)               date32
io.debezium.time.Timestamp, connect Timestamp   ms (int64)                 timestamp[us]
io.debezium.time.MicroTimestamp                 µs (int64)                 timestamp[us]
io.debezium.time.NanoTimestamp                  ns (int64)                 timestamp[us] (whole µs only)
io.debezium.time.ZonedTimestamp                 ISO-8601 with offset       timestamp[us, tz=UTC]
io.debezium.time.Time, connect Time             ms (int32)                 time64[us]
io.debezium.time.MicroTime, NanoTime            µs, ns (int64)             time64[us]
io.debezium.time.IsoDate, IsoTime, IsoTimestamp ISO-8601 text, "Z"         date32, time64[us], timestamp[us]
io.debezium.data.Uuid, Json, Enum, Xml, ...     text                       string
array                                           list                       list<item>
struct, map (Geometry, ...)                     object                     string (JSON text)
==============================================  =========================  ===============================

A ``VariableScaleDecimal`` (PostgreSQL ``numeric`` without a precision) has no type of its own: every
value carries its scale. Its column takes a declared type (:class:`NumericTypes`, ``decimal(38,18)``
unless configured) whatever the values, so the table's type never depends on which value came first;
a value that does not fit it exactly (more decimals than the scale, more integer digits than the
precision allows) marks its row bad. As ``string`` a value is its exact text at its own scale, which
is PostgreSQL's text of it.

Dates and timestamps are kept to the years 1-9999 (PostgreSQL's ``infinity`` arrives as a huge number
and is refused, not stored as a date no engine can read); times of day to [00:00, 24:00) (PostgreSQL's
``24:00:00`` does not fit Arrow's ``time64`` and is refused).
"""

from __future__ import annotations

import binascii
import datetime as dt
import math
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from icefield.ingest.coerce import CoercionError, describe

DECIMAL = "org.apache.kafka.connect.data.Decimal"
DECIMAL_TEXT = "icefield.DecimalText"  # see icefield.ingest.debezium_pgtypes
VARIABLE_SCALE_DECIMAL = "io.debezium.data.VariableScaleDecimal"
ZONED_TIMESTAMP = "io.debezium.time.ZonedTimestamp"

MAX_DECIMAL128_DIGITS = 38
# PostgreSQL's numeric: at most 1000 digits of declared precision, a display scale of at most 16383.
MAX_NUMERIC_DIGITS = 1000
MAX_NUMERIC_SCALE = 16383
# The years 1-9999 in µs since the epoch: what Python, Iceberg readers and most engines can show.
MIN_TS_US = -62135596800_000_000
MAX_TS_US = 253402300799_999_999
DAY_US = 86_400_000_000
MIN_DAYS = -719_162  # 0001-01-01
MAX_DAYS = 2_932_896  # 9999-12-31

_INT_BITS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
_INT_TYPES = {8: pa.int8(), 16: pa.int16(), 32: pa.int32(), 64: pa.int64()}
_FLOAT_TYPES = {"float": pa.float32(), "float32": pa.float32(), "double": pa.float64(), "float64": pa.float64()}
# Logical names of integers that count time: kind and the factor to microseconds (negative: divide).
_TEMPORAL: dict[str, tuple[str, int]] = {
    "io.debezium.time.Date": ("date", 0),
    "org.apache.kafka.connect.data.Date": ("date", 0),
    "io.debezium.time.Timestamp": ("ts", 1000),
    "org.apache.kafka.connect.data.Timestamp": ("ts", 1000),
    "io.debezium.time.MicroTimestamp": ("ts", 1),
    "io.debezium.time.NanoTimestamp": ("ts", -1000),
    "io.debezium.time.Time": ("time", 1000),
    "org.apache.kafka.connect.data.Time": ("time", 1000),
    "io.debezium.time.MicroTime": ("time", 1),
    "io.debezium.time.NanoTime": ("time", -1000),
}
# Logical names of ISO-8601 text (time.precision.mode=isostring): kind and Arrow type.
_ISO: dict[str, tuple[str, pa.DataType]] = {
    "io.debezium.time.IsoDate": ("isodate", pa.date32()),
    "io.debezium.time.IsoTime": ("isotime", pa.time64("us")),
    "io.debezium.time.IsoTimestamp": ("isots", pa.timestamp("us")),
}
# The JSON encoding Jackson (Kafka's JsonConverter) gives non-finite floating point numbers.
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
NUMERIC_DEFAULT_TYPE = pa.decimal128(38, 18)


@dataclass(frozen=True)
class NumericTypes:
    """The declared Arrow type of unconstrained ``numeric`` columns: ``columns`` by name, else ``default``
    (``decimal128(p, s)`` or ``string``)."""

    default: pa.DataType = NUMERIC_DEFAULT_TYPE
    columns: Mapping[str, pa.DataType] = field(default_factory=dict)

    def type_of(self, name: str) -> pa.DataType:
        return self.columns.get(name, self.default)

    @classmethod
    def parse(cls, default: str, columns: Mapping[str, str]) -> NumericTypes:
        """From the pipeline's ``numeric`` settings (``string`` or ``decimal(P,S)``, validated by the config)."""
        return cls(_numeric_type(default), {k: _numeric_type(v) for k, v in columns.items()})


@dataclass(frozen=True)
class TypeOptions:
    """What types columns beyond what the events say: the declared type of unconstrained ``numeric``
    columns, and the plans of columns declared for events without the embedded schema (by name)."""

    numeric: NumericTypes = field(default_factory=NumericTypes)
    declared: Mapping[str, FieldPlan] = field(default_factory=dict)
    placeholder: str = "__debezium_unavailable_value"

    @classmethod
    def from_settings(
        cls,
        numeric_default: str = "decimal(38,18)",
        numeric_columns: Mapping[str, str] | None = None,
        columns: Mapping[str, str] | None = None,
        decimal_mode: str = "precise",
        time_mode: str = "adaptive",
        interval_mode: str = "numeric",
        placeholder: str = "__debezium_unavailable_value",
    ) -> TypeOptions:
        """From a debezium source's ``numeric``, ``postgres_types`` (as ``columns``) and ``connector`` settings
        (``placeholder``: its ``unavailable.value.placeholder``). Raises ValueError for a type name the
        config did not validate."""
        from icefield.config.postgres_types import parse_postgres_type
        from icefield.ingest.debezium_pgtypes import field_schema

        declared = {
            name: plan_field(field_schema(parse_postgres_type(t), decimal_mode, time_mode, interval_mode))
            for name, t in (columns or {}).items()
        }
        return cls(NumericTypes.parse(numeric_default, numeric_columns or {}), declared, placeholder)

    def numeric_type(self, name: str, table_type: pa.DataType | None) -> pa.DataType:
        """The type of unconstrained numeric column ``name``: the one configured for it, else the type the
        table already has (a decimal or text), else the default."""
        if name in self.numeric.columns:
            return self.numeric.columns[name]
        if table_type is not None and (pa.types.is_decimal128(table_type) or pa.types.is_string(table_type) or pa.types.is_large_string(table_type)):
            return pa.string() if not pa.types.is_decimal128(table_type) else table_type
        return self.numeric.default


def _numeric_type(name: str) -> pa.DataType:
    text = name.strip().lower()
    if text == "string":
        return pa.string()
    p, s = text.removeprefix("decimal(").removesuffix(")").split(",")
    return pa.decimal128(int(p), int(s))


class SchemaPlanError(ValueError):
    """The embedded Connect schema itself is malformed (the record is rejected, not the batch)."""


@dataclass(frozen=True)
class FieldPlan:
    """How one column's JSON values become Arrow: ``kind`` selects the converter, ``type`` is the Arrow
    type it produces (for ``vdecimal`` the declared type, set by the caller), ``label`` names the Connect
    type in messages. ``default`` is the schema's default value (JSON, as values are encoded) when
    ``has_default``."""

    kind: str
    type: pa.DataType
    label: str
    factor: int = 1
    precision: int = 0
    scale: int = 0
    item: FieldPlan | None = None
    has_default: bool = False
    default: Any = None


def plan_field(schema: Any, depth: int = 0) -> FieldPlan:
    """The :class:`FieldPlan` of one Connect field schema (a JSON object). Raises SchemaPlanError."""
    if not isinstance(schema, dict):
        raise SchemaPlanError(f"a field schema must be an object, got {describe(schema)}")
    if depth > 16:
        raise SchemaPlanError("field schema nested too deep")
    ctype = schema.get("type")
    name = schema.get("name")
    if not isinstance(ctype, str):
        raise SchemaPlanError(f"a field type must be text, got {describe(ctype)}")
    if name is not None and not isinstance(name, str):
        raise SchemaPlanError(f"logical type name must be text, got {describe(name)}")
    label = name or str(ctype)
    if ctype in _INT_BITS:
        temporal = _TEMPORAL.get(name or "")
        if temporal is not None:
            kind, factor = temporal
            t = {"date": pa.date32(), "ts": pa.timestamp("us"), "time": pa.time64("us")}[kind]
            return FieldPlan(kind, t, label, factor=factor)
        bits = _INT_BITS[ctype]
        return FieldPlan("int", _INT_TYPES[bits], label, precision=bits)
    if ctype in _FLOAT_TYPES:
        return FieldPlan("float", _FLOAT_TYPES[ctype], label)
    if ctype == "boolean":
        return FieldPlan("bool", pa.bool_(), label)
    if ctype == "string":
        if name == ZONED_TIMESTAMP:
            return FieldPlan("zts", pa.timestamp("us", tz="UTC"), label)
        iso = _ISO.get(name or "")
        if iso is not None:
            return FieldPlan(iso[0], iso[1], label)
        if name == DECIMAL_TEXT:
            # Declared without a schema (debezium_pgtypes): numeric text, typed as the column's decimal;
            # without a precision the caller sets the declared type, as for a VariableScaleDecimal.
            precision, scale = _decimal_params(schema.get("parameters") or {}, unconstrained=True)
            if precision == 0 or precision > MAX_DECIMAL128_DIGITS:
                return FieldPlan("dectext", NUMERIC_DEFAULT_TYPE if precision == 0 else pa.string(), label, precision=precision, scale=scale)
            return FieldPlan("dectext", pa.decimal128(precision, scale), label, precision=precision, scale=scale)
        return FieldPlan("string", pa.string(), label)
    if ctype == "bytes":
        if name == DECIMAL:
            precision, scale = _decimal_params(schema.get("parameters") or {})
            if precision > MAX_DECIMAL128_DIGITS:
                return FieldPlan("decimal", pa.string(), label, precision=precision, scale=scale)
            return FieldPlan("decimal", pa.decimal128(precision, scale), label, precision=precision, scale=scale)
        return FieldPlan("bytes", pa.binary(), label)
    if ctype == "struct" and name == VARIABLE_SCALE_DECIMAL:
        return FieldPlan("vdecimal", NUMERIC_DEFAULT_TYPE, label)
    if ctype == "array":
        item = plan_field(schema.get("items"), depth + 1)
        if item.kind in ("vdecimal", "list"):
            return FieldPlan("json", pa.string(), label)
        return FieldPlan("list", pa.list_(item.type), label, item=item)
    if ctype in ("struct", "map"):
        return FieldPlan("json", pa.string(), label)
    raise SchemaPlanError(f"unknown Connect type {describe(ctype)}")


_EPOCH_TEXT = re.compile(r"^(1970-01-01(T00:00:00(\.0+)?)?|00:00(:00(\.0+)?)?)Z?$", re.ASCII)
_ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def default_stands_in(plan: FieldPlan) -> bool:
    """Whether the schema's default of a date, time, timestamp or uuid column is the value the connector
    writes in place of a default it cannot evaluate (``now()``, ``gen_random_uuid()``...: the epoch, the
    zero UUID) rather than a value PostgreSQL gave the rows. It cannot tell ``0``, ``''`` or ``false``
    from the stand-ins of other types; those are taken as they are."""
    d = plan.default
    if plan.kind in ("date", "ts", "time"):
        return d == 0
    if plan.kind in ("zts", "isodate", "isotime", "isots"):
        return isinstance(d, str) and bool(_EPOCH_TEXT.match(d))
    return plan.label == "io.debezium.data.Uuid" and d == _ZERO_UUID


def _decimal_params(params: Any, unconstrained: bool = False) -> tuple[int, int]:
    """``(precision, scale)`` of Decimal parameters: a scale alone (``money``) has a precision of 38;
    with ``unconstrained``, neither (numeric text without a declared precision) is ``(0, 0)``."""
    if not isinstance(params, dict):
        raise SchemaPlanError(f"Decimal parameters must be an object, got {describe(params)}")
    if unconstrained and "scale" not in params and "connect.decimal.precision" not in params:
        return 0, 0
    scale = _int_param(params, "scale", None)
    precision = _int_param(params, "connect.decimal.precision", MAX_DECIMAL128_DIGITS)
    if not 0 <= scale <= precision or not 1 <= precision <= MAX_NUMERIC_DIGITS:
        raise SchemaPlanError(f"Decimal scale {scale} and precision {precision} are not valid")
    return precision, scale


def _int_param(params: dict[str, Any], key: str, default: int | None) -> int:
    raw = params.get(key)
    if raw is None:
        if default is None:
            raise SchemaPlanError(f"Decimal without parameter {key!r}")
        return default
    try:
        return int(str(raw), 10)
    except ValueError:
        raise SchemaPlanError(f"Decimal parameter {key!r} is not an integer: {describe(raw)}") from None


def plan_struct(schema: Any) -> dict[str, FieldPlan]:
    """Column name -> plan for a Connect struct schema (the ``before``/``after`` row, or a message key)."""
    if not isinstance(schema, dict) or schema.get("type") != "struct" or not isinstance(schema.get("fields"), list):
        raise SchemaPlanError("the row schema is not a struct with fields")
    out: dict[str, FieldPlan] = {}
    for f in schema["fields"]:
        if not isinstance(f, dict) or not isinstance(f.get("field"), str):
            raise SchemaPlanError(f"a struct field without a name: {describe(f)}")
        try:
            plan = plan_field(f)
        except SchemaPlanError as e:
            raise SchemaPlanError(f"field {f['field']!r}: {e}") from None
        if "default" in f and f["default"] is not None:
            plan = replace(plan, has_default=True, default=f["default"])
        out[f["field"]] = plan
    return out


# ------------------------------------------------------------------ column conversion


def convert_column(name: str, plan: FieldPlan, values: Sequence[Any], bad: dict[int, str]) -> pa.Array:
    """Convert JSON values of column ``name`` to Arrow as ``plan`` says. Rows whose value does not fit are
    recorded in ``bad`` (index -> reason, first reason wins) and get a null."""
    if plan.kind in ("vdecimal", "dectext"):
        return _variable_decimals(name, plan, values, bad)
    if plan.kind in _ISO_KINDS:
        return _iso_column(name, plan, values, bad)
    if plan.kind == "list":
        return _lists(name, plan, values, bad)
    vector = _VECTOR.get(plan.kind)
    if vector is not None:
        try:
            out = vector(plan, values)
        except (_Fallback, pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            out = None
        if out is not None:
            return out
    if plan.kind == "zts":
        return _zoned_timestamps(name, plan, values, bad)
    return _per_value(name, plan, values, bad)


class _Fallback(Exception):
    """The vectorised path cannot prove every value fits: walk the values."""


def _kinds(values: Sequence[Any]) -> set[type]:
    kinds = set(map(type, values))
    kinds.discard(type(None))
    return kinds


def _int64_array(values: Sequence[Any]) -> pa.Array:
    if not _kinds(values) <= {int}:
        raise _Fallback
    return pa.array(values, pa.int64())


def _vector_int(plan: FieldPlan, values: Sequence[Any]) -> pa.Array:
    arr = _int64_array(values)
    return arr if plan.precision == 64 else arr.cast(plan.type, safe=True)


def _vector_float(plan: FieldPlan, values: Sequence[Any]) -> pa.Array:
    kinds = _kinds(values)
    if not kinds <= {float, int}:
        raise _Fallback
    if int in kinds and any(type(v) is int and abs(v) > 1 << 53 for v in values):
        raise _Fallback
    arr = pa.array(values, pa.float64())
    if plan.type == pa.float64():
        return arr
    out = arr.cast(pa.float32(), safe=False)
    if pc.any(pc.and_(pc.is_inf(out), pc.invert(pc.is_inf(arr)))).as_py():
        raise _Fallback
    return out


def _vector_bool(plan: FieldPlan, values: Sequence[Any]) -> pa.Array:
    if not _kinds(values) <= {bool}:
        raise _Fallback
    return pa.array(values, pa.bool_())


def _vector_string(plan: FieldPlan, values: Sequence[Any]) -> pa.Array:
    if not _kinds(values) <= {str}:
        raise _Fallback
    return pa.array(values, pa.string())


def _vector_date(plan: FieldPlan, values: Sequence[Any]) -> pa.Array:
    arr = _int64_array(values)
    lo, hi = pc.min_max(arr).values()
    if lo.is_valid and (lo.as_py() < MIN_DAYS or hi.as_py() > MAX_DAYS):
        raise _Fallback
    return arr.cast(pa.int32()).view(pa.date32())


def _micros(plan: FieldPlan, values: Sequence[Any]) -> pa.Array:
    arr = _int64_array(values)
    if plan.factor > 1:
        arr = pc.multiply_checked(arr, plan.factor)
    elif plan.factor < 0:
        whole = pc.divide(arr, -plan.factor)
        if pc.all(pc.equal(pc.multiply(whole, -plan.factor), arr)).as_py() is False:
            raise _Fallback
        arr = whole
    return arr


def _vector_ts(plan: FieldPlan, values: Sequence[Any]) -> pa.Array:
    arr = _micros(plan, values)
    lo, hi = pc.min_max(arr).values()
    if lo.is_valid and (lo.as_py() < MIN_TS_US or hi.as_py() > MAX_TS_US):
        raise _Fallback
    return arr.view(plan.type)


def _vector_time(plan: FieldPlan, values: Sequence[Any]) -> pa.Array:
    arr = _micros(plan, values)
    lo, hi = pc.min_max(arr).values()
    if lo.is_valid and (lo.as_py() < 0 or hi.as_py() >= DAY_US):
        raise _Fallback
    return arr.view(plan.type)


def _vector_zts(plan: FieldPlan, values: Sequence[Any]) -> pa.Array:
    if not _kinds(values) <= {str}:
        raise _Fallback
    out = pc.cast(pa.array(values, pa.string()), plan.type)
    lo = pc.min(out.cast(pa.int64()))
    if lo.is_valid and lo.as_py() < MIN_TS_US:
        raise _Fallback  # Arrow reads year 0000, which no Python or Iceberg reader can show
    return out


def _vector_decimal(plan: FieldPlan, values: Sequence[Any]) -> pa.Array:
    """Base64 big-endian two's complement to decimal128's 16-byte little-endian layout with bytes
    operations only; values longer than the precision surely allows take the checked path."""
    if not pa.types.is_decimal(plan.type):
        raise _Fallback
    limit = _sure_bytes(plan.precision)
    a2b = binascii.a2b_base64
    chunks: list[bytes] = []
    valid: list[bool] = []
    try:
        for v in values:
            if v is None:
                chunks.append(_ZERO16)
                valid.append(False)
                continue
            if type(v) is not str:
                raise _Fallback
            raw = a2b(v, strict_mode=True)
            if not 0 < len(raw) <= limit:
                raise _Fallback
            chunks.append(raw[::-1].ljust(16, b"\xff" if raw[0] & 0x80 else b"\x00"))
            valid.append(True)
    except binascii.Error:
        raise _Fallback from None
    n = len(chunks)
    nulls = n - sum(valid)
    mask = pa.array(valid, pa.bool_()).buffers()[1] if nulls else None
    return pa.Array.from_buffers(plan.type, n, [mask, pa.py_buffer(b"".join(chunks))], null_count=nulls)


_ZERO16 = bytes(16)


def _sure_bytes(precision: int) -> int:
    """The most two's complement bytes whose every value has at most ``precision`` digits."""
    k = 0
    while k < 16 and 1 << (8 * (k + 1) - 1) <= 10**precision:
        k += 1
    return k


def _vector_json(plan: FieldPlan, values: Sequence[Any]) -> pa.Array:
    return pa.array([None if v is None else _json_text(v) for v in values], pa.string())


_VECTOR: dict[str, Callable[[FieldPlan, Sequence[Any]], pa.Array]] = {
    "int": _vector_int,
    "float": _vector_float,
    "bool": _vector_bool,
    "string": _vector_string,
    "date": _vector_date,
    "ts": _vector_ts,
    "time": _vector_time,
    "zts": _vector_zts,
    "decimal": _vector_decimal,
    "json": _vector_json,
}


def _json_text(v: Any) -> str:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()


# ------------------------------------------------------------------ value by value


def _to_int(v: Any, bits: int = 64) -> int:
    if type(v) is not int:
        raise CoercionError("is not an integer")
    lim = 1 << (bits - 1)
    if not -lim <= v < lim:
        raise CoercionError(f"does not fit in {bits} bits")
    return v


def _to_micros(plan: FieldPlan, v: Any) -> int:
    i = _to_int(v)
    if plan.factor > 1:
        i *= plan.factor
        if not -(1 << 63) <= i < 1 << 63:
            raise CoercionError("does not fit in 64 bits as microseconds")
    elif plan.factor < 0:
        q, r = divmod(i, -plan.factor)
        if r:
            raise CoercionError("has nanoseconds that a microsecond column would lose")
        i = q
    return i


def _scalar(plan: FieldPlan, v: Any) -> Any:
    """One JSON value to the Python value Arrow builds ``plan.type`` (or its storage) from."""
    kind = plan.kind
    if kind == "int":
        return _to_int(v, plan.precision)
    if kind == "float":
        if type(v) is float:
            f = v
        elif type(v) is int:
            if abs(v) > 1 << 53:
                raise CoercionError("is not exactly representable as a floating point number")
            f = float(v)
        elif isinstance(v, str) and v in _NON_FINITE:
            f = _NON_FINITE[v]
        else:
            raise CoercionError("is not a number")
        if plan.type == pa.float32() and math.isfinite(f):
            # Rounded to the nearest float32 as the vectorised cast rounds it: PostgreSQL's largest real,
            # sent as 3.4028235E38, is a hair above FLT_MAX as a double and is FLT_MAX as a float32.
            try:
                _FLOAT32.pack(f)
            except OverflowError:
                raise CoercionError("does not fit in a 32-bit float") from None
        return f
    if kind == "bool":
        if type(v) is not bool:
            raise CoercionError("is not a boolean")
        return v
    if kind == "string":
        if type(v) is not str:
            raise CoercionError("is not text")
        return v
    if kind == "bytes":
        return _base64(v)
    if kind == "decimal":
        unscaled = _unscaled(v)
        if unscaled.bit_length() >= 3 * plan.precision and abs(unscaled) >= 10**plan.precision:
            raise CoercionError(f"has more than {plan.precision} digits")
        return unscaled
    if kind == "date":
        days = _to_int(v, 32)
        if not MIN_DAYS <= days <= MAX_DAYS:
            raise CoercionError("is outside the years 1-9999 (PostgreSQL 'infinity'?)")
        return days
    if kind == "ts":
        i = _to_micros(plan, v)
        if not MIN_TS_US <= i <= MAX_TS_US:
            raise CoercionError("is outside the years 1-9999 (PostgreSQL 'infinity'?)")
        return i
    if kind == "time":
        i = _to_micros(plan, v)
        if not 0 <= i < DAY_US:
            raise CoercionError("is not a time of day in [00:00, 24:00)")
        return i
    if kind == "json":
        return _json_text(v)
    raise AssertionError(f"no scalar converter for {kind}")  # pragma: no cover - programming error


def _base64(v: Any) -> bytes:
    if type(v) is not str:
        raise CoercionError("is not base64 text")
    try:
        return binascii.a2b_base64(v, strict_mode=True)
    except binascii.Error:
        raise CoercionError("is not valid base64") from None


def _unscaled(v: Any) -> int:
    raw = _base64(v)
    if not raw:
        raise CoercionError("is empty; a Decimal needs at least one byte")
    return int.from_bytes(raw, "big", signed=True)


def _storage_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_date32(t):
        return pa.int32()
    if pa.types.is_timestamp(t) or pa.types.is_time64(t):
        return pa.int64()
    return t


def _per_value(name: str, plan: FieldPlan, values: Sequence[Any], bad: dict[int, str]) -> pa.Array:
    out: list[Any] = []
    append = out.append
    for i, v in enumerate(values):
        if v is None:
            append(None)
            continue
        try:
            append(_scalar(plan, v))
        except CoercionError as e:
            append(None)
            bad.setdefault(i, f"decode: column {name!r} value {describe(v)} {e} ({plan.label})")
    if plan.kind == "decimal":
        return _decimal_array(out, plan.type, plan.scale)
    storage = _storage_type(plan.type)
    arr = pa.array(out, storage)
    return arr if storage == plan.type else arr.view(plan.type)


def _decimal_array(unscaled: Sequence[int | None], t: pa.DataType, scale: int) -> pa.Array:
    """Arrow decimals (or their exact text, for ``t`` string) from unscaled integers, without building a
    Python Decimal per value: the 16-byte little-endian two's complement is the decimal128 layout."""
    if pa.types.is_string(t):
        return pa.array([None if u is None else _decimal_text(u, scale) for u in unscaled], pa.string())
    n = len(unscaled)
    valid = [u is not None for u in unscaled]
    data = b"".join((0 if u is None else u).to_bytes(16, "little", signed=True) for u in unscaled)
    mask = None if all(valid) else pa.array(valid, pa.bool_()).buffers()[1]
    null_count = n - sum(valid)
    return pa.Array.from_buffers(t, n, [mask, pa.py_buffer(data)], null_count=null_count)


def _decimal_text(unscaled: int, scale: int) -> str:
    """Exact text of ``unscaled * 10**-scale`` (no Decimal context, so no rounding at 28 digits)."""
    digits = str(abs(unscaled))
    sign = "-" if unscaled < 0 else ""
    if scale <= 0:
        return sign + digits + "0" * -scale
    digits = digits.rjust(scale + 1, "0")
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def _variable_decimals(name: str, plan: FieldPlan, values: Sequence[Any], bad: dict[int, str]) -> pa.Array:
    """VariableScaleDecimal values ({"scale": s, "value": base64}), or numeric text (``dectext``), as
    ``plan.type``: a ``decimal128(p, s)`` takes a value exactly or marks its row bad (more decimals than
    ``s`` that are not zeros, more than ``p - s`` integer digits, NaN or an infinity); ``string`` takes
    the exact text at the value's own scale."""
    target = plan.type
    parse = variable_decimal if plan.kind == "vdecimal" else decimal_text_value
    as_text = pa.types.is_string(target)
    p, s = (0, 0) if as_text else (target.precision, target.scale)
    limit = 10**p
    out: list[Any] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            unscaled, scale = parse(v)
            if as_text:
                out.append(_decimal_text(unscaled, scale))
                continue
            if scale > s:
                unscaled, rest = divmod(unscaled, 10 ** (scale - s))
                if rest:
                    raise CoercionError(f"has {scale} decimal places, more than the {s} of {target}")
            else:
                unscaled *= 10 ** (s - scale)
            if abs(unscaled) >= limit:
                raise CoercionError(f"has more than the {p - s} integer digits of {target}")
            out.append(unscaled)
        except CoercionError as e:
            out.append(None)
            bad.setdefault(
                i,
                f"decode: column {name!r} value {_describe_variable(v)} {e} ({plan.label}); declare the column's type "
                "in source.numeric.columns (string keeps every value)",
            )
    if as_text:
        return pa.array(out, pa.string())
    return _decimal_array(out, target, s)


def variable_decimal(v: Any) -> tuple[int, int]:
    """A VariableScaleDecimal value ({"scale": s, "value": base64 unscaled}) as ``(unscaled, scale)`` with
    a scale of at least 0. Raises CoercionError."""
    if not isinstance(v, dict) or set(v) != {"scale", "value"}:
        raise CoercionError('is not a {"scale", "value"} object')
    scale = _to_int(v["scale"], 32)
    if not -MAX_NUMERIC_SCALE <= scale <= MAX_NUMERIC_SCALE:
        raise CoercionError(f"has a scale outside PostgreSQL's +-{MAX_NUMERIC_SCALE}")
    unscaled = _unscaled(v["value"])
    if scale < 0:
        unscaled, scale = unscaled * 10**-scale, 0
    return unscaled, scale


_DECIMAL_TEXT = re.compile(r"^([+-]?)(\d+)(?:\.(\d*))?(?:[eE]([+-]?\d{1,5}))?$", re.ASCII)
# decimal.handling.mode=string spells PostgreSQL's special numerics so; double mode as Jackson's doubles.
_SPECIAL_NUMERIC = frozenset({"NAN", "POSITIVE_INFINITY", "NEGATIVE_INFINITY", "NaN", "Infinity", "-Infinity"})


def decimal_text_value(v: Any) -> tuple[int, int]:
    """Decimal text (``"-12.50"``, as ``decimal.handling.mode=string`` sends a numeric) as ``(unscaled,
    scale)`` at the scale it is written with (at least 0). Raises CoercionError, also for NaN and the
    infinities, which no decimal holds."""
    if type(v) is not str:
        raise CoercionError("is not decimal text")
    if v in _SPECIAL_NUMERIC:
        raise CoercionError("is not a finite number (PostgreSQL NaN or an infinity): a decimal cannot hold it")
    m = _DECIMAL_TEXT.match(v)
    if not m:
        raise CoercionError("is not decimal text")
    frac = m.group(3) or ""
    unscaled = int(m.group(2) + frac)
    scale = len(frac) - int(m.group(4) or 0)
    if not -MAX_NUMERIC_SCALE <= scale <= MAX_NUMERIC_SCALE:
        raise CoercionError(f"has a scale outside PostgreSQL's +-{MAX_NUMERIC_SCALE}")
    if m.group(1) == "-":
        unscaled = -unscaled
    if scale < 0:
        unscaled, scale = unscaled * 10**-scale, 0
    return unscaled, scale


def is_variable_decimal(v: Any) -> bool:
    """Whether a JSON value has the shape of a VariableScaleDecimal (what events without a schema show)."""
    return type(v) is dict and len(v) == 2 and "scale" in v and "value" in v


def _describe_variable(v: Any) -> str:
    """The value's decimal text when it is a well-formed VariableScaleDecimal, else its JSON form."""
    if isinstance(v, str):
        return describe(v, 80)
    try:
        return describe(_decimal_text(*variable_decimal(v)), 80)
    except CoercionError:
        return describe(v)


def _iso_column(name: str, plan: FieldPlan, values: Sequence[Any], bad: dict[int, str]) -> pa.Array:
    """IsoDate, IsoTime and IsoTimestamp text (``time.precision.mode=isostring``: UTC, a trailing ``Z``)
    as date32, time64[us] and timestamp[us], in the years 1-9999 and the times [00:00, 24:00)."""
    out: list[Any] = []
    parse = _ISO_PARSERS[plan.kind]
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            if type(v) is not str:
                raise CoercionError("is not text")
            out.append(parse(v))
        except CoercionError as e:
            out.append(None)
            bad.setdefault(i, f"decode: column {name!r} value {describe(v)} {e} ({plan.label})")
    storage = _storage_type(plan.type)
    return pa.array(out, storage).view(plan.type)


_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})Z?$", re.ASCII)
_ISO_TIME = re.compile(r"^(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z?$", re.ASCII)
_EPOCH_DATE = dt.date(1970, 1, 1)


def _iso_days(v: str) -> int:
    m = _ISO_DATE.match(v)
    if not m:
        raise CoercionError("is not a date in the years 1-9999 (PostgreSQL 'infinity' or a BC date?)")
    try:
        return (dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3))) - _EPOCH_DATE).days
    except ValueError:
        raise CoercionError("is not a date in the years 1-9999") from None


def _iso_time_micros(v: str) -> int:
    m = _ISO_TIME.match(v)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59 or int(m.group(3)) > 59:
        raise CoercionError("is not a time of day in [00:00, 24:00)")
    frac = (m.group(4) or "").ljust(9, "0")
    if frac[6:] != "000":
        raise CoercionError("has nanoseconds that a microsecond column would lose")
    return ((int(m.group(1)) * 60 + int(m.group(2))) * 60 + int(m.group(3))) * 1_000_000 + int(frac[:6])


def _iso_ts_micros(v: str) -> int:
    date, sep, time = v.partition("T")
    if not sep:
        raise CoercionError("is not an ISO-8601 timestamp")
    if not _ISO_DATE.match(date):
        raise CoercionError("is outside the years 1-9999 (PostgreSQL 'infinity' or a BC timestamp?)")
    return _iso_days(date) * DAY_US + _iso_time_micros(time)


_ISO_PARSERS: dict[str, Callable[[str], int]] = {"isodate": _iso_days, "isotime": _iso_time_micros, "isots": _iso_ts_micros}
_ISO_KINDS = frozenset(_ISO_PARSERS)
_FLOAT32 = struct.Struct("<f")


def _zoned_timestamps(name: str, plan: FieldPlan, values: Sequence[Any], bad: dict[int, str]) -> pa.Array:
    """ISO-8601 text with an offset, parsed by Arrow; the values Arrow refuses are found by bisection so
    the parser is the same for good and bad rows."""
    text: list[str | None] = []
    for i, v in enumerate(values):
        if v is None or type(v) is str:
            text.append(v)
        else:
            text.append(None)
            bad.setdefault(i, f"decode: column {name!r} value {describe(v)} is not text ({plan.label})")
    arr = pa.array(text, pa.string())
    failed: list[int] = []
    out = _bisect_cast(arr, plan.type, 0, failed)
    for i in failed:
        bad.setdefault(i, f"decode: column {name!r} value {describe(text[i])} is not an ISO-8601 timestamp with an offset ({plan.label})")
    early = pc.less(out.cast(pa.int64()), MIN_TS_US)
    if pc.any(early).as_py():
        for i in pc.indices_nonzero(early).to_pylist():
            bad.setdefault(i, f"decode: column {name!r} value {describe(text[i])} is outside the years 1-9999 ({plan.label})")
        out = pc.if_else(early, pa.scalar(None, plan.type), out)
    return out


def _bisect_cast(arr: pa.Array, t: pa.DataType, offset: int, failed: list[int]) -> pa.Array:
    try:
        return pc.cast(arr, t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(arr) == 1:
            failed.append(offset)
            return pa.nulls(1, t)
    half = len(arr) // 2
    left = _bisect_cast(arr.slice(0, half), t, offset, failed)
    right = _bisect_cast(arr.slice(half), t, offset + half, failed)
    return pa.concat_arrays([left, right])


def _lists(name: str, plan: FieldPlan, values: Sequence[Any], bad: dict[int, str]) -> pa.Array:
    assert plan.item is not None
    offsets = [0]
    flat: list[Any] = []
    owner: list[int] = []
    valid: list[bool] = []
    for i, v in enumerate(values):
        if v is None:
            valid.append(False)
        elif isinstance(v, list):
            valid.append(True)
            flat.extend(v)
            owner.extend([i] * len(v))
        else:
            valid.append(False)
            bad.setdefault(i, f"decode: column {name!r} value {describe(v)} is not a list ({plan.label})")
        offsets.append(len(flat))
    item_bad: dict[int, str] = {}
    items = convert_column(name, plan.item, flat, item_bad)
    for j, reason in item_bad.items():
        bad.setdefault(owner[j], reason)
    mask = None if all(valid) else pa.array([not x for x in valid], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), items, type=plan.type, mask=mask)


# ------------------------------------------------------------------ types across schemas and tables


def widens_to(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether every value of type ``src`` is exactly a value of type ``dst`` (a safe, lossless cast)."""
    if src == dst:
        return True
    if pa.types.is_integer(src) and pa.types.is_integer(dst):
        return pa.types.is_signed_integer(dst) and dst.bit_width >= src.bit_width
    if pa.types.is_floating(src) and pa.types.is_floating(dst):
        return dst.bit_width >= src.bit_width
    if pa.types.is_decimal(src) and pa.types.is_decimal(dst):
        return dst.scale >= src.scale and dst.precision - dst.scale >= src.precision - src.scale
    if pa.types.is_integer(src) and pa.types.is_decimal(dst):
        digits = {8: 3, 16: 5, 32: 10, 64: 19}[src.bit_width]
        return dst.precision - dst.scale >= digits
    return False


def common_type(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The narrowest type both ``a`` and ``b`` widen to, or None."""
    if widens_to(a, b):
        return b
    if widens_to(b, a):
        return a
    if pa.types.is_decimal(a) and pa.types.is_decimal(b):
        scale = max(a.scale, b.scale)
        whole = max(a.precision - a.scale, b.precision - b.scale)
        if whole + scale <= MAX_DECIMAL128_DIGITS:
            return pa.decimal128(whole + scale, scale)
    return None
