"""Debezium change events (PostgreSQL connector, Kafka's JsonConverter) to Arrow rows, fast and strictly.

:func:`decode_events` takes raw Kafka message values (or JSON Lines lines) in either JsonConverter form,
with the embedded schema (``{"schema": ..., "payload": ...}``, ``schemas.enable=true``) or without
(``{"before": ..., "after": ..., "source": ..., "op": ..., "ts_ms": ...}``), and returns one Arrow row per
row-carrying event (``c`` insert, ``u`` update, ``r`` snapshot read, ``d`` delete) with meta columns, the
truncates (``t``), the tombstones (null values) and the rejected records. It never raises for a bad
record; every input is accounted for exactly once::

    len(values) == rows.num_rows + len(truncates) + len(tombstones) + len(rejected)

Ordering. A change's position is ``source.sequence`` = ``["<commit LSN>", "<LSN>"]``, exposed as the
meta columns ``__seq_commit`` and ``__seq_lsn`` (null elements are 0; without a sequence both are
``source.lsn``). Order changes by the pair, lexicographically (:func:`sequence_key`), **never by the LSN
alone**: PostgreSQL's per-row LSNs interleave across concurrent transactions, so a row of a transaction
that committed later can carry a smaller LSN than a row of one that committed earlier
(``docs/architecture.md``, "The write path", rule 3).
Snapshot reads carry ``[null, "<lsn>"]``, so they sort before every streamed change.

Other meta columns: ``__op`` (``c``/``u``/``r``/``d``), ``__ts_ms`` (``source.ts_ms``, the commit time in
PostgreSQL; the envelope's ``ts_ms``, when the connector saw it, if the source has none), ``__txid``
(``source.txId``, may be null) and ``__index`` (the event's position in the input, for offsets and
coordinates).

Speed. JSON is parsed by ``orjson``; the embedded schema, identical in every event of a table, is parsed
and planned once per call: an event whose bytes start with an already seen ``{"schema":<same>,"payload":``
prefix has only its payload parsed. Columns are then built column-wise (see ``debezium_types``).

What this module does not do: the merge (deletes, truncates, dedupe by sequence), and filling
PostgreSQL's unchanged TOAST values, which Debezium sends as the placeholder
:data:`UNAVAILABLE_VALUE` in updates of tables without ``REPLICA IDENTITY FULL``: they are only marked
(column :data:`UNCHANGED`), and the writer takes the stored value (:mod:`icefield.write.unchanged`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from icefield.ingest import Rejected
from icefield.ingest.coerce import _TS as ISO_TIMESTAMP
from icefield.ingest.coerce import convert_values, describe, infer_type
from icefield.ingest.debezium_types import (
    MIN_TS_US,
    VARIABLE_SCALE_DECIMAL,
    FieldPlan,
    SchemaPlanError,
    TypeOptions,
    common_type,
    convert_column,
    default_stands_in,
    is_variable_decimal,
    plan_struct,
    widens_to,
)
from icefield.ingest.debezium_unchanged import UNAVAILABLE_VALUE as UNAVAILABLE_VALUE
from icefield.ingest.debezium_unchanged import UNCHANGED as UNCHANGED
from icefield.ingest.debezium_unchanged import mark_unchanged

log = logging.getLogger(__name__)

OP = "__op"
SEQ_COMMIT = "__seq_commit"
SEQ_LSN = "__seq_lsn"
TS_MS = "__ts_ms"
TXID = "__txid"
INDEX = "__index"
META_COLUMNS = (OP, SEQ_COMMIT, SEQ_LSN, TS_MS, TXID, INDEX)
META_SCHEMA = pa.schema(
    [(OP, pa.string()), (SEQ_COMMIT, pa.int64()), (SEQ_LSN, pa.int64()), (TS_MS, pa.int64()), (TXID, pa.int64()), (INDEX, pa.int64())]
)
ROW_OPS = frozenset({"c", "u", "r", "d"})
OPS = ROW_OPS | {"t"}
DEFAULTS = "__defaults"
"""A struct column of the defaults the embedded schema gives columns the table lacks (on every row), only
when there are any; the writer gives them to the rows the table already holds."""
_VARIABLE_PLAN = FieldPlan("vdecimal", pa.decimal128(38, 18), VARIABLE_SCALE_DECIMAL)

DEFAULT_MAX_RECORD_BYTES = 8 << 20
DEFAULT_MAX_DEPTH = 64

_TRAILING_SPACE = frozenset({b" ", b"\n", b"\r", b"\t"})
_HEAD = b'{"schema":'
_PAYLOAD = ',"payload":'
_MAX_PREFIXES = 16
_INT64_MAX = (1 << 63) - 1
_SEQUENCE = re.compile(r'^\[\s*(?:null|"(\d{1,19})")\s*,\s*(?:null|"(\d{1,19})")\s*\]$', re.ASCII)


@dataclass(frozen=True)
class Truncate:
    """A ``t`` event: the input index and its position (truncate empties the table at that position)."""

    index: int
    seq_commit: int
    seq_lsn: int
    ts_ms: int | None


@dataclass
class DecodedEvents:
    """What :func:`decode_events` made of its input.

    ``rows``: the table's columns, then :data:`META_COLUMNS`, then :data:`DEFAULTS` and :data:`UNCHANGED`
    when there are any, one row per ``c``/``u``/``r``/``d`` event in input order. ``truncates``, ``tombstones`` and ``rejected`` account for the other inputs;
    ``rejected_indices[k]`` is the input index of ``rejected[k]``. ``key_columns`` are the field names of
    the first decodable message key (empty without keys). ``notes`` say where a column's type was decided
    from the data or the schemas disagreed (also logged).
    """

    rows: pa.Table
    truncates: list[Truncate] = field(default_factory=list)
    tombstones: list[int] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    rejected_indices: list[int] = field(default_factory=list)
    key_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def accounted(self) -> int:
        """Inputs accounted for: equals the number of values decoded."""
        return self.rows.num_rows + len(self.truncates) + len(self.tombstones) + len(self.rejected)


def sequence_key(seq_commit: int, seq_lsn: int) -> tuple[int, int]:
    """The sort key of a change: ``(commit LSN, LSN)``, compared lexicographically.

    Within one table the change with the larger key is the newer one. Never order by the LSN alone (see
    the module docstring); ties (the same event delivered twice) are the same change.
    """
    return (seq_commit, seq_lsn)


def parse_sequence(text: str) -> tuple[int, int]:
    """``source.sequence`` (``'["24023119","24023128"]'``; either element may be null, read as 0) to
    ``(commit LSN, LSN)``. Raises ValueError naming the text."""
    if text.startswith('["') and text.endswith('"]'):
        parts = text[2:-2].split('","')
        if len(parts) == 2 and all(p.isascii() and p.isdigit() and len(p) <= 19 for p in parts):
            commit, lsn = int(parts[0]), int(parts[1])
            if commit <= _INT64_MAX and lsn <= _INT64_MAX:
                return commit, lsn
    m = _SEQUENCE.match(text)
    if m:
        commit, lsn = int(m.group(1) or 0), int(m.group(2) or 0)
        if commit <= _INT64_MAX and lsn <= _INT64_MAX:
            return commit, lsn
    raise ValueError(f'source.sequence {describe(text)} is not a ["<commit lsn>", "<lsn>"] pair of 64-bit numbers')


def escape_raw(value: bytes | str) -> str:
    """Text of a raw record for the quarantine. Valid UTF-8 is kept as is; otherwise the escaping is
    lossless: backslashes are doubled and each invalid byte (or unpaired surrogate) becomes ``\\xNN``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.replace("\\", "\\\\").encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def decode_events(
    values: Sequence[bytes | str | None],
    keys: Sequence[bytes | str | None] | None = None,
    *,
    coords: Sequence[str] | None = None,
    table_schema: pa.Schema | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    types: TypeOptions | None = None,
) -> DecodedEvents:
    """Decode Debezium change events; see the module docstring for the contract.

    ``keys`` are the message keys (same length; a delete without ``before`` takes its key columns from
    its key). ``coords`` name each input in rejections (default ``"event <i>"``). ``table_schema`` is the
    target table's Arrow schema: events without an embedded schema are typed as the table expects
    (strictly: ``"12abc"`` never becomes 12), and embedded types that widen losslessly to the table's are
    cast to it. ``types`` declares the type of unconstrained numeric columns and the PostgreSQL types of
    columns of events without the embedded schema. Records over ``max_record_bytes`` or nested deeper than
    ``max_depth`` are rejected.

    Unchanged TOAST values (:data:`UNAVAILABLE_VALUE` in an update, in any of the forms the connector
    gives it) are kept as they came and named in the column :data:`UNCHANGED` (see
    :mod:`icefield.ingest.debezium_unchanged`); the defaults the embedded schema gives columns that
    ``table_schema`` lacks are in the column :data:`DEFAULTS`, and rows of an older schema in the batch
    take them.

    Raises only for programming errors (a value that is not bytes, str or None; mismatched lengths).
    """
    n = len(values)
    if keys is not None and len(keys) != n:
        raise ValueError(f"decode_events: {len(keys)} keys for {n} values; pass one key per value or none")
    if coords is not None and len(coords) != n:
        raise ValueError(f"decode_events: {len(coords)} coordinates for {n} values")
    types = types or TypeOptions()
    if _FAST:
        try:
            fast = _fast_decode(values, keys, table_schema, max_record_bytes, max_depth, types)
        # pyarrow built an array it cannot read back, or kept a field name that is not UTF-8 (only its
        # string values are validated): decode record by record, which rejects such records by name.
        except (pa.ArrowException, UnicodeDecodeError) as e:
            log.debug("debezium decode: the columnar path gave up (%s); decoding record by record", e)
            fast = None
        if fast is not None:
            return _marked(fast, types)
    decoder = _Decoder(keys, coords, table_schema, max_record_bytes, max_depth, types)
    for i, value in enumerate(values):
        decoder.event(i, value)
    return _marked(decoder.finish(values), types)


