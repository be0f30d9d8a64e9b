"""Decoding Debezium change events (PostgreSQL connector 3.6, Kafka's JsonConverter): every op, both
envelope forms, each logical type, deletes under REPLICA IDENTITY DEFAULT, schema changes mid-stream,
and a poison corpus where every input is accounted for exactly once."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icefield.ingest.debezium_codec import (
    META_COLUMNS,
    UNAVAILABLE_VALUE,
    DecodedEvents,
    decode_events,
    escape_raw,
    parse_sequence,
    sequence_key,
)
from icefield.testing.debezium import (
    ORDERS_COLUMNS,
    Column,
    DebeziumTable,
    decimal_column,
    encode_decimal,
    encode_variable_decimal,
    epoch_days,
    epoch_micros,
    variable_decimal_column,
    zoned,
)

D = decimal.Decimal
UTC = dt.UTC
TS = dt.datetime(2024, 3, 1, 10, 15, 30, 123456)


def order(id_: int, note: str = "first order", amount: str = "12.34") -> dict[str, Any]:
    """An ``orders`` row as Debezium encodes it."""
    return {
        "id": id_,
        "customer_id": 900_000_000_000 + id_,
        "amount": encode_decimal(amount, 2),
        "note": note,
        "created_at": epoch_micros(TS),
        "updated_at": zoned(dt.datetime(2024, 3, 1, 10, 15, 30, 120000, tzinfo=UTC)),
        "order_date": epoch_days(dt.date(2024, 3, 1)),
        "uid": "8a7c5d1e-3b2f-4c9a-9e8d-7f6a5b4c3d2e",
        "meta": '{"channel": "web"}',
        "status": "paid",
        "active": True,
        "weight": 1.25,
    }


def expected_order(id_: int, note: str = "first order", amount: str = "12.34") -> dict[str, Any]:
    """The same row as Arrow gives it back."""
    return {
        "id": id_,
        "customer_id": 900_000_000_000 + id_,
        "amount": D(amount),
        "note": note,
        "created_at": TS,
        "updated_at": dt.datetime(2024, 3, 1, 10, 15, 30, 120000, tzinfo=UTC),
        "order_date": dt.date(2024, 3, 1),
        "uid": "8a7c5d1e-3b2f-4c9a-9e8d-7f6a5b4c3d2e",
        "meta": '{"channel": "web"}',
        "status": "paid",
        "active": True,
        "weight": 1.25,
    }


def conserved(got: DecodedEvents, n: int) -> None:
    assert got.rows.num_rows + len(got.truncates) + len(got.tombstones) + len(got.rejected) == n
    assert got.accounted == n
    accounted = sorted(
        got.rows.column("__index").to_pylist() + [t.index for t in got.truncates] + got.tombstones + got.rejected_indices
    )
    assert accounted == list(range(n)), "each input is accounted for exactly once"


def rows_without_meta(got: DecodedEvents) -> list[dict[str, Any]]:
    return got.rows.drop_columns(list(META_COLUMNS)).to_pylist()


# ------------------------------------------------------------------ ops and envelopes


def lifecycle(table: DebeziumTable) -> tuple[list[bytes | None], list[bytes | None]]:
    """Snapshot read, insert, update, delete + tombstone, truncate: one row's life in PostgreSQL."""
    snap = order(1)
    values: list[bytes | None] = [
        table.value("r", after=snap, lsn=23043592, commit_lsn=None, snapshot="last", txid=490),
        table.value("c", after=order(2), lsn=24023128, commit_lsn=24023119, txid=555),
        table.value("u", before=None, after=order(2, "changed", "99.99"), lsn=24023300, commit_lsn=24023290, txid=556),
        table.value("d", before={"id": 1}, lsn=24023400, commit_lsn=24023390, txid=557),
        None,
        table.value("t", lsn=24023500, commit_lsn=24023490, txid=558),
    ]
    keys = [table.key_of(snap), table.key_of(order(2)), table.key_of(order(2)), table.key_of(snap), table.key_of(snap), None]
    return values, keys


@pytest.mark.parametrize("with_schema", [True, False], ids=["schema", "no-schema"])
def test_every_op_is_decoded_with_its_position(with_schema):
    table = DebeziumTable("orders", with_schema=with_schema)
    values, keys = lifecycle(table)
    got = decode_events(values, keys)
    conserved(got, len(values))
    meta = got.rows.select(list(META_COLUMNS)).to_pylist()
    assert meta == [
        {"__op": "r", "__seq_commit": 0, "__seq_lsn": 23043592, "__ts_ms": 1709288130125, "__txid": 490, "__index": 0},
        {"__op": "c", "__seq_commit": 24023119, "__seq_lsn": 24023128, "__ts_ms": 1709288130125, "__txid": 555, "__index": 1},
        {"__op": "u", "__seq_commit": 24023290, "__seq_lsn": 24023300, "__ts_ms": 1709288130125, "__txid": 556, "__index": 2},
        {"__op": "d", "__seq_commit": 24023390, "__seq_lsn": 24023400, "__ts_ms": 1709288130125, "__txid": 557, "__index": 3},
    ]
    assert [(t.index, t.seq_commit, t.seq_lsn) for t in got.truncates] == [(5, 24023490, 24023500)]
    assert got.tombstones == [4]
    assert got.rejected == []
    assert got.key_columns == ["id"]
    assert got.rows.column_names[-len(META_COLUMNS) :] == list(META_COLUMNS)
    rows = rows_without_meta(got)
    assert rows[3]["id"] == 1 and all(v is None for k, v in rows[3].items() if k != "id")
    if with_schema:
        assert rows[:3] == [expected_order(1), expected_order(2), expected_order(2, "changed", "99.99")]


