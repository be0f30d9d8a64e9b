"""Type fidelity of the Debezium decoder (issue 14), with events as the PostgreSQL connector 3.6 writes them:
one answer per value whatever its neighbours, a declared type for unconstrained numerics, every
``time.precision.mode`` and ``decimal.handling.mode`` with and without the embedded schema, and the
unchanged-TOAST placeholder and schema defaults handed to the writer."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
from typing import Any

import pyarrow as pa
import pytest

import icefield.ingest.debezium_codec as codec
from icefield.ingest.debezium_codec import META_COLUMNS, UNAVAILABLE_VALUE, DecodedEvents, decode_events
from icefield.testing.debezium import (
    Column,
    DebeziumTable,
    encode_decimal,
    encode_variable_decimal,
    variable_decimal_column,
)

D = decimal.Decimal
FLT_MAX = 3.4028234663852886e38


def user_rows(got: DecodedEvents) -> list[dict[str, Any]]:
    return got.rows.drop_columns([c for c in got.rows.column_names if c in META_COLUMNS or c.startswith("__")]).to_pylist()


def type_options(**settings: Any) -> Any:
    from icefield.ingest.debezium_types import TypeOptions

    return TypeOptions.from_settings(**settings)


# ------------------------------------------------------------------ one answer per value


REALS = DebeziumTable("f", [Column("id", "int32", optional=False), Column("r", "float")])


@pytest.mark.parametrize("neighbour", [None, "NaN", "Infinity", 1.5], ids=["alone", "beside NaN", "beside Infinity", "beside 1.5"])
def test_the_largest_real_is_read_alike_whatever_its_neighbours(neighbour: Any) -> None:
    """D3: 3.4028235E38 (PostgreSQL's largest real as Debezium sends it) was quarantined when the batch
    also held a NaN (the per-value path compared the double with FLT_MAX) and kept otherwise."""
    values = [REALS.value("c", after={"id": 1, "r": 3.4028235e38}, lsn=1), REALS.value("c", after={"id": 2, "r": -3.4028235e38}, lsn=2)]
    if neighbour is not None:
        values.append(REALS.value("c", after={"id": 3, "r": neighbour}, lsn=3))
    got = decode_events(values)
    assert got.rejected == []
    assert got.rows.column("r").to_pylist()[:2] == [FLT_MAX, -FLT_MAX]


@pytest.mark.parametrize("neighbour", [None, "NaN"], ids=["alone", "beside NaN"])
def test_a_real_beyond_the_largest_is_refused_whatever_its_neighbours(neighbour: Any) -> None:
    values = [REALS.value("c", after={"id": 1, "r": 3.5e38}, lsn=1), REALS.value("c", after={"id": 2, "r": 1.0}, lsn=2)]
    if neighbour is not None:
        values.append(REALS.value("c", after={"id": 3, "r": neighbour}, lsn=3))
    got = decode_events(values)
    assert got.rejected_indices == [0] and "does not fit in a 32-bit float" in got.rejected[0].reason


def test_non_finite_reals_and_doubles_stay_as_they_are() -> None:
    table = DebeziumTable("f", [Column("id", "int32", optional=False), Column("r", "float"), Column("d", "double")])
    specials = ["NaN", "Infinity", "-Infinity"]
    got = decode_events([table.value("c", after={"id": i, "r": v, "d": v}, lsn=i) for i, v in enumerate(specials)])
    assert got.rejected == []
    for column in ("r", "d"):
        nan, inf, minus = got.rows.column(column).to_pylist()
        assert nan != nan and inf == float("inf") and minus == float("-inf")


# ------------------------------------------------------------------ unconstrained numeric

NV = DebeziumTable("nv", [Column("id", "int32", optional=False), variable_decimal_column("n")])


def numerics(values: list[str], start: int = 0, table: DebeziumTable = NV) -> list[bytes | None]:
    return [table.value("c", after={"id": start + i, "n": encode_variable_decimal(v)}, lsn=start + i) for i, v in enumerate(values)]


def test_an_unconstrained_numeric_has_one_type_whatever_the_values() -> None:
    """D2: the column's type was decimal(38, largest scale of the batch), or text past 38 digits."""
    coarse = decode_events(numerics(["1.5", "2.25"]))
    fine = decode_events(numerics(["0.000001", "12345.6"]))
    assert coarse.rows.schema.field("n").type == fine.rows.schema.field("n").type == pa.decimal128(38, 18)
    assert coarse.rows.column("n").to_pylist() == [D("1.5"), D("2.25")]
    assert fine.rows.column("n").to_pylist() == [D("0.000001"), D("12345.6")]


def test_a_numeric_that_does_not_fit_its_declared_type_rejects_its_row_only() -> None:
    pi = "3.14159265358979323846264338327950288"
    got = decode_events(numerics([pi, "1.25", "1" * 21, "-" + "9" * 20 + "." + "9" * 18, "2.500000000000000000000"]), coords=[f"nv:{i}" for i in range(5)])
    assert got.rejected_indices == [0, 2]
    assert pi in got.rejected[0].reason and "35 decimal places" in got.rejected[0].reason
    assert "integer digits" in got.rejected[1].reason
    assert json.loads(got.rejected[0].raw)["payload"]["after"]["n"] == encode_variable_decimal(pi), "the raw event is kept"
    assert got.rows.column("n").to_pylist() == [D("1.25"), D("-" + "9" * 20 + "." + "9" * 18), D("2.5")]


def test_a_numeric_declared_string_is_postgresql_text_of_each_value() -> None:
    texts = ["1.50", "12.5", "0.000001", "1" * 45 + ".5", "-0", "100"]
    got = decode_events(numerics(texts), types=type_options(numeric_columns={"n": "string"}))
    assert got.rows.schema.field("n").type == pa.string()
    assert got.rows.column("n").to_pylist() == ["1.50", "12.5", "0.000001", "1" * 45 + ".5", "0", "100"]


def test_an_unconstrained_numeric_keeps_the_type_its_table_has() -> None:
    schema = pa.schema([("id", pa.int32()), ("n", pa.decimal128(38, 2))])
    got = decode_events(numerics(["1.5", "0.001"]), table_schema=schema)
    assert got.rows.schema.field("n").type == pa.decimal128(38, 2)
    assert got.rows.column("n").to_pylist() == [D("1.5")] and got.rejected_indices == [1]


def test_an_unconstrained_numeric_without_the_schema_is_read_by_its_shape() -> None:
    plain = DebeziumTable("nv", with_schema=False)
    got = decode_events(numerics(["1.5", "0.000001"], table=plain))
    assert got.rows.schema.field("n").type == pa.decimal128(38, 18)
    assert got.rows.column("n").to_pylist() == [D("1.5"), D("0.000001")]


# ------------------------------------------------------------------ connector settings, with the schema


def test_isostring_dates_times_and_timestamps_are_typed_and_their_infinities_refused() -> None:
    """time.precision.mode=isostring (Debezium 3): ISO text with a trailing Z, as the connector sends it."""
    table = DebeziumTable(
        "iso",
        [
            Column("id", "int32", optional=False),
            Column("d", "string", "io.debezium.time.IsoDate"),
            Column("t", "string", "io.debezium.time.IsoTime"),
            Column("ts", "string", "io.debezium.time.IsoTimestamp"),
        ],
    )
    good = [
        {"id": 1, "d": "0001-01-01Z", "t": "00:00:00Z", "ts": "0001-01-01T00:00:00Z"},
        {"id": 2, "d": "9999-12-31Z", "t": "23:59:59.999999Z", "ts": "9999-12-31T23:59:59.999999Z"},
        {"id": 3, "d": "2020-02-29Z", "t": "00:00:00.123Z", "ts": "2000-01-01T00:00:01.5Z"},
    ]
    bad = [{"id": 4, "d": "+292278994-08-16Z"}, {"id": 5, "ts": "-0043-03-15T00:00:00Z"}, {"id": 6, "ts": "+294247-01-10T04:00:25.2Z"}, {"id": 7, "t": "24:00:00Z"}]
    got = decode_events([table.value("c", after=r, lsn=r["id"]) for r in good + bad])
    assert got.rejected_indices == [3, 4, 5, 6]
    assert [r for r in user_rows(got)] == [
        {"id": 1, "d": dt.date(1, 1, 1), "t": dt.time(0, 0), "ts": dt.datetime(1, 1, 1)},
        {"id": 2, "d": dt.date(9999, 12, 31), "t": dt.time(23, 59, 59, 999999), "ts": dt.datetime(9999, 12, 31, 23, 59, 59, 999999)},
        {"id": 3, "d": dt.date(2020, 2, 29), "t": dt.time(0, 0, 0, 123000), "ts": dt.datetime(2000, 1, 1, 0, 0, 1, 500000)},
    ]
    assert got.rows.schema.field("d").type == pa.date32() and got.rows.schema.field("ts").type == pa.timestamp("us")


def test_decimal_handling_string_and_double_keep_numeric_special_values() -> None:
    """decimal.handling.mode=string sends PostgreSQL's NaN/Infinity as text, double as doubles: kept."""
    table = DebeziumTable("m", [Column("id", "int32", optional=False), Column("s", "string"), Column("d", "double")])
    rows = [{"id": 1, "s": "NAN", "d": "NaN"}, {"id": 2, "s": "POSITIVE_INFINITY", "d": "Infinity"}, {"id": 3, "s": "-12.50", "d": -12.5}]
    got = decode_events([table.value("c", after=r, lsn=r["id"]) for r in rows])
    assert got.rejected == []
    assert got.rows.column("s").to_pylist() == ["NAN", "POSITIVE_INFINITY", "-12.50"]
    nan, inf, x = got.rows.column("d").to_pylist()
    assert nan != nan and inf == float("inf") and x == -12.5


# ------------------------------------------------------------------ connector settings, without the schema

PLAIN = DebeziumTable("p", with_schema=False)


def plain(rows: list[dict[str, Any]], **settings: Any) -> DecodedEvents:
    return decode_events([PLAIN.value("c", after=r, lsn=i + 1) for i, r in enumerate(rows)], types=type_options(**settings))


def test_without_the_schema_declared_columns_read_as_the_connector_encodes_them() -> None:
    """The known limit was: without the schema a precise decimal stays base64 text and dates integers."""
    ts = dt.datetime(1999, 12, 31, 23, 59, 58, 654321)
    micros = (ts - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    columns = {"amount": "numeric(10,2)", "n": "numeric", "day": "date", "at": "timestamp", "at3": "timestamp(3)", "t": "time", "t3": "time(3)", "tags": "date[]", "raw": "bytea"}
    row = {
        "id": 1, "amount": encode_decimal("-12345678.90", 2), "n": encode_variable_decimal("0.000001"), "day": 10957,
        "at": micros, "at3": micros // 1000, "t": 3_600_000_001, "t3": 3_600_001, "tags": [0, None], "raw": base64.b64encode(b"\x00\xff").decode(),
    }  # fmt: skip
    got = plain([row], columns=columns)
    assert got.rejected == []
    assert user_rows(got) == [
        {"id": 1, "amount": D("-12345678.90"), "n": D("0.000001"), "day": dt.date(2000, 1, 1), "at": ts, "at3": ts.replace(microsecond=654000),
         "t": dt.time(1, 0, 0, 1), "t3": dt.time(1, 0, 0, 1000), "tags": [dt.date(1970, 1, 1), None], "raw": b"\x00\xff"},
    ]  # fmt: skip
    assert got.rows.schema.field("amount").type == pa.decimal128(10, 2)


def test_without_the_schema_time_precision_connect_and_microseconds_modes() -> None:
    got = plain([{"id": 1, "t": 3_600_001, "at": 946_684_801_123}], columns={"t": "time(6)", "at": "timestamp(6)"}, time_mode="connect")
    assert user_rows(got) == [{"id": 1, "t": dt.time(1, 0, 0, 1000), "at": dt.datetime(2000, 1, 1, 0, 0, 1, 123000)}]
    got = plain([{"id": 1, "t": 3_600_000_001}], columns={"t": "time(3)"}, time_mode="adaptive_time_microseconds")
    assert user_rows(got) == [{"id": 1, "t": dt.time(1, 0, 0, 1)}]
    got = plain([{"id": 1, "d": "2020-02-29Z", "at": "2000-01-01T00:00:01Z"}], columns={"d": "date", "at": "timestamp"}, time_mode="isostring")
    assert user_rows(got) == [{"id": 1, "d": dt.date(2020, 2, 29), "at": dt.datetime(2000, 1, 1, 0, 0, 1)}]


def test_without_the_schema_decimal_text_is_typed_and_nan_quarantined() -> None:
    rows = [{"id": 1, "amount": "12.50", "n": "0.000001"}, {"id": 2, "amount": "NAN", "n": "1"}, {"id": 3, "amount": "1.5", "n": "POSITIVE_INFINITY"}]
    got = plain(rows, columns={"amount": "numeric(10,2)", "n": "numeric"}, decimal_mode="string")
    assert user_rows(got) == [{"id": 1, "amount": D("12.50"), "n": D("0.000001")}]
    assert got.rejected_indices == [1, 2]
    assert all("NaN or an infinity" in r.reason for r in got.rejected)
    got = plain([{"id": 1, "amount": 12.5}, {"id": 2, "amount": "NaN"}], columns={"amount": "numeric(10,2)"}, decimal_mode="double")
    values = got.rows.column("amount").to_pylist()
    assert got.rows.schema.field("amount").type == pa.float64() and values[0] == 12.5 and values[1] != values[1]


def test_without_the_schema_intervals_follow_interval_handling_mode() -> None:
    got = plain([{"id": 1, "i": 37_091_106_789_012}], columns={"i": "interval"})
    assert user_rows(got) == [{"id": 1, "i": 37_091_106_789_012}]
    got = plain([{"id": 1, "i": "P1Y2M3DT4H5M6.789012S"}], columns={"i": "interval"}, interval_mode="string")
    assert user_rows(got) == [{"id": 1, "i": "P1Y2M3DT4H5M6.789012S"}]


def test_declared_columns_leave_the_fast_path_to_other_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": i, "day": 10957 + i, "note": f"n{i}"} for i in range(20)]
    values = [PLAIN.value("c", after=r, lsn=i + 1) for i, r in enumerate(rows)]
    assert codec._fast_decode(values, None, None, codec.DEFAULT_MAX_RECORD_BYTES, codec.DEFAULT_MAX_DEPTH) is not None
    types = type_options(columns={"day": "date"})
    assert codec._fast_decode(values, None, None, codec.DEFAULT_MAX_RECORD_BYTES, codec.DEFAULT_MAX_DEPTH, types) is None
    assert decode_events(values, types=types).rows.column("day").to_pylist()[0] == dt.date(2000, 1, 1)


# ------------------------------------------------------------------ unchanged TOAST values

TOAST = DebeziumTable(
    "toast",
    [
        Column("id", "int32", optional=False),
        Column("t", "string"),
        Column("big", "string"),
        Column("arr", "array", items={"type": "string", "optional": True}),
        Column("iarr", "array", items={"type": "int32", "optional": True}),
        Column("darr", "array", items={"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1}),
        Column("bin", "bytes"),
    ],
)
PLACEHOLDERS = {
    "big": UNAVAILABLE_VALUE,
    "arr": [UNAVAILABLE_VALUE],
    "iarr": list(UNAVAILABLE_VALUE.encode()),
    "darr": list(UNAVAILABLE_VALUE.encode()),
    "bin": base64.b64encode(UNAVAILABLE_VALUE.encode()).decode(),
}


@pytest.mark.parametrize("with_schema", [True, False], ids=["schema", "no-schema"])
def test_the_unchanged_toast_placeholder_is_named_per_row_in_every_form(with_schema: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """D1: the placeholder passed through as a value; the writer could not tell it from data."""
    table = TOAST if with_schema else DebeziumTable("toast", with_schema=False)
    values = [
        table.value("r", after={"id": 1, "t": "a", "big": "x" * 10, "arr": ["y"], "iarr": [1], "darr": [1], "bin": "AA=="}, lsn=1, commit_lsn=None),
        table.value("u", after={"id": 1, "t": "b", **PLACEHOLDERS}, lsn=2, commit_lsn=3),
        table.value("u", after={"id": 1, "t": UNAVAILABLE_VALUE, "big": "z", "arr": [UNAVAILABLE_VALUE, "q"], "iarr": [], "darr": None, "bin": None}, lsn=4, commit_lsn=5),
    ]
    got = decode_events(values)
    assert got.rejected == []
    assert got.rows.column("__unchanged").to_pylist() == [None, sorted(PLACEHOLDERS, key=list(PLACEHOLDERS).index), ["t"]]
    assert got.rows.column("big").to_pylist()[1] == UNAVAILABLE_VALUE, "the value itself is kept for the writer to replace"
    with monkeypatch.context() as m:
        m.setattr(codec, "_FAST", False)
        slow = decode_events(values)
    assert slow.rows.to_pylist() == got.rows.to_pylist(), "both decode paths name the same values"


def test_a_batch_without_the_placeholder_gets_no_unchanged_column() -> None:
    got = decode_events([TOAST.value("u", after={"id": 1, "t": "b", "big": "text"}, lsn=2, commit_lsn=3)])
    assert "__unchanged" not in got.rows.column_names


# ------------------------------------------------------------------ defaults of added columns


def test_defaults_of_columns_the_table_lacks_are_handed_over_and_given_to_older_rows_of_the_batch() -> None:
    old = DebeziumTable("u", [Column("id", "int32", optional=False), Column("name", "string")])
    new_columns = [*old.columns, Column("c", "string"), Column("n", "int32", optional=False), Column("day", "int32", "io.debezium.time.Date")]
    new = DebeziumTable("u", new_columns)
    schema = new.value_schema()
    defaults = {"c": "dflt", "n": 42, "day": 18294}
    for f in schema["fields"][1]["fields"]:
        if f["field"] in defaults:
            f["default"] = defaults[f["field"]]
    for f in schema["fields"][0]["fields"]:
        if f["field"] in defaults:
            f["default"] = defaults[f["field"]]

    def with_defaults(op: str, after: dict[str, Any], lsn: int) -> bytes:
        return json.dumps({"schema": schema, "payload": new.payload(op, after=after, lsn=lsn)}, separators=(",", ":")).encode()

    values = [
        old.value("u", after={"id": 1, "name": "before"}, lsn=1),
        with_defaults("u", {"id": 2, "name": "after", "c": "mine", "n": 7, "day": None}, 2),
    ]
    table_schema = pa.schema([("id", pa.int32()), ("name", pa.string())])
    got = decode_events(values, table_schema=table_schema)
    assert user_rows(got) == [
        {"id": 1, "name": "before", "c": "dflt", "n": 42, "day": dt.date(2020, 2, 2)},
        {"id": 2, "name": "after", "c": "mine", "n": 7, "day": None},
    ]
    assert got.rows.column("__defaults").to_pylist() == [{"c": "dflt", "n": 42, "day": dt.date(2020, 2, 2)}] * 2
    again = decode_events(values, table_schema=got.rows.select(["id", "name", "c", "n", "day"]).schema)
    assert "__defaults" not in again.rows.column_names, "columns the table has get nothing"


def test_both_decode_paths_name_the_same_unchanged_values(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = DebeziumTable("toast", with_schema=False)
    values = [plain.value("r", after={"id": i, "t": f"t{i}", "big": "x" * i}, lsn=i, commit_lsn=None) for i in range(1, 30)]
    values += [plain.value("u", after={"id": i, "t": "u", "big": UNAVAILABLE_VALUE}, lsn=100 + i, commit_lsn=200) for i in range(1, 5)]
    assert codec._fast_decode(values, None, None, codec.DEFAULT_MAX_RECORD_BYTES, codec.DEFAULT_MAX_DEPTH) is not None, "a batch the fast path takes"
    fast = decode_events(values)
    with monkeypatch.context() as m:
        m.setattr(codec, "_FAST", False)
        slow = decode_events(values)
    assert fast.rows.to_pylist() == slow.rows.to_pylist()
    assert fast.rows.column("__unchanged").to_pylist() == [None] * 29 + [["big"]] * 4


@pytest.mark.parametrize("table_type", [None, pa.float32(), pa.float64()], ids=["inferred", "real", "double"])
def test_without_the_schema_non_finite_floats_stay_and_the_largest_real_is_one_value(table_type: pa.DataType | None) -> None:
    """JsonConverter writes NaN and the infinities as text; a double column quarantined them as 'not a
    finite number' without the schema, and kept them with it."""
    values = [PLAIN.value("c", after={"id": i, "r": v}, lsn=i + 1) for i, v in enumerate([1.5, "NaN", 3.4028235e38, "-Infinity", "Infinity"])]
    schema = pa.schema([("id", pa.int64()), ("r", table_type)]) if table_type is not None else None
    got = decode_events(values, table_schema=schema)
    assert got.rejected == []
    one, nan, top, minus, plus = got.rows.column("r").to_pylist()
    assert one == 1.5 and nan != nan and minus == float("-inf") and plus == float("inf")
    assert top == (FLT_MAX if table_type == pa.float32() else 3.4028235e38)