def _marked(decoded: DecodedEvents, types: TypeOptions) -> DecodedEvents:
    """``decoded`` with its unchanged TOAST values named in the column :data:`UNCHANGED`."""
    decoded.rows = mark_unchanged(decoded.rows, OP, (*META_COLUMNS, DEFAULTS), types.placeholder)
    return decoded


# ------------------------------------------------------------------ internals


class _Reject(Exception):
    """A record cannot be decoded; the message is the reason."""


class _Schema:
    """An embedded value schema, planned: the row columns and their converters."""

    __slots__ = ("fields", "names", "error")

    def __init__(self, schema: Any) -> None:
        self.fields: dict[str, FieldPlan] = {}
        self.error: str | None = None
        try:
            if not isinstance(schema, dict) or not isinstance(schema.get("fields"), list):
                raise SchemaPlanError("the envelope schema is not a struct with fields")
            row = next(
                (f for f in schema["fields"] if isinstance(f, dict) and f.get("field") == "after"),
                next((f for f in schema["fields"] if isinstance(f, dict) and f.get("field") == "before"), None),
            )
            if row is None:
                raise SchemaPlanError("the envelope schema has no 'after' or 'before' field")
            self.fields = plan_struct(row)
        except SchemaPlanError as e:
            self.error = f"decode: embedded schema: {e}"
        self.names = frozenset(self.fields)