def test_schema_types_are_exact():
    got = decode_events(lifecycle(DebeziumTable("orders"))[0])
    schema = got.rows.schema
    assert [(f.name, f.type) for f in schema][:12] == [
        ("id", pa.int32()),
        ("customer_id", pa.int64()),
        ("amount", pa.decimal128(10, 2)),
        ("note", pa.string()),
        ("created_at", pa.timestamp("us")),
        ("updated_at", pa.timestamp("us", tz="UTC")),
        ("order_date", pa.date32()),
        ("uid", pa.string()),
        ("meta", pa.string()),
        ("status", pa.string()),
        ("active", pa.bool_()),
        ("weight", pa.float64()),
    ]
    assert [(f.name, f.type) for f in schema][12:] == [
        ("__op", pa.string()),
        ("__seq_commit", pa.int64()),
        ("__seq_lsn", pa.int64()),
        ("__ts_ms", pa.int64()),
        ("__txid", pa.int64()),
        ("__index", pa.int64()),
    ]


def test_without_schema_types_are_inferred_like_other_sources():
    got = decode_events(lifecycle(DebeziumTable("orders", with_schema=False))[0])
    types = {f.name: f.type for f in got.rows.schema}
    # Without the schema an epoch number is only a number and base64 only text; ISO timestamps are seen.
    assert types["created_at"] == pa.int64()
    assert types["order_date"] == pa.int64()
    assert types["amount"] == pa.string()
    assert types["updated_at"] == pa.timestamp("us", tz="UTC")
    assert types["weight"] == pa.float64()
    assert types["active"] == pa.bool_()
    assert rows_without_meta(got)[1]["updated_at"] == dt.datetime(2024, 3, 1, 10, 15, 30, 120000, tzinfo=UTC)


def test_json_lines_text_decodes_like_message_bytes():
    values, keys = lifecycle(DebeziumTable("orders"))
    as_text = [None if v is None else v.decode() + "\n" for v in values]
    assert decode_events(as_text, keys).rows.equals(decode_events(values, keys).rows)
    # A JSON Lines file has no null message: the line `null` is a tombstone.
    got = decode_events(["null", '{"schema":null,"payload":null}'])
    assert got.tombstones == [0, 1] and got.rows.num_rows == 0


def test_empty_input():
    got = decode_events([])
    assert got.rows.num_rows == 0 and got.rows.column_names == list(META_COLUMNS)
    conserved(got, 0)


# ------------------------------------------------------------------ logical types

