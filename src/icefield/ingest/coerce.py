"""Strict typing of incoming values: nothing is coerced silently.

``"12abc"`` never becomes 12, ``1.5`` never becomes 1, a NaN is not a number, a decimal never loses
digits. A value that cannot be typed exactly marks its row as bad with a reason naming the column, the
value and the type; the pipeline sends that row to the quarantine. Clean columns take a vectorised
Arrow cast; only a column whose cast fails is walked value by value to find the culprits.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from icefield.columns import column_name_problem

# ASCII only: Python's int()/float()/Decimal() also take "１２", "١٢" and "1_000", which no data file means.
_INT = re.compile(r"^[+-]?\d+$", re.ASCII)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$", re.ASCII)
_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)
_TS = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?$", re.ASCII)

TYPE_NAMES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "str": pa.string(),
    "text": pa.string(),
    "int": pa.int32(),
    "integer": pa.int32(),
    "int32": pa.int32(),
    "long": pa.int64(),
    "bigint": pa.int64(),
    "int64": pa.int64(),
    "float": pa.float32(),
    "float32": pa.float32(),
    "double": pa.float64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "binary": pa.binary(),
}
_DECIMAL = re.compile(r"^decimal\((\d+),(\d+)\)$")


_JSON_TEXT = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode
"""An object or a list as JSON text, keys sorted: ``json.dumps``'s text, without building an encoder per value."""


class CoercionError(ValueError):
    """One value cannot be typed exactly. Raised inside a struct or list, it carries where: ``path`` (the
    steps below the column, ``.id``, ``[2]``), the value there and its type."""

    def __init__(self, message: str, path: str = "", value: Any = None, type: pa.DataType | None = None) -> None:  # noqa: A002
        super().__init__(message)
        self.message = message
        self.path = path
        self.value = value
        self.type = type


_GRAMMAR = "struct<name: type, ...> or list<type>, e.g. list<struct<id: long, tags: list<string>>>"


def parse_type(name: str, allow_json: bool = False) -> pa.DataType:
    """Map a type of a pipeline file (``long``, ``decimal(10,2)``, ``timestamp``,
    ``struct<id: long, tags: list<string>>``...) to Arrow. Nested types nest freely; inside them ``json`` is
    a field kept as JSON text (a string), and so it is at the top with ``allow_json`` (the http source).

    Raises ValueError naming the text, what is wrong in it and the accepted names.
    """
    parser = _TypeParser(name, allow_json)
    t = parser.type(top=True)
    parser.end()
    return t


_STRUCT = re.compile(r"struct\s*<", re.IGNORECASE)
_LIST = re.compile(r"list\s*<", re.IGNORECASE)
_SCALAR = re.compile(r"decimal\s*\(\s*\d+\s*,\s*\d+\s*\)|[A-Za-z_][A-Za-z0-9_]*", re.IGNORECASE)
_FIELD_NAME = re.compile(r"[^\s:,<>`]+|`[^`]+`")


class _TypeParser:
    """A recursive descent over the text of one type (see :func:`parse_type`)."""

    def __init__(self, text: str, allow_json: bool) -> None:
        self.text = text
        self.at = 0
        self.allow_json = allow_json

    def fail(self, problem: str) -> ValueError:
        where = f" at position {self.at + 1}" if self.at < len(self.text) else " at its end"
        return ValueError(
            f"column type {self.text!r}: {problem}{where}; use one of {sorted(TYPE_NAMES)}, decimal(P,S), or {_GRAMMAR}"
        )

    def skip(self) -> None:
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1

    def take(self, char: str, what: str) -> None:
        self.skip()
        if not self.text.startswith(char, self.at):
            raise self.fail(f"expected {char!r} {what}")
        self.at += 1

    def end(self) -> None:
        self.skip()
        if self.at < len(self.text):
            raise self.fail(f"unexpected {self.text[self.at:]!r}")

    def type(self, top: bool = False) -> pa.DataType:
        self.skip()
        rest = self.text[self.at :]
        if m := _STRUCT.match(rest):
            self.at += m.end()
            return self.struct()
        if m := _LIST.match(rest):
            self.at += m.end()
            item = self.type()
            self.take(">", "to close list<")
            return pa.list_(pa.field("element", item))
        m = _SCALAR.match(rest)
        if not m:
            raise self.fail("expected a type")
        word = re.sub(r"\s+", "", m.group(0)).lower()
        if word in ("struct", "list"):
            raise self.fail(f"{word} needs its {'fields' if word == 'struct' else 'item type'} in <...>")
        self.at += m.end()
        if word == "json" and (self.allow_json or not top):
            return pa.string()
        if word in TYPE_NAMES:
            return TYPE_NAMES[word]
        d = _DECIMAL.match(word)
        if d:
            return pa.decimal128(int(d.group(1)), int(d.group(2)))
        self.at -= m.end()
        extra = "; json is a type inside struct<...> and list<...> only" if word == "json" else ""
        if top and not self.text[self.at + m.end() :].strip():
            raise ValueError(f"unknown column type {self.text!r}{extra}; use one of {sorted(TYPE_NAMES)}, decimal(P,S), or {_GRAMMAR}")
        raise self.fail(f"unknown type {m.group(0)!r}{extra}")

    def struct(self) -> pa.DataType:
        fields: list[pa.Field] = []
        while True:
            self.skip()
            m = _FIELD_NAME.match(self.text, self.at)
            if not m:
                raise self.fail("expected a field name (struct<name: type, ...>)")
            field_name = m.group(0).strip("`")
            if any(f.name == field_name for f in fields):
                raise self.fail(f"field {field_name!r} is declared twice")
            self.at = m.end()
            self.take(":", f"after field name {field_name!r} (struct<name: type, ...>)")
            fields.append(pa.field(field_name, self.type()))
            self.skip()
            if self.text.startswith(",", self.at):
                self.at += 1
                continue
            self.take(">", "to close struct< (or ',' before the next field)")
            return pa.struct(fields)


