"""docs/reliability.md D3: fuzz the Debezium envelope parser and record decoder.

Arbitrary bytes and text, and valid Debezium 3.6 PostgreSQL events mutated at the byte level (flips,
cuts, insertions) and at the JSON level (any node of the schema, the payload or the source replaced by
any JSON value, or removed), in batches that mix them with valid events. Whatever comes in, only
rejections come out: nothing raises, every input is accounted for exactly once, the rows table is a
valid Arrow table, and every rejection keeps text the quarantine can store. Hypothesis deadlines catch
a hang or a blow-up in one example.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icefield.ingest.debezium_codec import META_COLUMNS, decode_events
from icefield.testing.debezium import (
    ORDERS_COLUMNS,
    Column,
    DebeziumTable,
    encode_decimal,
    encode_variable_decimal,
    epoch_days,
    epoch_micros,
    variable_decimal_column,
    zoned,
)

LONG = bool(os.environ.get("ICEFIELD_LONG"))
TIMEOUT = 2400 if LONG else 120
FUZZ = settings(
    max_examples=3000 if LONG else 150,  # `make test-long` fuzzes 20x longer
    deadline=dt.timedelta(seconds=3),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TABLE = DebeziumTable("orders", [*ORDERS_COLUMNS, variable_decimal_column("vnum"), Column("tags", "array", items={"type": "int32", "optional": True})])
PLAIN = DebeziumTable("orders", with_schema=False)


def _row(i: int) -> dict[str, Any]:
    at = dt.datetime(2024, 3, 1, 10, 15, 30, 123456)
    return {
        "id": i,
        "customer_id": 10 + i,
        "amount": encode_decimal("12.34", 2),
        "note": f"n{i}",
        "created_at": epoch_micros(at),
        "updated_at": zoned(at.replace(tzinfo=dt.UTC)),
        "order_date": epoch_days(at.date()),
        "uid": "8a7c5d1e-3b2f-4c9a-9e8d-7f6a5b4c3d2e",
        "meta": '{"k": 1}',
        "status": "paid",
        "active": True,
        "weight": 1.25,
    }


def _bases() -> list[bytes]:
    full = _row(1) | {"vnum": encode_variable_decimal("3.14159"), "tags": [1, 2]}
    out = []
    for table, row in ((TABLE, full), (PLAIN, _row(1))):
        out += [
            table.value("c", after=row, lsn=100, commit_lsn=90),
            table.value("u", before=row, after=row, lsn=110, commit_lsn=100),
            table.value("r", after=row, lsn=50, commit_lsn=None, snapshot="true"),
            table.value("d", before={"id": 1}, lsn=120, commit_lsn=110),
            table.value("t", lsn=130, commit_lsn=120),
        ]
    return out


BASES = _bases()
KEY = TABLE.key_of({"id": 1})

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["NaN", "Infinity", "infinity", "", "AA==", "////", "[null,null]", '["1","2"]', "c", "d", "t", "struct", "int32"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> bytes | str | None:
    base = draw(st.sampled_from(BASES))
    kind = draw(st.sampled_from(["json", "json", "json", "flip", "cut", "insert", "valid", "none"]))
    if kind == "valid":
        return base
    if kind == "none":
        return None
    if kind == "flip":
        pos = draw(st.integers(0, len(base) - 1))
        return base[:pos] + bytes([draw(st.integers(0, 255))]) + base[pos + 1 :]
    if kind == "cut":
        return base[: draw(st.integers(0, len(base)))]
    if kind == "insert":
        pos = draw(st.integers(0, len(base)))
        return base[:pos] + draw(st.binary(min_size=1, max_size=8)) + base[pos:]
    doc = json.loads(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        if not path:
            doc = draw(json_value)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_value)
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=draw(st.booleans()))
    return text if draw(st.booleans()) else text.encode()


def check(values: list[Any], keys: list[Any] | None, table_schema: pa.Schema | None = None) -> None:
    got = decode_events(values, keys, table_schema=table_schema, max_record_bytes=1 << 16)
    n = len(values)
    assert got.accounted == n
    seen = sorted(got.rows.column("__index").to_pylist() + [t.index for t in got.truncates] + got.tombstones + got.rejected_indices)
    assert seen == list(range(n)), "every input accounted for exactly once"
    got.rows.validate(full=True)
    got.rows.to_pylist()  # every value readable: no date or time outside what readers can show
    assert got.rows.column_names[-len(META_COLUMNS) :] == list(META_COLUMNS)
    assert set(got.rows.column("__op").to_pylist()) <= {"c", "u", "r", "d"}
    for bad in got.rejected:
        assert bad.check == "decode" and bad.reason
        bad.raw.encode("utf-8")  # storable text, whatever the input bytes were
        bad.reason.encode("utf-8")
    for i in got.tombstones:
        assert values[i] is None or isinstance(values[i], (bytes, str))


@pytest.mark.timeout(TIMEOUT)
@FUZZ
@given(st.lists(st.one_of(st.none(), st.binary(max_size=200), st.text(max_size=100)), max_size=8), st.booleans())
def test_arbitrary_bytes_only_reject(values, with_keys):
    keys = [v if isinstance(v, (bytes, type(None))) else None for v in values] if with_keys else None
    check(values, keys)


@pytest.mark.timeout(TIMEOUT)
@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=6), st.booleans())
def test_mutated_envelopes_only_reject(values, with_keys):
    keys = [KEY] * len(values) if with_keys else None
    check(values, keys)


TARGET = pa.schema([("id", pa.int64()), ("amount", pa.decimal128(12, 2)), ("vnum", pa.decimal128(38, 6)), ("created_at", pa.timestamp("us")), ("note", pa.int64())])


@pytest.mark.timeout(TIMEOUT)
@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=6), st.lists(st.one_of(st.none(), json_value.map(lambda v: json.dumps(v).encode())), min_size=6, max_size=6))
def test_mutated_envelopes_with_a_table_schema_and_fuzzed_keys_only_reject(values, keys):
    check(values, keys[: len(values)], TARGET)