GEOMETRY_FIELDS = [
    {"type": "double", "optional": False, "field": "x"},
    {"type": "double", "optional": False, "field": "y"},
    {"type": "bytes", "optional": True, "field": "wkb"},
    {"type": "int32", "optional": True, "field": "srid"},
]
ALL_TYPES = [
    Column("id", "int32", optional=False),
    Column("tiny", "int8"),
    Column("small", "int16"),
    Column("big", "int64"),
    Column("real_v", "float"),
    Column("dbl", "double"),
    Column("flag", "boolean"),
    Column("txt", "string"),
    Column("raw", "bytes"),
    decimal_column("amount", 10, 2),
    decimal_column("huge", 50, 5),
    variable_decimal_column("vnum"),
    Column("day", "int32", "io.debezium.time.Date"),
    Column("ts_ms", "int64", "io.debezium.time.Timestamp"),
    Column("ts_us", "int64", "io.debezium.time.MicroTimestamp"),
    Column("ts_ns", "int64", "io.debezium.time.NanoTimestamp"),
    Column("tstz", "string", "io.debezium.time.ZonedTimestamp"),
    Column("t_ms", "int32", "io.debezium.time.Time"),
    Column("t_us", "int64", "io.debezium.time.MicroTime"),
    Column("t_ns", "int64", "io.debezium.time.NanoTime"),
    Column("c_date", "int32", "org.apache.kafka.connect.data.Date"),
    Column("c_ts", "int64", "org.apache.kafka.connect.data.Timestamp"),
    Column("c_time", "int32", "org.apache.kafka.connect.data.Time"),
    Column("uid", "string", "io.debezium.data.Uuid"),
    Column("doc", "string", "io.debezium.data.Json"),
    Column("state", "string", "io.debezium.data.Enum", {"allowed": "open,closed"}),
    Column("tags", "array", items={"type": "string", "optional": True}),
    Column("scores", "array", items={"type": "int32", "optional": True}),
    Column("pt", "struct", "io.debezium.data.geometry.Point", fields=GEOMETRY_FIELDS),
    Column("dur", "int64", "io.debezium.time.MicroDuration"),
]
TYPES = DebeziumTable("all_types", ALL_TYPES)
WHEN = dt.datetime(1999, 12, 31, 23, 59, 58, 654321)
ENCODED: dict[str, Any] = {
    "id": 1,
    "tiny": -128,
    "small": 32767,
    "big": -9223372036854775808,
    "real_v": 1.5,
    "dbl": -2.25e-300,
    "flag": False,
    "txt": "naïve ☃",
    "raw": base64.b64encode(b"\x00\xffbytes").decode(),
    "amount": encode_decimal("-12345678.90", 2),
    "huge": encode_decimal("123456789012345678901234567890123456789012.34567", 5),
    "vnum": encode_variable_decimal("3.14159"),
    "day": epoch_days(dt.date(1969, 7, 20)),
    "ts_ms": epoch_micros(WHEN) // 1000,
    "ts_us": epoch_micros(WHEN),
    "ts_ns": epoch_micros(WHEN) * 1000,
    "tstz": "2024-03-01T10:15:30.5+05:30",
    "t_ms": (13 * 3600 + 14 * 60 + 15) * 1000 + 678,
    "t_us": (13 * 3600 + 14 * 60 + 15) * 1_000_000 + 678901,
    "t_ns": ((13 * 3600 + 14 * 60 + 15) * 1_000_000 + 678901) * 1000,
    "c_date": epoch_days(dt.date(2000, 2, 29)),
    "c_ts": epoch_micros(WHEN) // 1000,
    "c_time": 1000,
    "uid": "c0ffee00-0000-4000-8000-000000000001",
    "doc": '{"a": [1, 2]}',
    "state": "open",
    "tags": ["x", None, "z"],
    "scores": [3, 1],
    "pt": {"x": 1.5, "y": -2.0, "wkb": "AQE=", "srid": 4326},
    "dur": 3_600_000_000,
}
DECODED: dict[str, tuple[pa.DataType, Any]] = {
    "id": (pa.int32(), 1),
    "tiny": (pa.int8(), -128),
    "small": (pa.int16(), 32767),
    "big": (pa.int64(), -9223372036854775808),
    "real_v": (pa.float32(), 1.5),
    "dbl": (pa.float64(), -2.25e-300),
    "flag": (pa.bool_(), False),
    "txt": (pa.string(), "naïve ☃"),
    "raw": (pa.binary(), b"\x00\xffbytes"),
    "amount": (pa.decimal128(10, 2), D("-12345678.90")),
    "huge": (pa.string(), "123456789012345678901234567890123456789012.34567"),
    "vnum": (pa.decimal128(38, 18), D("3.14159")),
    "day": (pa.date32(), dt.date(1969, 7, 20)),
    "ts_ms": (pa.timestamp("us"), WHEN.replace(microsecond=654000)),
    "ts_us": (pa.timestamp("us"), WHEN),
    "ts_ns": (pa.timestamp("us"), WHEN),
    "tstz": (pa.timestamp("us", tz="UTC"), dt.datetime(2024, 3, 1, 4, 45, 30, 500000, tzinfo=UTC)),
    "t_ms": (pa.time64("us"), dt.time(13, 14, 15, 678000)),
    "t_us": (pa.time64("us"), dt.time(13, 14, 15, 678901)),
    "t_ns": (pa.time64("us"), dt.time(13, 14, 15, 678901)),
    "c_date": (pa.date32(), dt.date(2000, 2, 29)),
    "c_ts": (pa.timestamp("us"), WHEN.replace(microsecond=654000)),
    "c_time": (pa.time64("us"), dt.time(0, 0, 1)),
    "uid": (pa.string(), "c0ffee00-0000-4000-8000-000000000001"),
    "doc": (pa.string(), '{"a": [1, 2]}'),
    "state": (pa.string(), "open"),
    "tags": (pa.list_(pa.string()), ["x", None, "z"]),
    "scores": (pa.list_(pa.int32()), [3, 1]),
    "pt": (pa.string(), '{"srid":4326,"wkb":"AQE=","x":1.5,"y":-2.0}'),
    "dur": (pa.int64(), 3_600_000_000),
}


def test_each_logical_type_maps_to_its_arrow_type_and_value():
    nulls = dict.fromkeys(ENCODED) | {"id": 2}
    got = decode_events([TYPES.value("c", after=ENCODED, lsn=10), TYPES.value("c", after=nulls, lsn=11)])
    assert got.rejected == []
    schema = got.rows.schema
    first, second = rows_without_meta(got)
    for name, (t, value) in DECODED.items():
        assert schema.field(name).type == t, name
        assert first[name] == value, name
        assert name == "id" or second[name] is None, name