def describe(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------ value converters


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise CoercionError("a boolean is not an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if math.isfinite(v) and v.is_integer():
            return int(v)
        raise CoercionError("not a whole number")
    if isinstance(v, decimal.Decimal):
        if v == v.to_integral_value():
            return int(v)
        raise CoercionError("not a whole number")
    if isinstance(v, str) and _INT.match(v.strip()):
        return int(v.strip())
    raise CoercionError("not an integer")


def _number_text(v: str) -> str:
    """``v`` stripped if it is a plain ASCII decimal number (or a NaN/infinity word, refused later)."""
    s = v.strip()
    if _NUMBER.match(s) or s.lower() in _NON_FINITE:
        return s
    raise CoercionError("not a number")


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise CoercionError("a boolean is not a number")
    if isinstance(v, (int, float, decimal.Decimal)):
        f = float(v)
    elif isinstance(v, str):
        f = float(_number_text(v))
    else:
        raise CoercionError("not a number")
    if not math.isfinite(f):
        raise CoercionError("not a finite number")
    return f


def _to_decimal(scale: int, precision: int) -> Callable[[Any], decimal.Decimal]:
    quantum = decimal.Decimal(1).scaleb(-scale)

    def conv(v: Any) -> decimal.Decimal:
        if isinstance(v, bool):
            raise CoercionError("a boolean is not a number")
        if isinstance(v, float):
            if not math.isfinite(v):
                raise CoercionError("not a finite number")
            d = decimal.Decimal(repr(v))
        elif isinstance(v, (int, decimal.Decimal)):
            d = decimal.Decimal(v)
        elif isinstance(v, str):
            try:
                d = decimal.Decimal(_number_text(v))
            except (CoercionError, decimal.InvalidOperation):
                raise CoercionError("not a decimal number") from None
        else:
            raise CoercionError("not a decimal number")
        if not d.is_finite():
            raise CoercionError("not a finite number")
        try:
            q = d.quantize(quantum, rounding=decimal.ROUND_HALF_EVEN)
        except decimal.InvalidOperation:  # needs more digits than the context's 28: far past any precision
            raise CoercionError(f"has more than {precision} digits") from None
        if q != d:
            raise CoercionError(f"has more than {scale} decimal places")
        if len(q.as_tuple().digits) > precision:
            raise CoercionError(f"has more than {precision} digits")
        return q

    return conv


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, decimal.Decimal)):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise CoercionError("not a finite number")
        return repr(v)
    if isinstance(v, (dict, list)):
        return _JSON_TEXT(v)
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        raise CoercionError("bytes are not text")
    return str(v)


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise CoercionError("not a boolean")


def _to_datetime(tz: str | None) -> Callable[[Any], dt.datetime]:
    def conv(v: Any) -> dt.datetime:
        if isinstance(v, dt.datetime):
            out = v
        elif isinstance(v, str) and _TS.match(v.strip()) or isinstance(v, str) and _DATE.match(v.strip()):
            try:
                out = dt.datetime.fromisoformat(v.strip())
            except ValueError:
                raise CoercionError("not a valid timestamp") from None
        elif isinstance(v, dt.date):
            out = dt.datetime(v.year, v.month, v.day)
        else:
            raise CoercionError("not a timestamp")
        if tz is None:
            if out.tzinfo is not None:
                out = out.astimezone(dt.UTC).replace(tzinfo=None)
        elif out.tzinfo is None:
            out = out.replace(tzinfo=dt.UTC)
        return out

    return conv