class _Decoder:
    def __init__(
        self,
        keys: Sequence[bytes | str | None] | None,
        coords: Sequence[str] | None,
        table_schema: pa.Schema | None,
        max_record_bytes: int,
        max_depth: int,
        types: TypeOptions | None = None,
    ) -> None:
        self.keys = keys
        self.coords = coords
        self.table_types: dict[str, pa.DataType] = (
            {f.name: f.type for f in table_schema if f.name not in META_COLUMNS} if table_schema is not None else {}
        )
        self.has_table = table_schema is not None
        self.types = types or TypeOptions()
        self.max_bytes = max_record_bytes
        self.max_depth = max_depth
        self.prefixes: list[tuple[bytes, _Schema]] = []
        self.schemas: dict[bytes, _Schema] = {}
        # Row-carrying events: (row, schema, op, seq_commit, seq_lsn, ts_ms, txid, input index).
        self.events: list[tuple[dict[str, Any], _Schema | None, str, int, int, int | None, int | None, int]] = []
        self.rows: list[dict[str, Any]] = []
        self.index: list[int] = []
        self.truncates: list[Truncate] = []
        self.tombstones: list[int] = []
        self.rejected: list[tuple[int, str]] = []
        self.notes: list[str] = []

    # -------------------------------------------------------------- one event

    def event(self, i: int, value: bytes | str | None) -> None:
        if value is None:
            self.tombstones.append(i)
            return
        try:
            self._event(i, value)
        except _Reject as e:
            self.rejected.append((i, str(e)))
        except RecursionError:
            self.rejected.append((i, f"decode: nested deeper than {self.max_depth} levels"))

    def _event(self, i: int, value: bytes | str) -> None:
        if type(value) is bytes:
            data = value
        elif isinstance(value, str):
            try:
                data = value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise _Reject(f"decode: invalid UTF-8: unpaired surrogate at character {e.start}") from None
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        else:
            raise TypeError(f"decode_events: value {i} is a {type(value).__name__}; pass bytes, str or None")
        if len(data) > self.max_bytes:
            raise _Reject(
                f"decode: record of {len(data)} bytes exceeds the limit of {self.max_bytes} bytes (max_record_bytes)"
            )
        payload, schema = self._envelope(data)
        if type(payload) is not dict:
            if payload is None:
                self.tombstones.append(i)
                return
            raise _Reject(f"decode: a change event must be a JSON object, got {_json_type(payload)}")
        op = payload.get("op")
        if type(op) is not str or op not in OPS:
            if op is None and schema is None and not ("before" in payload or "after" in payload):
                raise _Reject("decode: not a Debezium change event: no 'op' field and no schema/payload envelope")
            raise _Reject(f"decode: unknown op {describe(op)} (field 'op'); expected one of c, u, d, r, t")
        source = payload.get("source")
        if type(source) is not dict:
            raise _Reject(f"decode: field 'source' must be an object, got {_json_type(source)}; the event cannot be ordered")
        seq = source.get("sequence")
        if type(seq) is str and seq[:2] == '["' and seq[-2:] == '"]':
            # The usual shape, read without the general parser: two quoted numbers of at most 18 digits.
            a, sep, b = seq[2:-2].partition('","')
            if sep and len(a) <= 18 and len(b) <= 18 and a.isdigit() and b.isdigit() and a.isascii() and b.isascii():
                commit, lsn = int(a), int(b)
            else:
                commit, lsn = _position(source)
        else:
            commit, lsn = _position(source)
        ts = source.get("ts_ms")
        if ts is None:
            ts = payload.get("ts_ms")
        if ts is not None and (type(ts) is not int or not -(1 << 63) <= ts <= _INT64_MAX):
            raise _Reject(f"decode: field 'source.ts_ms' value {describe(ts)} is not a 64-bit integer")
        txid = source.get("txId")
        if txid is not None and (type(txid) is not int or not -(1 << 63) <= txid <= _INT64_MAX):
            raise _Reject(f"decode: field 'source.txId' value {describe(txid)} is not a 64-bit integer")
        if op == "t":
            self.truncates.append(Truncate(i, commit, lsn, ts))
            return
        if schema is not None and schema.error is not None:
            raise _Reject(schema.error)
        row: Any
        if op == "d":
            row = self._deleted_row(i, payload.get("before"))
        else:
            row = payload.get("after")
            if type(row) is not dict:
                raise _Reject(f"decode: op {op!r} needs an 'after' row, field 'after' is {_json_type(row)}")
        self.events.append((row, schema, op, commit, lsn, ts, txid, i))

    def _deleted_row(self, i: int, before: Any) -> dict[str, Any]:
        """The row a delete removes: ``before`` (all columns with REPLICA IDENTITY FULL, only the key's with
        DEFAULT), its missing key columns taken from the message key."""
        if before is not None and not isinstance(before, dict):
            raise _Reject(f"decode: op 'd' field 'before' must be an object or null, got {_json_type(before)}")
        row: dict[str, Any] = before or {}
        try:
            key = self._key(i)
        except _Reject:
            if row:
                key = None  # the key only completes a partial 'before'; this one has its own values
            else:
                raise
        if key:
            missing = {k: v for k, v in key.items() if row.get(k) is None}
            if missing:
                row = {**row, **missing}
        if not row:
            raise _Reject("decode: op 'd' carries no key: field 'before' is null and the message key is missing")
        return row

    def _key(self, i: int) -> dict[str, Any] | None:
        if self.keys is None or self.keys[i] is None:
            return None
        try:
            key = self._parse_key(self.keys[i])
        except _Reject as e:
            raise _Reject(f"decode: message key: {str(e).removeprefix('decode: ')}") from None
        return key

    def _parse_key(self, raw: bytes | str | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        if isinstance(raw, str):
            data = raw.encode("utf-8", "surrogatepass")  # an unpaired surrogate then fails the parse
        elif isinstance(raw, (bytes, bytearray, memoryview)):
            data = bytes(raw)
        else:
            raise TypeError(f"decode_events: a key is a {type(raw).__name__}; pass bytes, str or None")
        if len(data) > self.max_bytes:
            raise _Reject(f"record of {len(data)} bytes exceeds the limit of {self.max_bytes} bytes")
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise _Reject(f"not valid JSON: {e}") from None
        if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
            doc = doc["payload"]
        if doc is None:
            return None
        if not isinstance(doc, dict):
            raise _Reject(f"a key must be a JSON object, got {_json_type(doc)}")
        self._check_depth(data, doc)
        return doc

    def _envelope(self, data: bytes) -> tuple[Any, _Schema | None]:
        """The payload and the planned embedded schema (None without one)."""
        if data[-1:] in _TRAILING_SPACE:
            data = data.rstrip()
        if self.prefixes and data[-1:] == b"}" and data.startswith(_HEAD):
            for prefix, schema in self.prefixes:
                if data.startswith(prefix):
                    tail = data[len(prefix) : -1]
                    try:
                        payload = orjson.loads(tail)
                    except orjson.JSONDecodeError:
                        break  # the whole-record parse below names the error precisely
                    if tail.count(b"{") + tail.count(b"[") > self.max_depth:
                        self._check_depth(tail, payload)
                    return payload, schema
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise _Reject(_json_error(data, e)) from None
        if data.count(b"{") + data.count(b"[") > self.max_depth:
            self._check_depth(data, doc)
        if type(doc) is dict and "schema" in doc and "payload" in doc:
            if doc["schema"] is None:
                return doc["payload"], None
            return doc["payload"], self._schema(data, doc["schema"])
        return doc, None

    def _schema(self, data: bytes, schema: Any) -> _Schema:
        canonical = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        planned = self.schemas.get(canonical)
        if planned is None:
            planned = self.schemas[canonical] = _Schema(schema)
        if data.startswith(_HEAD) and len(self.prefixes) < _MAX_PREFIXES:
            prefix = _schema_prefix(data)
            if prefix is not None and all(p != prefix for p, _ in self.prefixes):
                self.prefixes.append((prefix, planned))
        return planned

    def _check_depth(self, data: bytes, doc: Any) -> None:
        # Counting brackets is a fast upper bound of the depth; walk the parsed value only past it.
        if data.count(b"{") + data.count(b"[") > self.max_depth and _depth(doc, self.max_depth) > self.max_depth:
            raise _Reject(f"decode: nested deeper than {self.max_depth} levels (max_depth)")

    # -------------------------------------------------------------- the table

    def finish(self, values: Sequence[bytes | str | None]) -> DecodedEvents:
        table, bad = self._table()
        rejected = list(self.rejected)
        if bad:
            rejected.extend((self.index[p], reason) for p, reason in bad.items())
            keep = [p for p in range(table.num_rows) if p not in bad]
            table = table.take(pa.array(keep, pa.int64()))
        rejected.sort()
        out = DecodedEvents(
            rows=table,
            truncates=self.truncates,
            tombstones=sorted(self.tombstones),
            rejected=[Rejected(escape_raw(_raw(values[i])), self._coords(i), "decode", reason) for i, reason in rejected],
            rejected_indices=[i for i, _ in rejected],
            key_columns=self._key_columns(),
            notes=self.notes,
        )
        for note in self.notes:
            log.info("debezium decode: %s", note)
        return out

    def _coords(self, i: int) -> str:
        return self.coords[i] if self.coords is not None else f"event {i}"

    def _key_columns(self) -> list[str]:
        if self.keys is None:
            return []
        for raw in self.keys:
            try:
                key = self._parse_key(raw)
            except _Reject:
                continue
            if key:
                return list(key)
        return []

    def _table(self) -> tuple[pa.Table, dict[int, str]]:
        n = len(self.events)
        if n:
            rows, row_schema, ops, commits, lsns, ts, txids, index = (list(c) for c in zip(*self.events, strict=True))
        else:
            rows, row_schema, ops, commits, lsns, ts, txids, index = [], [], [], [], [], [], [], []
        self.rows, self.index = rows, index
        bad: dict[int, str] = {}
        # Rows sharing one planned schema (or none) form a group, converted together; usually one group.
        groups: list[tuple[_Schema | None, list[int]]]
        if n and row_schema.count(row_schema[0]) == n:
            groups = [(row_schema[0], list(range(n)))]
        else:
            by_id: dict[int, tuple[_Schema | None, list[int]]] = {}
            for p, sch in enumerate(row_schema):
                g = by_id.get(id(sch))
                if g is None:
                    by_id[id(sch)] = (sch, [p])
                else:
                    g[1].append(p)
            groups = list(by_id.values())
        names: dict[str, None] = {}
        columns: list[dict[str, Sequence[Any]]] = []
        for schema, positions in groups:
            grows = rows if len(positions) == n else [rows[p] for p in positions]
            if schema is not None:
                names.update(dict.fromkeys(schema.fields))
                extra = set().union(*grows) - schema.names
                if extra:
                    for p, row in zip(positions, grows, strict=True):
                        undeclared = row.keys() & extra
                        if undeclared:
                            bad.setdefault(p, f"decode: field {sorted(undeclared)[0]!r} of the row is not in its embedded schema")
                columns.append(_columns(grows, list(schema.fields), not extra))
            else:
                seen = dict.fromkeys(chain.from_iterable(grows))
                names.update(seen)
                columns.append({name: [r.get(name) for r in grows] for name in seen})
        for name in names.keys() & set(META_COLUMNS):
            for p, row in enumerate(rows):
                if name in row:
                    bad.setdefault(p, f"decode: column {name!r} collides with icefield's meta column of that name")
        defaults = self._defaults(groups)
        cols: dict[str, pa.Array] = {}
        for name in names:
            if name in META_COLUMNS:
                continue
            parts = [
                self._part(name, schema, positions, group_columns.get(name), bad, defaults.get(name))
                for (schema, positions), group_columns in zip(groups, columns, strict=True)
            ]
            cols[name] = parts[0] if len(groups) == 1 else self._unify(name, parts, [pos for _, pos in groups], bad)
        if len(groups) > 1:
            inverse = [0] * n
            for k, p in enumerate(p for _, pos in groups for p in pos):
                inverse[p] = k
            take = pa.array(inverse, pa.int64())
            cols = {k: v.take(take) for k, v in cols.items()}
        cols[OP] = pa.array(ops, pa.string())
        cols[SEQ_COMMIT] = pa.array(commits, pa.int64())
        cols[SEQ_LSN] = pa.array(lsns, pa.int64())
        cols[TS_MS] = pa.array(ts, pa.int64())
        cols[TXID] = pa.array(txids, pa.int64())
        cols[INDEX] = pa.array(index, pa.int64())
        given = self._given_defaults(defaults, cols, n)
        if given is not None:
            cols[DEFAULTS] = given
        return pa.table(cols), bad

    def _defaults(self, groups: list[tuple[_Schema | None, list[int]]]) -> dict[str, tuple[FieldPlan, int]]:
        """The columns an embedded schema gives a default: ``(plan, position of the first row whose schema
        has the column)``; rows before it that lack the column take the default (PostgreSQL gave it to
        every row that existed when the column was added)."""
        out: dict[str, tuple[FieldPlan, int]] = {}
        for schema, positions in groups:
            if schema is None or not positions:
                continue
            for name, plan in schema.fields.items():
                if not plan.has_default:
                    continue
                if default_stands_in(plan):
                    if not self.has_table or name in self.table_types:
                        continue
                    note = (
                        f"column {name!r}: the schema's default {describe(plan.default)} is what the connector writes for a "
                        "default computed by a function (now(), gen_random_uuid()...); rows from before the column was added are left NULL"
                    )
                    if note not in self.notes:
                        self.notes.append(note)
                    continue
                held = out.get(name)
                if held is None or positions[0] < held[1]:
                    out[name] = (plan, positions[0])
        return out

    def _given_defaults(self, defaults: dict[str, tuple[FieldPlan, int]], cols: dict[str, pa.Array], n: int) -> pa.Array | None:
        """The :data:`DEFAULTS` column: a struct of the defaults of the columns the table lacks, typed as
        the batch's column, on every row; None when there are none (or no table yet: it is created with
        the batch's columns and holds no other rows)."""
        if not self.has_table or not n:
            return None
        fields, values = [], []
        for name, (plan, _) in defaults.items():
            if name in self.table_types or name not in cols:
                continue
            failed: dict[int, str] = {}
            typed = convert_column(name, self._typed(name, plan, None), [plan.default], failed)
            if failed:
                self.notes.append(f"column {name!r}: the schema's default {describe(plan.default)} does not fit its type; existing rows keep NULL")
                continue
            if typed.type != cols[name].type:
                try:
                    typed = typed.cast(cols[name].type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue
            fields.append(pa.field(name, typed.type))
            values.append(typed)
        if not fields:
            return None
        one = pa.StructArray.from_arrays(values, fields=fields)
        return pa.repeat(one[0], n)

    def _part(
        self,
        name: str,
        schema: _Schema | None,
        positions: list[int],
        values: Sequence[Any] | None,
        bad: dict[int, str],
        default: tuple[FieldPlan, int] | None = None,
    ) -> pa.Array:
        """Column ``name`` of the rows at ``positions`` (which share ``schema``); ``values`` are its JSON
        values (None: no row of the group has the column). ``default`` is ``(plan, position)``: the
        default a later schema gives the column, for the rows before ``position`` whose schema lacks it."""
        target = self.table_types.get(name)
        if values is None or (schema is not None and name not in schema.fields):
            if default is not None and schema is not None:
                given, first = default
                filled = [given.default if p < first else None for p in positions]
                arr = convert_column(name, self._typed(name, given, target), filled, {})
                return _to_table_type(arr, target) if target is not None and arr.type != target else arr
            return pa.nulls(len(positions), target or pa.null())
        local: dict[int, str] = {}
        plan: FieldPlan | None
        if schema is None:
            plan = self.types.declared.get(name)
            if plan is None and _variable_decimals_shape(values, target):
                plan = _VARIABLE_PLAN
        else:
            plan = schema.fields[name]
        if plan is None:
            text: pa.Array | None = None
            if target is not None:
                t = target
            else:
                t, text = _infer(values)
            arr = text if text is not None and pa.types.is_string(t) else None
            if arr is None and pa.types.is_timestamp(t):
                arr = _iso_timestamps(values, t, text)
            if arr is None and pa.types.is_float64(t) and all(type(v) is float for v in values if v is not None):
                arr = pa.array(values, t)  # JSON numbers with a fraction: finite doubles already
            if arr is None and pa.types.is_floating(t) and _numbers_or_non_finite(values):
                # JsonConverter writes a real's or a double's NaN and infinities as "NaN", "Infinity", "-Infinity":
                # values of the type, kept as with the schema.
                arr = convert_column(name, FieldPlan("float", t, str(t)), values, local)
            if arr is None:
                arr = convert_values(name, values, t, local)
        else:
            arr = convert_column(name, self._typed(name, plan, target), values, local)
            if target is not None and arr.type != target:
                arr = _to_table_type(arr, target)
        for j, reason in local.items():
            bad.setdefault(positions[j], reason)
        return arr

    def _typed(self, name: str, plan: FieldPlan, target: pa.DataType | None) -> FieldPlan:
        """``plan`` with its declared type when the column is an unconstrained numeric."""
        if plan.kind == "vdecimal" or (plan.kind == "dectext" and plan.precision == 0):
            return replace(plan, type=self.types.numeric_type(name, target))
        return plan

    def _unify(self, name: str, parts: list[pa.Array], positions: list[list[int]], bad: dict[int, str]) -> pa.Array:
        """Concatenate the parts of a column decoded under different schemas, in one common type."""
        t: pa.DataType | None = None
        for arr in parts:
            if pa.types.is_null(arr.type):
                continue
            t = arr.type if t is None else (common_type(t, arr.type) or pa.string())
        if t is None:
            t = pa.string()
        out = []
        for arr, pos in zip(parts, positions, strict=True):
            if arr.type == t:
                out.append(arr)
                continue
            try:
                out.append(arr.cast(t, safe=True))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                for p in pos:
                    bad.setdefault(p, f"decode: column {name!r} changed type within the batch to {t} and this row's {arr.type} value does not convert")
                out.append(pa.nulls(len(arr), t))
        if pa.types.is_string(t) and any(not pa.types.is_string(a.type) and not pa.types.is_null(a.type) for a in parts):
            self.notes.append(f"column {name!r} has different types under the schemas in this batch; kept as text")
        return pa.concat_arrays(out)


def _columns(rows: list[dict[str, Any]], names: list[str], exact: bool) -> dict[str, Sequence[Any]]:
    """The values of each of ``names`` in ``rows``, transposed in C when every row has exactly those
    keys (``exact``: no row has another key; a row of the same length then has them all)."""
    if not names:
        return {}
    if exact and len(names) > 1:
        k = len(names)
        getter = itemgetter(*names)
        try:
            tuples = [getter(r) if len(r) == k else tuple(map(r.get, names)) for r in rows]
        except KeyError:  # pragma: no cover - ruled out by ``exact``
            tuples = [tuple(map(r.get, names)) for r in rows]
        return dict(zip(names, zip(*tuples, strict=True), strict=True)) if tuples else {n: [] for n in names}
    return {name: [r.get(name) for r in rows] for name in names}


def _variable_decimals_shape(values: Sequence[Any], target: pa.DataType | None) -> bool:
    """Whether a column of an event without its schema is a VariableScaleDecimal (every value has its
    ``{"scale", "value"}`` shape) that the table has no other type for."""
    if target is not None and not (pa.types.is_decimal(target) or pa.types.is_string(target) or pa.types.is_large_string(target)):
        return False
    return any(v is not None for v in values) and all(v is None or is_variable_decimal(v) for v in values)


def _to_table_type(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast to the table's type when that loses nothing (by type); else keep the decoded type and let the
    writer classify the change."""
    if widens_to(arr.type, target):
        try:
            return arr.cast(target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return arr
    return arr


def _infer(values: Sequence[Any]) -> tuple[pa.DataType, pa.Array | None]:
    """:func:`infer_type`, with the common columns decided by their Python types and Arrow regexes
    instead of a regex per value: numbers, booleans, text with no date in it, ISO timestamps. Also
    returns the column as an Arrow string array when it had to build one (all values text)."""
    kinds = {type(v) for v in values}
    kinds.discard(type(None))
    if kinds == {int}:
        return pa.int64(), None
    if kinds == {int, float} or kinds == {float}:
        return pa.float64(), None
    if str in kinds and kinds & {int, float} and _numbers_or_non_finite(values):
        return pa.float64(), None  # numbers beside JsonConverter's "NaN" and "Infinity": doubles
    if kinds == {bool}:
        return pa.bool_(), None
    if kinds == {str}:
        arr = pa.array(values, pa.string())
        if not pc.any(pc.match_substring_regex(arr, r"\d{4}-\d{2}-\d{2}")).as_py():
            return pa.string(), arr  # neither a date nor a timestamp can be among them
        if pc.all(pc.match_substring_regex(arr, ISO_TIMESTAMP.pattern)).as_py() and not pc.any(
            pc.match_substring_regex(arr, r"^\d{4}-\d{2}-\d{2}$")
        ).as_py():
            zoned = pc.any(pc.match_substring_regex(arr, r"(Z|[+-]\d{2}:?\d{2})$")).as_py()
            return (pa.timestamp("us", tz="UTC") if zoned else pa.timestamp("us")), arr
        return infer_type(values), arr
    return infer_type(values), None


_NON_FINITE_TEXT = frozenset({"NaN", "Infinity", "-Infinity"})


def _numbers_or_non_finite(values: Sequence[Any]) -> bool:
    """Whether every value is a JSON number or JsonConverter's text of a non-finite double."""
    return all(v is None or type(v) in (int, float) or (type(v) is str and v in _NON_FINITE_TEXT) for v in values)


def _iso_timestamps(values: Sequence[Any], t: pa.DataType, text: pa.Array | None = None) -> pa.Array | None:
    """A column of ISO-8601 text parsed by Arrow in one go, or None when some value is not text of the
    shape the strict converter accepts or Arrow refuses one (then the strict converter walks them).
    ``text`` is the column already as an Arrow string array, if at hand."""
    if text is None:
        if any(type(v) is not str for v in values if v is not None):
            return None
        text = pa.array(values, pa.string())
    if pc.all(pc.match_substring_regex(text, ISO_TIMESTAMP.pattern)).as_py() is False:
        return None
    try:
        out = pc.cast(text, t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    lo = pc.min(out.cast(pa.int64()) if t.unit == "us" else pc.cast(out, pa.timestamp("us", t.tz)).cast(pa.int64()))
    if lo.is_valid and lo.as_py() < MIN_TS_US:
        return None
    return out


def _position(source: dict[str, Any]) -> tuple[int, int]:
    seq = source.get("sequence")
    if seq is not None:
        if type(seq) is not str:
            raise _Reject(f"decode: field 'source.sequence' value {describe(seq)} is not text")
        try:
            return parse_sequence(seq)
        except ValueError as e:
            raise _Reject(f"decode: field {e}") from None
    lsn = source.get("lsn")
    if lsn is None:
        raise _Reject("decode: neither 'source.sequence' nor 'source.lsn' is set; the event cannot be ordered")
    if not _is_int64(lsn) or lsn < 0:
        raise _Reject(f"decode: field 'source.lsn' value {describe(lsn)} is not a 64-bit LSN")
    return lsn, lsn


def _is_int64(v: Any) -> bool:
    return type(v) is int and -(1 << 63) <= v <= _INT64_MAX


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "an array", str: "text", bool: "a boolean", int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def _json_error(data: bytes, e: orjson.JSONDecodeError) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as u:
        return f"decode: invalid UTF-8 at byte {u.start}"
    if "depth" in str(e) or "recursion" in str(e):
        return "decode: nested deeper than the JSON parser allows (max_depth)"
    return f"decode: not valid JSON: {e}"


def _schema_prefix(data: bytes) -> bytes | None:
    """``{"schema":<schema JSON>,"payload":`` of a record, exactly as its bytes spell it, or None."""
    try:
        text = data.decode("utf-8")
        _, end = json.JSONDecoder().raw_decode(text, len(_HEAD))
    except (ValueError, RecursionError):
        return None
    if not text.startswith(_PAYLOAD, end):
        return None
    return text[: end + len(_PAYLOAD)].encode("utf-8")


def _depth(doc: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (objects and arrays), stopping once past ``limit``."""
    deepest = 0
    stack = [(doc, 1)] if isinstance(doc, (dict, list)) else []
    while stack:
        node, d = stack.pop()
        if d > deepest:
            deepest = d
            if deepest > limit:
                return deepest
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, d + 1))
    return deepest


def _raw(value: bytes | str | None) -> bytes | str:
    if value is None:
        return ""
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


# ------------------------------------------------------------------ the columnar fast path

_FAST = True  # tests switch it off to compare with the record path
_ENVELOPE_FIELDS = frozenset({"before", "after", "source", "op", "ts_ms", "ts_us", "ts_ns", "transaction"})
_FAST_SEQUENCE = r'^\[(?:null|"(?P<commit>\d{1,18})"),"(?P<lsn>\d{1,18})"\]$'
_DATE_LIKE = r"\d{4}-\d{2}-\d{2}"
_EXACT_DOUBLE = float(1 << 53)


# A batch of at least _PARALLEL_BYTES is parsed in blocks of _BLOCK_BYTES on every core, typed by its
# first _SAMPLE_BYTES (pyarrow infers types per block, and blocks that infer differently cannot be joined).
_PARALLEL_BYTES = 8 << 20
_SAMPLE_BYTES = 1 << 20
_BLOCK_BYTES = 4 << 20


def _parse_lines(buf: bytes) -> pa.Table:
    """Newline-delimited envelopes parsed by pyarrow: in parallel blocks typed by a sample when the batch
    is large and the sample gives a full schema, else in one block typed by all of it. The parallel read
    raises (and the one-block read is made instead) when any value does not fit the sample's types."""
    import io

    import pyarrow.json as pj

    if len(buf) >= _PARALLEL_BYTES:
        cut = buf.find(b"\n", _SAMPLE_BYTES)
        if cut > 0:
            try:
                sample = pj.read_json(io.BytesIO(buf[:cut]), read_options=pj.ReadOptions(use_threads=False, block_size=cut + 1))
                schema = _sample_schema(sample.schema)
                if schema is not None:
                    return pj.read_json(
                        io.BytesIO(buf),
                        read_options=pj.ReadOptions(use_threads=True, block_size=_BLOCK_BYTES),
                        parse_options=pj.ParseOptions(explicit_schema=schema),
                    )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                log.debug("debezium decode: a value does not fit the sample's types; parsing the batch in one block")
    read = pj.ReadOptions(use_threads=False, block_size=max(1 << 20, len(buf) + 1))
    return pj.read_json(io.BytesIO(buf), read_options=read)


def _sample_schema(schema: pa.Schema) -> pa.Schema | None:
    """The sample's envelope schema for the whole batch, or None when the sample cannot type it.

    ``before`` is typed as ``after`` (a sample without deletes has no typed ``before``, and a key-only
    ``before`` then reads as the full row with nulls, which the fast path treats alike); a sample of
    deletes only types ``after`` by ``before``. Fields the sample saw only as null are left out, so each
    block infers them (pyarrow joins a null block with a typed one)."""
    names = schema.names
    if "after" not in names or "before" not in names:
        return None
    after, before = schema.field("after").type, schema.field("before").type
    if pa.types.is_null(after):
        after = before
    if not pa.types.is_struct(after):
        return None
    if pa.types.is_struct(before):
        for k in range(before.num_fields):
            f = before.field(k)
            if after.get_field_index(f.name) < 0 or after.field(f.name).type != f.type:
                return None
    elif not pa.types.is_null(before):
        return None
    row = _without_nulls(after)
    if row is None or not row.num_fields:
        return None
    fields = []
    for f in schema:
        t = row if f.name in ("before", "after") else _without_nulls(f.type)
        if t is not None:
            fields.append(pa.field(f.name, t))
    return pa.schema(fields)


def _without_nulls(t: pa.DataType) -> pa.DataType | None:
    """``t`` without the (nested) fields typed null; None for the null type itself."""
    if pa.types.is_null(t):
        return None
    if not pa.types.is_struct(t):
        return t
    kept = []
    for k in range(t.num_fields):
        sub = _without_nulls(t.field(k).type)
        if sub is not None:
            kept.append(pa.field(t.field(k).name, sub))
    return pa.struct(kept)


def _finite(arr: pa.ChunkedArray | pa.Array) -> bool:
    """False when a floating-point value anywhere in ``arr`` (nested in structs and lists) is NaN or infinite."""
    t = arr.type
    if pa.types.is_floating(t):
        return bool(pc.all(pc.is_finite(arr)).as_py() is not False)
    if pa.types.is_struct(t):
        return all(_finite(pc.struct_field(arr, [k])) for k in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _finite(pc.list_flatten(arr))
    return True


def _type_depth(t: pa.DataType) -> int:
    if pa.types.is_struct(t):
        return 1 + max((_type_depth(t.field(k).type) for k in range(t.num_fields)), default=0)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return 1 + _type_depth(t.value_type)
    return 0


def _struct_field(arr: pa.Array, name: str) -> pa.Array | None:
    t = arr.type
    if not pa.types.is_struct(t) or t.get_field_index(name) < 0:
        return None
    return arr.field(name)


def _fast_decode(
    values: Sequence[bytes | str | None],
    keys: Sequence[bytes | str | None] | None,
    table_schema: pa.Schema | None,
    max_record_bytes: int,
    max_depth: int,
    types: TypeOptions | None = None,
) -> DecodedEvents | None:
    """A batch of schema-less envelopes decoded column-wise with pyarrow's JSON reader, exactly as the
    record path would decode it, or None whenever that cannot be proven (the caller then decodes it
    record by record): the result has no rejections and no notes by construction. Columns declared in
    ``types`` are left to the record path."""
    n = len(values)
    index: Sequence[int] = range(n)
    present: Sequence[bytes | str | None] = values
    if None in values:
        index = [i for i, v in enumerate(values) if v is not None]
        present = [values[i] for i in index]
    m = len(present)
    if not m:
        return None
    if set(map(type, present)) != {bytes}:
        return None
    lens = np.fromiter(map(len, present), np.int64, m)  # type: ignore[arg-type]
    if lens.max() > max_record_bytes or lens.min() < 2:
        return None
    buf = b"\n".join(present)  # type: ignore[arg-type]
    # No newline inside a value, so each one in buf separates two values; every value starts with '{'
    # and ends with '}' (one object: pyarrow's reader crashes on a first line of 'null'); the first has
    # no embedded schema (the record path plans it once; a later one shows as a 'schema' column).
    if buf.count(b"\n") != m - 1 or buf.startswith(_HEAD) or b"\r" in buf:
        return None
    starts = np.zeros(m, np.int64)
    np.cumsum(lens[:-1] + 1, out=starts[1:])
    data = np.frombuffer(buf, np.uint8)
    if not ((data[starts] == ord("{")).all() and (data[starts + lens - 1] == ord("}")).all()):
        return None
    if not buf.isascii():
        try:  # pyarrow validates string values but not field names: the record path rejects bad UTF-8
            buf.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        parsed = _parse_lines(buf)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    # A value that does not hold exactly one JSON object would not give exactly one row.
    if parsed.num_rows != m or not set(parsed.column_names) <= _ENVELOPE_FIELDS:
        return None
    if _type_depth(pa.struct(list(parsed.schema))) > max_depth:
        return None
    if "op" not in parsed.column_names or "source" not in parsed.column_names:
        return None
    for name in ("before", "after"):
        if name in parsed.column_names and not (pa.types.is_struct(parsed.schema.field(name).type) or pa.types.is_null(parsed.schema.field(name).type)):
            return None
    parsed.validate(full=True)  # raises on a malformed array rather than reading it
    # pyarrow reads NaN, Inf and Infinity as numbers; the record path (orjson) refuses them.
    if not all(_finite(parsed.column(k)) for k in range(parsed.num_columns)):
        return None
    op = parsed.column("op").combine_chunks()
    source = parsed.column("source").combine_chunks()
    if not pa.types.is_string(op.type) or op.null_count or not pa.types.is_struct(source.type) or source.null_count:
        return None
    empty = pa.nulls(m)
    after = parsed.column("after").combine_chunks() if "after" in parsed.column_names else empty
    before = parsed.column("before").combine_chunks() if "before" in parsed.column_names else empty
    if not all(pa.types.is_struct(a.type) or pa.types.is_null(a.type) for a in (after, before)):
        return None
    counts = {d["values"]: d["counts"] for d in pc.value_counts(op).to_pylist()}
    if not set(counts) <= OPS or not counts.keys() & ROW_OPS:
        return None

    # Position, commit time and transaction: as the record path reads them, or fall back.
    seq = _struct_field(source, "sequence")
    if seq is None or not pa.types.is_string(seq.type) or seq.null_count:
        return None
    parts = pc.extract_regex(seq, _FAST_SEQUENCE)  # null where the text does not match
    if parts.null_count:
        return None
    commit_text = parts.field("commit")
    commits = pc.cast(pc.if_else(pc.equal(commit_text, ""), "0", commit_text), pa.int64())  # a snapshot's is null
    lsns = pc.cast(parts.field("lsn"), pa.int64())
    stamps = []
    for arr in (_struct_field(source, "ts_ms"), parsed.column("ts_ms").combine_chunks() if "ts_ms" in parsed.column_names else None):
        if arr is None or pa.types.is_null(arr.type):
            continue
        if not pa.types.is_int64(arr.type):
            return None
        stamps.append(arr)
    ts = pc.coalesce(*stamps) if stamps else pa.nulls(m, pa.int64())
    txid = _struct_field(source, "txId")
    if txid is None or pa.types.is_null(txid.type):
        txid = pa.nulls(m, pa.int64())
    elif not pa.types.is_int64(txid.type):
        return None

    is_delete = pc.equal(op, "d")
    is_row = pc.is_in(op, pa.array(sorted(ROW_OPS)))
    positions = pc.indices_nonzero(is_row)
    # c/u/r carry their row in 'after', d in 'before' (a truncate in neither).
    if pc.any(pc.and_(pc.and_not(is_row, is_delete), after.is_null())).as_py():
        return None
    if counts.get("d") and pc.any(pc.and_(is_delete, before.is_null())).as_py():
        return None
    decoder = _Decoder(keys, None, table_schema, max_record_bytes, max_depth)
    # The record path's columns are the rows' keys in order of first appearance; pyarrow cannot tell a
    # missing key from a null, so take them from the leading rows and require every other row's to be among them.
    names = _leading_columns(present, index, op, positions, decoder)
    if names is None:
        return None
    known = set(names)
    if types is not None and known & types.declared.keys():
        return None
    for arr in (after, before):
        if pa.types.is_struct(arr.type) and not {arr.type.field(k).name for k in range(arr.type.num_fields)} <= known:
            return None
    if known & set(META_COLUMNS):
        return None

    if counts.get("d"):
        # Which 'before' values are set, per column (a null is unset: pyarrow cannot tell the two apart).
        is_set = {}
        for name in names:
            held = _struct_field(before, name)
            if held is not None:
                is_set[name] = held.is_valid().to_numpy(zero_copy_only=False)
        any_set = np.logical_or.reduce(list(is_set.values())) if is_set else np.zeros(m, bool)
        for p in pc.indices_nonzero(is_delete).to_pylist():
            try:
                key = decoder._key(index[p])
            except _Reject:
                key = None
            if key:
                # The key only fills key columns the 'before' lacks; with all of them set it changes nothing.
                for k in key:
                    set_k = is_set.get(k)
                    if set_k is None or not set_k[p]:
                        return None
            elif not any_set[p]:
                return None  # an empty 'before' (or one of nulls only)

    cols: dict[str, pa.Array] = {}
    for name in names:
        a, b = _struct_field(after, name), _struct_field(before, name)
        kinds = {x.type for x in (a, b) if x is not None and not pa.types.is_null(x.type)}
        if len(kinds) > 1:
            return None
        src = kinds.pop() if kinds else pa.null()
        if pa.types.is_null(src):
            col: pa.Array = pa.nulls(len(positions), src)
        else:
            a = a if a is not None and not pa.types.is_null(a.type) else pa.nulls(m, src)
            b = b if b is not None and not pa.types.is_null(b.type) else pa.nulls(m, src)
            col = pc.if_else(is_delete, b, a).take(positions)
        typed = _fast_column(col, decoder.table_types.get(name))
        if typed is None:
            return None
        cols[name] = typed
    cols[OP] = op.take(positions)
    cols[SEQ_COMMIT] = commits.take(positions)
    cols[SEQ_LSN] = lsns.take(positions)
    cols[TS_MS] = ts.take(positions)
    cols[TXID] = txid.take(positions)
    cols[INDEX] = (pa.array(index, pa.int64()).take(positions) if isinstance(index, list) else positions.cast(pa.int64()))
    truncates: list[Truncate] = []
    if counts.get("t"):
        ts_list, commit_list, lsn_list = ts.to_pylist(), commits.to_pylist(), lsns.to_pylist()
        truncates = [Truncate(index[p], commit_list[p], lsn_list[p], ts_list[p]) for p in pc.indices_nonzero(pc.equal(op, "t")).to_pylist()]
    return DecodedEvents(
        rows=pa.table(cols),
        truncates=truncates,
        tombstones=[i for i, v in enumerate(values) if v is None] if m < n else [],
        key_columns=decoder._key_columns(),
    )


# Deletes read one by one before the first row that is not one; past that many the batch falls back.
_LEADING_DELETES = 64


def _leading_columns(
    present: Sequence[bytes | str | None], index: Sequence[int], op: pa.Array, positions: pa.Array, decoder: _Decoder
) -> list[str] | None:
    """The columns the record path makes of a batch's first rows, in its order: the keys of each row in
    turn, up to the first row that is not a delete (a delete's row may be the key alone, from its
    'before' or the message key), read as the record path reads them. None when one of them cannot be
    read so, or when more than ``_LEADING_DELETES`` deletes come first."""
    names: dict[str, None] = {}
    for p in positions.slice(0, _LEADING_DELETES + 1).to_pylist():
        is_delete = op[p].as_py() == "d"
        try:
            doc = orjson.loads(present[p])  # type: ignore[arg-type]
            row = decoder._deleted_row(index[p], doc.get("before")) if is_delete else doc.get("after")
        except (orjson.JSONDecodeError, _Reject):
            return None
        if type(row) is not dict or not row:
            return None
        names.update(dict.fromkeys(row))
        if not is_delete:
            return list(names)
    return list(names) if len(positions) <= _LEADING_DELETES + 1 else None


def _fast_column(col: pa.Array, target: pa.DataType | None) -> pa.Array | None:
    """Column ``col`` (as pyarrow parsed it) typed as the record path types it, or None when unsure."""
    src = col.type
    if (pa.types.is_floating(src) or pa.types.is_integer(src)) and col.null_count < len(col):
        # Past 2**53 an integer and a double may differ; NaN and infinities were refused earlier.
        bounds = pc.min_max(col).as_py()
        if pa.types.is_floating(src) and max(abs(bounds["min"]), abs(bounds["max"])) >= _EXACT_DOUBLE:
            return None
        exact_int = bounds["min"] > -(1 << 53) and bounds["max"] < (1 << 53)
    else:
        exact_int = True
    if target is None:
        if pa.types.is_null(src):
            return pa.nulls(len(col), pa.string())
        if pa.types.is_int64(src) or pa.types.is_boolean(src):
            return col
        if pa.types.is_float64(src):
            # The record path makes a double column only if some value was written with a fraction or an
            # exponent; pyarrow reads 1 and 1.0 alike, so that is only certain when some value is not whole.
            if col.null_count == len(col) or pc.all(pc.equal(col, pc.floor(col))).as_py():
                return None
            return col
        if pa.types.is_string(src):
            if not pc.any(pc.match_substring_regex(col, _DATE_LIKE)).as_py():
                return col
            # As _infer and _iso_timestamps decide it; anything else (dates, mixed text) record by record.
            if pc.all(pc.match_substring_regex(col, ISO_TIMESTAMP.pattern)).as_py() and not pc.any(
                pc.match_substring_regex(col, r"^\d{4}-\d{2}-\d{2}$")
            ).as_py():
                zoned = pc.any(pc.match_substring_regex(col, r"(Z|[+-]\d{2}:?\d{2})$")).as_py()
                return _iso_timestamps((), pa.timestamp("us", tz="UTC") if zoned else pa.timestamp("us"), col)
        return None
    if pa.types.is_null(src):
        return pa.nulls(len(col), target)
    if pa.types.is_timestamp(target) and pa.types.is_string(src):
        return _iso_timestamps((), target, col)
    if pa.types.is_integer(target) and pa.types.is_int64(src):
        try:
            return col.cast(target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
    if pa.types.is_float64(target) and (pa.types.is_float64(src) or pa.types.is_int64(src)):
        if not exact_int:
            return None
        return col.cast(target)
    if (pa.types.is_boolean(target) and pa.types.is_boolean(src)) or (pa.types.is_string(target) and pa.types.is_string(src)):
        return col
    return None