def test_a_bad_value_rejects_only_its_row_and_good_rows_decode_the_same():
    # One bad value sends its column down the value-by-value path: the other rows must come out exactly
    # as they do from the vectorised path.
    clean = [TYPES.value("c", after=ENCODED | {"id": i}, lsn=10 + i) for i in range(3)]
    poisoned = list(clean)
    poisoned.insert(1, TYPES.value("c", after=ENCODED | {"id": 99, "ts_us": "2024-01-01"}, lsn=99))
    ref = decode_events(clean)
    got = decode_events(poisoned)
    conserved(got, 4)
    assert got.rejected_indices == [1]
    assert "'ts_us'" in got.rejected[0].reason and "'2024-01-01'" in got.rejected[0].reason
    assert rows_without_meta(got) == rows_without_meta(ref)


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("amount", "!!notbase64", "is not valid base64"),
        ("amount", encode_decimal("123456789.00", 2), "more than 10 digits"),
        ("amount", "", "is empty"),
        ("vnum", {"scale": 2}, "is not a"),
        ("vnum", {"scale": "2", "value": "AQ=="}, "is not an integer"),
        ("vnum", {"scale": 2147483647, "value": "AQ=="}, "scale outside"),  # would build a 2 GB number
        ("ts_us", 9223372036825200000, "outside the years 1-9999"),  # PostgreSQL 'infinity'
        ("ts_ms", 9223372036854776, "does not fit in 64 bits"),
        ("ts_ns", 1_000_000_001, "nanoseconds"),
        ("t_us", 86_400_000_000, "[00:00, 24:00)"),  # PostgreSQL time '24:00:00'
        ("tstz", "infinity", "not an ISO-8601 timestamp"),
        ("tstz", "2024-03-01T10:15:30", "not an ISO-8601 timestamp"),  # no offset
        ("tstz", 1709288130, "is not text"),
        ("tstz", "0000-03-01T10:15:30Z", "outside the years 1-9999"),
        ("small", 32768, "does not fit in 16 bits"),
        ("id", "12abc", "is not an integer"),
        ("big", 1.0, "is not an integer"),
        ("flag", "true", "is not a boolean"),
        ("txt", 12, "is not text"),
        ("dbl", "1.5", "is not a number"),
        ("real_v", 1e39, "does not fit in a 32-bit float"),
        ("day", 1 << 40, "does not fit in 32 bits"),
        ("day", 2_932_897, "outside the years 1-9999"),  # 10000-01-01
        ("c_date", -719_163, "outside the years 1-9999"),
        ("scores", [1, "2"], "is not an integer"),
        ("scores", "1,2", "is not a list"),
        ("raw", 12, "is not base64 text"),
    ],
)
def test_values_that_do_not_fit_their_logical_type_are_rejected(column, value, reason):
    values = [TYPES.value("c", after=ENCODED, lsn=10), TYPES.value("c", after=ENCODED | {"id": 2, column: value}, lsn=11)]
    got = decode_events(values, coords=["orders:0#1", "orders:0#2"])
    conserved(got, 2)
    assert got.rejected_indices == [1]
    bad = got.rejected[0]
    assert bad.check == "decode" and bad.coords == "orders:0#2"
    assert f"column {column!r}" in bad.reason and reason in bad.reason, bad.reason
    assert json.loads(bad.raw)["payload"]["after"][column] == value, "the raw record is kept"
    assert rows_without_meta(got)[0]["id"] == 1


def test_non_finite_doubles_as_jackson_writes_them():
    # PostgreSQL float8 holds NaN and infinities; JsonConverter quotes them. The schema says double.
    got = decode_events([TYPES.value("c", after=ENCODED | {"id": i, "dbl": v}, lsn=i) for i, v in enumerate(["NaN", "Infinity", "-Infinity"])])
    out = got.rows.column("dbl").to_pylist()
    assert out[0] != out[0] and out[1:] == [float("inf"), float("-inf")]


def test_decimal_handling_modes_string_and_double():
    table = DebeziumTable("prices", [Column("id", "int32", optional=False), Column("p_str", "string"), Column("p_dbl", "double")])
    got = decode_events([table.value("c", after={"id": 1, "p_str": "12.30", "p_dbl": 12.3}, lsn=1)])
    assert rows_without_meta(got) == [{"id": 1, "p_str": "12.30", "p_dbl": 12.3}]
    # Without the schema, the table's decimal type reads the string form exactly and strictly.
    plain = DebeziumTable("prices", with_schema=False)
    values = [plain.value("c", after={"id": 1, "p": "12.30"}, lsn=1), plain.value("c", after={"id": 2, "p": "12.3x"}, lsn=2)]
    got = decode_events(values, table_schema=pa.schema([("id", pa.int32()), ("p", pa.decimal128(10, 2))]))
    assert rows_without_meta(got) == [{"id": 1, "p": D("12.30")}]
    assert got.rejected_indices == [1] and "'p'" in got.rejected[0].reason