def _to_date(v: Any) -> dt.date:
    if isinstance(v, dt.datetime):
        if v.time() != dt.time(0):
            raise CoercionError("has a time of day; a date column would lose it")
        return v.date()
    if isinstance(v, dt.date):
        return v
    if isinstance(v, str) and _DATE.match(v.strip()):
        try:
            return dt.date.fromisoformat(v.strip())
        except ValueError:
            raise CoercionError("not a valid date") from None
    raise CoercionError("not a date")


def _to_binary(v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise CoercionError("not bytes")


def converter(t: pa.DataType) -> Callable[[Any], Any]:
    """The strict converter of Python values to Arrow type ``t``."""
    if pa.types.is_integer(t):
        bits = t.bit_width

        def to_int(v: Any) -> int:
            i = _to_int(v)
            lim = 1 << (bits - 1)
            if not -lim <= i < lim:
                raise CoercionError(f"does not fit in {bits} bits")
            return i

        return to_int
    if pa.types.is_floating(t):
        return _to_float
    if pa.types.is_decimal(t):
        return _to_decimal(t.scale, t.precision)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _to_str
    if pa.types.is_boolean(t):
        return _to_bool
    if pa.types.is_timestamp(t):
        return _to_datetime(t.tz)
    if pa.types.is_date(t):
        return _to_date
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _to_binary
    if pa.types.is_struct(t):
        return _to_struct(t)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _to_list(t.value_type)
    return lambda v: v


def _nested(conv: Callable[[Any], Any], v: Any, step: str, t: pa.DataType) -> Any:
    """``conv(v)`` for the value at ``step`` of a struct or list: a failure names the path from there."""
    try:
        return conv(v)
    except CoercionError as e:
        if e.type is None:  # raised by a scalar converter: the value and type are this step's
            raise CoercionError(e.message, step, v, t) from None
        raise CoercionError(e.message, step + e.path, e.value, e.type) from None


def _to_struct(t: pa.StructType) -> Callable[[Any], dict[str, Any]]:
    """Strict: a JSON object whose keys are all fields of ``t`` (a missing one is null), each value converted
    to its field's type."""
    fields = [(f.name, f.type, converter(f.type)) for f in t]
    names = {f.name for f in t}

    def conv(v: Any) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise CoercionError(f"{_shape(v)} is not an object")
        unknown = [k for k in v if k not in names]
        if unknown:
            raise CoercionError(
                f"has key {unknown[0]!r}, not a field of the declared struct ({', '.join(sorted(names))}); add it to the "
                "struct<...> in source.columns, or type the column string to keep the object as JSON text"
            )
        return {
            name: None if v.get(name) is None else _nested(fconv, v[name], f".{name}", ftype) for name, ftype, fconv in fields
        }

    return conv


def _to_list(item: pa.DataType) -> Callable[[Any], list[Any]]:
    """Strict: a JSON array, each item converted to ``item``."""
    iconv = converter(item)

    def conv(v: Any) -> list[Any]:
        if not isinstance(v, (list, tuple)):
            raise CoercionError(f"{_shape(v)} is not a list")
        return [None if x is None else _nested(iconv, x, f"[{i}]", item) for i, x in enumerate(v)]

    return conv


def _shape(v: Any) -> str:
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, str):
        return "text"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float, decimal.Decimal)):
        return "a number"
    return type(v).__name__


# ------------------------------------------------------------------ inference


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, decimal.Decimal):
        return "decimal"
    if isinstance(v, dt.datetime):
        return "timestamp"
    if isinstance(v, dt.date):
        return "date"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "binary"
    if isinstance(v, str):
        s = v.strip()
        if _TS.match(s) and not _DATE.match(s):
            return "timestamp"
        if _DATE.match(s):
            return "date"
        return "str"
    return "json"