def test_variable_scale_decimals_take_the_declared_type_whatever_the_values():
    table = DebeziumTable("n", [Column("id", "int32", optional=False), variable_decimal_column("v")])
    values = [table.value("c", after={"id": i, "v": encode_variable_decimal(v)}, lsn=i) for i, v in enumerate(["1.5", "-2.125", "7"])]
    got = decode_events(values)
    assert got.rows.schema.field("v").type == pa.decimal128(38, 18)
    assert got.rows.column("v").to_pylist() == [D("1.5"), D("-2.125"), D("7")]
    assert got.notes == []
    wide = values + [table.value("c", after={"id": 9, "v": encode_variable_decimal("1" * 37 + ".5")}, lsn=9)]
    got = decode_events(wide)
    assert got.rows.schema.field("v").type == pa.decimal128(38, 18), "a wider value does not change the type"
    assert got.rows.column("v").to_pylist() == [D("1.5"), D("-2.125"), D("7")]
    assert got.rejected_indices == [3] and "integer digits" in got.rejected[0].reason


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(10**20) + 1, max_value=10**20 - 1), st.integers(min_value=0, max_value=18))
def test_decimal_encodings_round_trip_exactly(unscaled, scale):
    value = D(unscaled).scaleb(-scale)
    table = DebeziumTable("n", [Column("id", "int32", optional=False), decimal_column("d", 38, scale), variable_decimal_column("v")])
    got = decode_events([table.value("c", after={"id": 1, "d": encode_decimal(value, scale), "v": encode_variable_decimal(value)}, lsn=1)])
    row = rows_without_meta(got)[0]
    assert row["d"] == value and row["v"] == value


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_decimal_precision_is_enforced_at_every_width(data):
    precision = data.draw(st.integers(1, 38))
    scale = data.draw(st.integers(0, precision))
    edge = 10**precision
    unscaled = data.draw(st.one_of(st.integers(-edge - 5, edge + 5), st.sampled_from([edge - 1, -edge + 1, edge, -edge, 0, -1])))
    value = D(unscaled).scaleb(-scale, decimal.Context(prec=100))
    table = DebeziumTable("n", [Column("id", "int32", optional=False), decimal_column("d", precision, scale)])
    got = decode_events([table.value("c", after={"id": 1, "d": encode_decimal(value, scale)}, lsn=1), table.value("c", after={"id": 2, "d": None}, lsn=2)])
    if abs(unscaled) < edge:
        assert got.rows.column("d").to_pylist() == [value, None]
    else:
        assert got.rejected_indices == [0] and f"more than {precision} digits" in got.rejected[0].reason


# ------------------------------------------------------------------ ordering


def test_parse_sequence():
    assert parse_sequence('["24023119","24023128"]') == (24023119, 24023128)
    assert parse_sequence('[null,"23043592"]') == (0, 23043592)
    assert parse_sequence('["5",null]') == (5, 0)
    assert parse_sequence('[ "1" , "2" ]') == (1, 2)
    for bad in ('["1"]', '["a","2"]', '[1,2]', '["99999999999999999999","1"]', "", '["１","2"]'):
        with pytest.raises(ValueError, match="source.sequence"):
            parse_sequence(bad)


def test_interleaved_transactions_order_by_commit_then_lsn_not_by_lsn():
    """docs/reliability.md C3: T1 writes key 1 at LSN 100 and commits at 300; T2 writes key 1 at LSN 200 and
    commits at 250 first. T1's row is the newer one although its LSN is smaller."""
    table = DebeziumTable("orders")
    values = [
        table.value("u", after=order(1, "from T2"), lsn=200, commit_lsn=250),
        table.value("u", after=order(1, "from T1"), lsn=100, commit_lsn=300),
    ]
    rows = decode_events(values).rows.to_pylist()
    newest = max(rows, key=lambda r: sequence_key(r["__seq_commit"], r["__seq_lsn"]))
    assert newest["note"] == "from T1"
    by_lsn_alone = max(rows, key=lambda r: r["__seq_lsn"])
    assert by_lsn_alone["note"] == "from T2", "the negative control: LSN alone picks the wrong row"


def test_position_falls_back_to_lsn_and_refuses_events_without_one():
    table = DebeziumTable("orders", with_schema=False)
    no_seq = table.value("c", after=order(1), lsn=777, sequence=None)
    payload = json.loads(table.value("c", after=order(2), lsn=1))
    del payload["source"]["sequence"], payload["source"]["lsn"]
    bad_seq = table.value("c", after=order(3), lsn=1, sequence='["x","y"]')
    got = decode_events([no_seq, json.dumps(payload), bad_seq])
    conserved(got, 3)
    assert got.rows.select(["__seq_commit", "__seq_lsn"]).to_pylist() == [{"__seq_commit": 777, "__seq_lsn": 777}]
    assert got.rejected_indices == [1, 2]
    assert "cannot be ordered" in got.rejected[0].reason
    assert "source.sequence" in got.rejected[1].reason


# ------------------------------------------------------------------ deletes and keys


@pytest.mark.parametrize("with_schema", [True, False], ids=["schema", "no-schema"])
def test_replica_identity_default_deletes_take_the_key(with_schema):
    table = DebeziumTable("orders", with_schema=with_schema)
    full = order(3)
    values = [
        table.value("d", before={"id": 1}, lsn=10),  # DEFAULT: only the key columns in before
        table.value("d", before=None, lsn=11),  # no before at all: the key is in the message key
        table.value("d", before=full, lsn=12),  # FULL: the whole old row
        table.value("d", before=None, lsn=13),  # no before and no key: nothing says what to delete
    ]
    keys = [table.key_of({"id": 1}), table.key_of({"id": 2}), None, None]
    got = decode_events(values, keys)
    conserved(got, 4)
    assert got.rows.column("id").to_pylist() == [1, 2, 3]
    assert got.rows.column("__op").to_pylist() == ["d", "d", "d"]
    assert got.rejected_indices == [3] and "carries no key" in got.rejected[0].reason
    if with_schema:
        assert rows_without_meta(got)[2] == expected_order(3)


def test_a_broken_key_only_matters_when_the_delete_needs_it():
    table = DebeziumTable("orders")
    values = [table.value("d", before={"id": 1}, lsn=10), table.value("d", before=None, lsn=11)]
    got = decode_events(values, [b'{"id":', b'{"id":'])
    assert got.rows.column("id").to_pylist() == [1]
    assert got.rejected_indices == [1] and "message key" in got.rejected[0].reason


def test_keys_with_logical_types_are_typed_by_the_value_schema():
    table = DebeziumTable("u", [Column("uid", "string", "io.debezium.data.Uuid", optional=False), decimal_column("n", 5, 1)], key=["uid", "n"])
    row = {"uid": "c0ffee00-0000-4000-8000-000000000001", "n": encode_decimal("12.5", 1)}
    got = decode_events([table.value("d", before=None, lsn=5)], [table.key_of(row)])
    assert rows_without_meta(got) == [{"uid": row["uid"], "n": D("12.5")}]
    assert got.key_columns == ["uid", "n"]


def test_truncate_and_tombstone_need_no_key():
    table = DebeziumTable("orders")
    got = decode_events([table.value("t", lsn=9, commit_lsn=8), None], [None, None])
    assert [(t.index, t.seq_commit, t.seq_lsn, t.ts_ms) for t in got.truncates] == [(0, 8, 9, 1709288130125)]
    assert got.tombstones == [1] and got.rows.num_rows == 0


# ------------------------------------------------------------------ schema changes


def test_column_added_mid_stream_with_schema():
    v1 = DebeziumTable("orders", ORDERS_COLUMNS[:3])
    v2 = DebeziumTable("orders", [*ORDERS_COLUMNS[:3], Column("coupon", "string")])
    values = [
        v1.value("c", after={k: order(1)[k] for k in ("id", "customer_id", "amount")}, lsn=1),
        v2.value("c", after={k: order(2)[k] for k in ("id", "customer_id", "amount")} | {"coupon": "SPRING"}, lsn=2),
        v1.value("u", after={k: order(3)[k] for k in ("id", "customer_id", "amount")}, lsn=3),  # a late old-schema event
    ]
    got = decode_events(values)
    assert got.rows.column_names[:4] == ["id", "customer_id", "amount", "coupon"]
    assert got.rows.column("coupon").to_pylist() == [None, "SPRING", None]
    assert got.rows.column("id").to_pylist() == [1, 2, 3], "input order is kept across schemas"
    assert got.rows.schema.field("amount").type == pa.decimal128(10, 2)


def test_column_added_mid_stream_without_schema():
    table = DebeziumTable("orders", with_schema=False)
    values = [table.value("c", after={"id": 1, "a": "x"}, lsn=1), table.value("c", after={"id": 2, "a": "y", "b": 5}, lsn=2)]
    got = decode_events(values)
    assert rows_without_meta(got) == [{"id": 1, "a": "x", "b": None}, {"id": 2, "a": "y", "b": 5}]


def test_a_column_widened_mid_stream_takes_the_wider_type():
    v1 = DebeziumTable("t", [Column("id", "int32", optional=False), Column("n", "int32")])
    v2 = DebeziumTable("t", [Column("id", "int32", optional=False), Column("n", "int64")])
    got = decode_events([v1.value("c", after={"id": 1, "n": 5}, lsn=1), v2.value("c", after={"id": 2, "n": 1 << 40}, lsn=2)])
    assert got.rows.schema.field("n").type == pa.int64()
    assert got.rows.column("n").to_pylist() == [5, 1 << 40]