def infer_type(values: Sequence[Any]) -> pa.DataType:
    """Infer one Arrow type for a column of Python values. The majority kind wins (ints and floats
    together make a double); values of a minority kind will then fail strict conversion and be
    quarantined rather than silently change the column's type."""
    counts = Counter(_kind(v) for v in values if v is not None)
    if not counts:
        return pa.string()
    if set(counts) <= {"int", "float"}:
        return pa.float64() if "float" in counts else pa.int64()
    kind, _ = counts.most_common(1)[0]
    if kind == "timestamp":
        tz = any(isinstance(v, dt.datetime) and v.tzinfo for v in values) or any(
            isinstance(v, str) and (v.endswith("Z") or re.search(r"[+-]\d{2}:?\d{2}$", v)) for v in values
        )
        return pa.timestamp("us", tz="UTC") if tz else pa.timestamp("us")
    return {
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "date": pa.date32(),
        "binary": pa.binary(),
        "decimal": pa.decimal128(38, 9),
    }.get(kind, pa.string())


# ------------------------------------------------------------------ columns


def convert_values(name: str, values: Sequence[Any], t: pa.DataType, bad: dict[int, str]) -> pa.Array:
    """Convert a column of Python values to an Arrow array of type ``t``. Values that cannot be typed
    exactly become null and their row index is recorded in ``bad`` with a reason (first reason wins)."""
    try:
        if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_string(t):
            # Fast path: pyarrow refuses mixed or lossy input, and then we walk the values.
            sample_kinds = {type(v) for v in values if v is not None}
            ok = (
                (pa.types.is_integer(t) and sample_kinds <= {int})
                or (pa.types.is_boolean(t) and sample_kinds <= {bool})
                or (pa.types.is_string(t) and sample_kinds <= {str})
            )
            if ok:
                return pa.array(values, type=t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    conv = converter(t)
    out: list[Any] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(conv(v))
        except CoercionError as e:
            out.append(None)
            if e.type is not None:  # inside a struct or list: the path to the value that failed
                bad.setdefault(i, f"type: column {name!r} at {name}{e.path}: value {describe(e.value)} {e} ({e.type})")
            else:
                bad.setdefault(i, f"type: column {name!r} value {describe(v)} {e} ({t})")
    return pa.array(out, type=t)


def records_to_table(
    records: Sequence[Mapping[str, Any]], types: Mapping[str, pa.DataType], names: Iterable[str] = ()
) -> tuple[pa.Table, dict[int, str]]:
    """Typed Arrow rows of decoded records (JSON objects): each column converted strictly to
    ``types[name]``, or to the type inferred from its values when ``types`` has none. ``names`` are
    columns to have even if no record does. A record with a key that cannot name a column (see
    :func:`icefield.columns.column_name_problem`) is bad. Returns the table and the bad rows with their
    reasons."""
    columns: dict[str, None] = dict.fromkeys(names)
    for r in records:
        columns.update(dict.fromkeys(r))
    bad: dict[int, str] = {}
    unusable = {k: problem for k in columns if (problem := column_name_problem(k)) is not None}
    if unusable:
        # A key that cannot be a column (empty, or in icefield's reserved namespace): its records are
        # refused whole, and it makes no column.
        for i, r in enumerate(records):
            if (k := next((k for k in r if k in unusable), None)) is not None:
                bad[i] = f"decode: key {k!r} {unusable[k]}; rename it in the record"
        for k in unusable:
            del columns[k]
    cols: dict[str, pa.Array] = {}
    for name in columns:
        values = [r.get(name) for r in records]
        cols[name] = convert_values(name, values, types.get(name) or infer_type(values), bad)
    table = pa.table(cols) if cols else pa.table({"_empty": pa.nulls(len(records))}).drop(["_empty"])
    return table, bad


def cast_column(name: str, arr: pa.Array | pa.ChunkedArray, t: pa.DataType, bad: dict[int, str]) -> pa.Array:
    """Cast an Arrow column to ``t`` strictly: a vectorised safe cast when Arrow's cast is as strict as
    the value converters and succeeds, else value by value with the failing rows recorded in ``bad``."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(arr.type, pa.BaseExtensionType):
        # e.g. ADBC's opaque PostgreSQL NUMERIC: its storage is the text of each value.
        arr = arr.storage
    if arr.type == t:
        return arr
    if _is_nested(arr.type) and _plain(arr.type) == _plain(t):
        # The same shape but for large or small offsets (Iceberg's schema reads lists and strings as large ones):
        # Arrow's cast changes no value.
        return pc.cast(arr, t, safe=True)
    if _arrow_cast_is_strict(arr, t):
        try:
            out = pc.cast(arr, t, safe=True)
            if pa.types.is_floating(t):
                _mark_non_finite(name, out, bad)
            return out
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
    if (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        out = _cast_text_numbers(name, arr, t, bad)
        if out is not None:
            return out
    return convert_values(name, arr.to_pylist(), t, bad)


def _cast_text_numbers(name: str, arr: pa.Array, t: pa.DataType, bad: dict[int, str]) -> pa.Array | None:
    """Text to an integer or float type, vectorised, when only a few values are not plain ASCII numbers:
    those few are judged by the value converter (for their reason) and become nulls in bad rows. Returns
    None when the column must be converted value by value instead (many odd values, one the converter
    accepts, such as " 12 ", or a number out of range)."""
    pattern = _INT.pattern if pa.types.is_integer(t) else _NUMBER.pattern
    plain = pc.fill_null(pc.match_substring_regex(arr, pattern), True)
    odd = pc.indices_nonzero(pc.invert(plain)).to_pylist()
    if len(odd) > max(16, len(arr) // 10):
        return None
    conv = converter(t)
    reasons: dict[int, str] = {}
    for i in odd:
        v = arr[i].as_py()
        try:
            conv(v)
        except CoercionError as e:
            reasons[i] = f"type: column {name!r} value {describe(v)} {e} ({t})"
            continue
        return None
    try:
        out = pc.cast(pc.if_else(plain, arr, pa.scalar(None, arr.type)), t, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    for i, reason in reasons.items():
        bad.setdefault(i, reason)
    if pa.types.is_floating(t):
        _mark_non_finite(name, out, bad)
    return out


def _is_nested(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) or pa.types.is_list(t) or pa.types.is_large_list(t)


def _plain(t: pa.DataType) -> pa.DataType:
    """``t`` with large lists, strings and binaries as their small kinds and nested fields without metadata."""
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _plain(f.type), f.nullable) for f in t])
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        f = t.value_field
        return pa.list_(pa.field(f.name, _plain(f.type), f.nullable))
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    return t


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _arrow_cast_is_strict(arr: pa.Array, t: pa.DataType) -> bool:
    """Whether Arrow's safe cast of ``arr`` to ``t`` refuses what the value converters refuse. It does
    not for booleans (True becomes 1, 2 becomes True), timestamps to dates (the time of day is dropped),
    numbers to and from timestamps (epoch values), floats to decimals (1.005 becomes 1.00) or hexadecimal
    text to integers ("0x10" becomes 16)."""
    src = arr.type
    if pa.types.is_null(src):
        return True
    if _is_number(src) and _is_number(t):
        return not (pa.types.is_floating(src) and pa.types.is_decimal(t))
    if pa.types.is_timestamp(t) and (pa.types.is_timestamp(src) or pa.types.is_date(src)):
        return True
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return not (pa.types.is_binary(src) or pa.types.is_large_binary(src))
    if (pa.types.is_string(src) or pa.types.is_large_string(src)) and pa.types.is_decimal(t):
        # Arrow refuses text that is not a decimal, that loses digits or that does not fit.
        return True
    if (pa.types.is_string(src) or pa.types.is_large_string(src)) and _is_number(t) and not pa.types.is_decimal(t):
        if pa.types.is_integer(t):
            return bool(pc.all(pc.match_substring_regex(arr, _INT.pattern)).as_py() is not False)
        return True
    return False


def _mark_non_finite(name: str, arr: pa.Array, bad: dict[int, str]) -> None:
    finite = pc.is_finite(arr)
    nonfinite = pc.and_(pc.invert(finite), pc.is_valid(arr))
    if pc.any(nonfinite).as_py():
        for i in pc.indices_nonzero(nonfinite).to_pylist():
            bad.setdefault(i, f"type: column {name!r} value {arr[i].as_py()!r} not a finite number")


def conform(table: pa.Table, schema: pa.Schema) -> tuple[pa.Table, dict[int, str]]:
    """Cast ``table``'s columns to the types of the same-named fields in ``schema``.

    Columns absent from ``table`` are added as nulls; columns absent from ``schema`` are kept as they
    are (schema evolution decides about them). Returns the typed table and the bad rows with reasons.
    """
    bad: dict[int, str] = {}
    cols: dict[str, pa.Array] = {}
    names = set(table.column_names)
    for f in schema:
        if f.name in names:
            col = table.column(f.name)
            # Already typed (the usual case): kept as it is, chunks and all, instead of copied into one.
            cols[f.name] = col if col.type == f.type else cast_column(f.name, col, f.type, bad)
        else:
            cols[f.name] = pa.nulls(table.num_rows, type=f.type)
    for name in table.column_names:
        if name not in cols:
            cols[name] = table.column(name).combine_chunks()
    return pa.table(cols), bad