def test_interleaved_schemas_each_event_typed_by_its_own():
    # Same column, different encodings: the cached schema prefix must never be applied to the other one.
    ms = DebeziumTable("t", [Column("id", "int32", optional=False), Column("at", "int64", "io.debezium.time.Timestamp")])
    us = DebeziumTable("t", [Column("id", "int32", optional=False), Column("at", "int64", "io.debezium.time.MicroTimestamp")])
    at = epoch_micros(WHEN)
    values = [ms.value("c", after={"id": 1, "at": at // 1000}, lsn=1), us.value("c", after={"id": 2, "at": at}, lsn=2), ms.value("c", after={"id": 3, "at": at // 1000}, lsn=3)]
    got = decode_events(values)
    assert got.rows.column("at").to_pylist() == [WHEN.replace(microsecond=654000), WHEN, WHEN.replace(microsecond=654000)]


def test_table_schema_types_events_without_schema_strictly():
    table = DebeziumTable("orders", with_schema=False)
    target = pa.schema([("id", pa.int64()), ("qty", pa.int32()), ("at", pa.timestamp("us")), ("__op", pa.string())])
    values = [
        table.value("c", after={"id": 1, "qty": "12", "at": "2024-03-01 10:00:00"}, lsn=1),
        table.value("c", after={"id": 2, "qty": "12abc", "at": "2024-03-01 10:00:00"}, lsn=2),
        table.value("c", after={"id": 3, "qty": 4, "at": "yesterday"}, lsn=3),
    ]
    got = decode_events(values, table_schema=target)
    conserved(got, 3)
    assert rows_without_meta(got) == [{"id": 1, "qty": 12, "at": dt.datetime(2024, 3, 1, 10)}]
    assert got.rejected_indices == [1, 2]
    assert "'qty'" in got.rejected[0].reason and "'12abc'" in got.rejected[0].reason
    assert "'at'" in got.rejected[1].reason


def test_table_schema_widens_embedded_types_losslessly():
    table = DebeziumTable("t", [Column("id", "int32", optional=False), variable_decimal_column("v"), Column("s", "string")])
    target = pa.schema([("id", pa.int64()), ("v", pa.decimal128(38, 4)), ("s", pa.int64())])
    got = decode_events([table.value("c", after={"id": 1, "v": encode_variable_decimal("1.5"), "s": "x"}, lsn=1)], table_schema=target)
    types = {f.name: f.type for f in got.rows.schema}
    assert types["id"] == pa.int64() and types["v"] == pa.decimal128(38, 4)
    assert types["s"] == pa.string(), "a type change that loses data is left for the writer to classify"
    assert rows_without_meta(got) == [{"id": 1, "v": D("1.5"), "s": "x"}]


def test_schema_and_schemaless_events_in_one_call():
    with_s, without = DebeziumTable("orders"), DebeziumTable("orders", with_schema=False)
    values = [with_s.value("c", after=order(1), lsn=1), without.value("d", before={"id": 3}, lsn=3)]
    got = decode_events(values)
    conserved(got, 2)
    assert got.rows.column("id").to_pylist() == [1, 3]
    assert got.rows.schema.field("id").type == pa.int64(), "int32 and int64 meet at int64"
    # Absent from the schemaless delete, a column keeps the type the schema gives it.
    assert got.rows.schema.field("created_at").type == pa.timestamp("us")
    assert got.rows.column("created_at").to_pylist() == [TS, None]
    # Where the forms disagree (epoch number vs timestamp), the column falls back to text, and says so.
    got = decode_events([with_s.value("c", after=order(1), lsn=1), without.value("c", after=order(2), lsn=2)])
    assert got.rows.schema.field("created_at").type == pa.string()
    assert any("'created_at'" in note for note in got.notes)


# ------------------------------------------------------------------ poison


def test_poison_corpus_is_rejected_with_reasons_and_conservation_holds():
    table = DebeziumTable("orders")
    plain = DebeziumTable("orders", with_schema=False)
    good = table.value("c", after=order(1), lsn=100, commit_lsn=90)
    deep = json.loads(plain.value("c", after=order(3), lsn=3))
    deep["after"]["meta"] = json.loads("[" * 200 + "]" * 200)
    huge = plain.value("c", after=order(4, note="x" * (10 << 20)), lsn=4)
    corpus: list[tuple[bytes | str | None, str | None]] = [
        (good, None),
        (good[: len(good) // 2], "not valid JSON"),  # truncated
        (good.replace(b"first order", b"first \xff\xfe order"), "invalid UTF-8"),
        ("caf\udce9", "unpaired surrogate"),
        (b'{"op":"c","after":{"id":NaN},"source":{"lsn":1}}', "not valid JSON"),
        (table.value("c", after=order(5) | {"customer_id": "many"}, lsn=5), "column 'customer_id'"),  # wrong type
        (huge, "exceeds the limit"),
        (json.dumps(deep).encode(), "nested deeper than 64"),
        (b"[" * 5000 + b"]" * 5000, "nested deeper"),
        (table.value("x", after=order(6), lsn=6), "unknown op 'x'"),
        (plain.value("m", after=None, lsn=7), "unknown op 'm'"),
        (plain.value("c", after=None, lsn=8), "needs an 'after' row"),
        (b'[{"op":"c"}]', "must be a JSON object"),
        (b'{"id": 1, "name": "not an event"}', "not a Debezium change event"),
        (b'"just text"', "must be a JSON object"),
        (b"", "not valid JSON"),
        (None, None),  # a tombstone
        (good, None),
    ]
    values = [v for v, _ in corpus]
    keys = [None] * len(values)  # null keys everywhere: fine for inserts
    got = decode_events(values, keys)
    conserved(got, len(values))
    assert got.rows.column("__index").to_pylist() == [0, len(values) - 1]
    assert got.tombstones == [len(values) - 2]
    expected = {i: reason for i, (_, reason) in enumerate(corpus) if reason is not None}
    assert got.rejected_indices == sorted(expected)
    for i, bad in zip(got.rejected_indices, got.rejected, strict=True):
        assert expected[i] in bad.reason, (i, bad.reason)
        assert bad.coords == f"event {i}" and bad.check == "decode"
    by_index = dict(zip(got.rejected_indices, got.rejected, strict=True))
    assert by_index[2].raw == escape_raw(values[2]) and "\\xff\\xfe" in by_index[2].raw
    assert len(by_index[6].raw) > 10 << 20, "an oversize record is kept whole"


def test_record_limits_are_configurable():
    table = DebeziumTable("orders")
    value = table.value("c", after=order(1), lsn=1)
    assert decode_events([value], max_record_bytes=len(value)).rows.num_rows == 1
    got = decode_events([value], max_record_bytes=len(value) - 1)
    assert got.rejected_indices == [0] and f"limit of {len(value) - 1} bytes" in got.rejected[0].reason
    nested = DebeziumTable("n", [Column("id", "int32"), Column("j", "struct", fields=[])], with_schema=False)
    deep = nested.value("c", after={"id": 1, "j": {"a": {"b": {"c": {}}}}}, lsn=1)
    assert decode_events([deep], max_depth=8).rows.num_rows == 1
    assert decode_events([deep], max_depth=5).rejected_indices == [0]


def test_a_cached_schema_prefix_with_a_broken_payload_is_still_rejected_precisely():
    table = DebeziumTable("orders")
    good = table.value("c", after=order(1), lsn=1)
    broken = good[:-30] + b"}"
    trailing = good[:-1] + b',"extra":1}'
    got = decode_events([good, broken, trailing])
    conserved(got, 3)
    assert got.rejected_indices == [1]
    assert "not valid JSON" in got.rejected[0].reason
    assert got.rows.column("id").to_pylist() == [1, 1], "an extra top-level key does not hide the payload"


def test_malformed_embedded_schemas_reject_their_records():
    table = DebeziumTable("orders")
    good = json.loads(table.value("c", after=order(1), lsn=1))
    unknown = json.loads(json.dumps(good))
    unknown["schema"]["fields"][1]["fields"][0]["type"] = "int128"
    no_row = json.loads(json.dumps(good))
    no_row["schema"]["fields"] = no_row["schema"]["fields"][2:]
    bad_decimal = json.loads(json.dumps(good))
    bad_decimal["schema"]["fields"][1]["fields"][2]["parameters"] = {"scale": "two"}
    vast = json.loads(json.dumps(good))
    vast["schema"]["fields"][1]["fields"][2]["parameters"] = {"scale": "2", "connect.decimal.precision": "100000000"}
    got = decode_events([json.dumps(x) for x in (good, unknown, no_row, bad_decimal, vast)])
    conserved(got, 5)
    assert got.rejected_indices == [1, 2, 3, 4]
    assert "precision 100000000" in got.rejected[3].reason
    assert "unknown Connect type 'int128'" in got.rejected[0].reason and "'id'" in got.rejected[0].reason
    assert "no 'after' or 'before'" in got.rejected[1].reason
    assert "'scale'" in got.rejected[2].reason


def test_undeclared_fields_and_meta_name_collisions_are_rejected():
    table = DebeziumTable("t", [Column("id", "int32", optional=False)])
    plain = DebeziumTable("t", with_schema=False)
    values = [
        table.value("c", after={"id": 1, "sneaky": 2}, lsn=1),
        plain.value("c", after={"id": 2, "__op": "x"}, lsn=2),
        plain.value("c", after={"id": 3}, lsn=3),
    ]
    got = decode_events(values)
    conserved(got, 3)
    assert got.rejected_indices == [0, 1]
    assert "'sneaky'" in got.rejected[0].reason and "'__op'" in got.rejected[1].reason
    assert got.rows.column("id").to_pylist() == [3]


def test_unchanged_toast_placeholder_passes_through_as_text():
    # The codec does not invent the old value; the merge has to keep the stored one (see module doc).
    table = DebeziumTable("orders")
    got = decode_events([table.value("u", after=order(1, note=UNAVAILABLE_VALUE), lsn=1)])
    assert got.rows.column("note").to_pylist() == [UNAVAILABLE_VALUE]


def test_escape_raw_is_lossless():
    raw = b'{"a":"back\\\\slash \xff\\xff"}'
    text = escape_raw(raw)
    assert text == '{"a":"back\\\\\\\\slash \\xff\\\\xff"}'
    # Reverse: an escaped backslash pair is one backslash; a lone \xNN is the byte.
    import re

    back = re.sub(rb"\\\\|\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]) if m.group(1) else b"\\", text.encode())
    assert back == raw
    assert escape_raw(b'{"ok":1}') == '{"ok":1}'


def test_programming_errors_raise():
    with pytest.raises(ValueError, match="keys"):
        decode_events([b"{}"], keys=[])
    with pytest.raises(ValueError, match="coordinates"):
        decode_events([b"{}"], coords=["a", "b"])
    with pytest.raises(TypeError, match="pass bytes, str or None"):
        decode_events([42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="key is a int"):
        decode_events([None], keys=[7])  # type: ignore[list-item]
