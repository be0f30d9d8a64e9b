"""Strict typing of incoming values: nothing is coerced silently, every refusal names column and value."""

from __future__ import annotations

import datetime as dt
import decimal
import re
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icefield.ingest.coerce import cast_column, conform, convert_values, infer_type, parse_type

D = decimal.Decimal
UTC = dt.UTC
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def convert(values: list[Any], t: pa.DataType, name: str = "col") -> tuple[list[Any], dict[int, str]]:
    bad: dict[int, str] = {}
    out = convert_values(name, values, t, bad)
    assert out.type == t and len(out) == len(values)
    return out.to_pylist(), bad


def cast(arr: pa.Array, t: pa.DataType, name: str = "col") -> tuple[list[Any], dict[int, str]]:
    bad: dict[int, str] = {}
    out = cast_column(name, arr, t, bad)
    assert out.type == t and len(out) == len(arr)
    return out.to_pylist(), bad


def good(values: list[Any], bad: dict[int, str]) -> list[Any]:
    """The values of the rows not marked bad."""
    return [v for i, v in enumerate(values) if i not in bad]


# ------------------------------------------------------------------ type names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("long", pa.int64()),
        ("INT", pa.int32()),
        ("double", pa.float64()),
        ("decimal(10, 2)", pa.decimal128(10, 2)),
        ("timestamp", pa.timestamp("us")),
        ("timestamptz", pa.timestamp("us", tz="UTC")),
        ("date", pa.date32()),
        ("boolean", pa.bool_()),
        ("text", pa.string()),
    ],
)
def test_parse_type(name, expected):
    assert parse_type(name) == expected


def test_unknown_type_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown column type 'varchar'.*decimal\(P,S\)"):
        parse_type("varchar")


# ------------------------------------------------------------------ integers


def test_text_that_is_not_exactly_an_integer_is_refused():
    values = ["12", "12abc", "1.5", "1e3", "0x10", "1_000", "１２", "", "-7", "+8"]
    out, bad = convert(values, pa.int64(), "qty")
    assert sorted(bad) == [1, 2, 3, 4, 5, 6, 7]
    assert out == [12, None, None, None, None, None, None, None, -7, 8]


def test_integer_reason_names_column_value_and_type():
    _, bad = convert(["12abc"], pa.int64(), "qty")
    assert bad == {0: "type: column 'qty' value '12abc' not an integer (int64)"}


def test_float_with_a_fraction_never_becomes_an_int():
    out, bad = convert([1.5, 2.0, -0.5, float("nan"), float("inf")], pa.int64(), "qty")
    assert out == [None, 2, None, None, None]
    assert set(bad) == {0, 2, 3, 4}
    assert "value 1.5 not a whole number" in bad[0]


def test_decimal_with_a_fraction_never_becomes_an_int():
    out, bad = convert([D("3.00"), D("3.10")], pa.int32(), "qty")
    assert out == [3, None] and set(bad) == {1}


def test_booleans_are_not_integers():
    out, bad = convert([True, 1, False], pa.int64(), "flag")
    assert out == [None, 1, None]
    assert "value True a boolean is not an integer" in bad[0]


def test_integer_out_of_range_is_refused():
    out, bad = convert([1 << 40, 5], pa.int32(), "n")
    assert out == [None, 5]
    assert "does not fit in 32 bits" in bad[0]
    out, bad = convert([1 << 64], pa.int64(), "n")
    assert out == [None] and "does not fit in 64 bits" in bad[0]


def test_text_column_to_int_through_arrow_is_strict():
    out, bad = cast(pa.array(["1", "12abc", None, "0x10", "3"]), pa.int64(), "qty")
    assert out == [1, None, None, None, 3]
    assert set(bad) == {1, 3}
    assert "'12abc'" in bad[1] and "'0x10'" in bad[3]


def test_arrow_float_column_to_int_refuses_fractions():
    out, bad = cast(pa.array([1.0, 1.5]), pa.int64(), "qty")
    assert out == [1, None] and set(bad) == {1}


def test_arrow_boolean_column_is_not_cast_to_numbers():
    for t in (pa.int64(), pa.float64(), pa.decimal128(10, 2)):
        out, bad = cast(pa.array([True, False, None]), t, "flag")
        assert out == [None, None, None]
        assert set(bad) == {0, 1}, t
        assert "column 'flag' value True" in bad[0]


def test_arrow_int_column_to_bool_takes_only_zero_and_one():
    out, bad = cast(pa.array([1, 0, 2]), pa.bool_(), "flag")
    assert out == [True, False, None]
    assert set(bad) == {2} and "value 2 not a boolean" in bad[2]


def test_int64_column_narrowed_to_int32_refuses_overflow():
    out, bad = cast(pa.array([1, 1 << 40], pa.int64()), pa.int32(), "n")
    assert out == [1, None] and set(bad) == {1}


# ------------------------------------------------------------------ floats and decimals


def test_nan_and_infinity_are_refused_for_floats():
    values = [1.5, float("nan"), float("inf"), float("-inf"), "nan", "-Infinity", "1e400", "2.5", "1_000.5"]
    out, bad = convert(values, pa.float64(), "price")
    assert set(bad) == {1, 2, 3, 4, 5, 6, 8}
    assert good(out, bad) == [1.5, 2.5]
    assert "column 'price'" in bad[1] and "not a finite number" in bad[1]


def test_nan_and_infinity_are_refused_for_floats_through_arrow():
    out, bad = cast(pa.array(["1.25", "nan", "inf", "x"]), pa.float64(), "price")
    assert set(bad) == {1, 2, 3}
    assert out[0] == 1.25
    out, bad = cast(pa.array([1.0, float("nan")], pa.float32()), pa.float64(), "price")
    assert set(bad) == {1} and out[0] == 1.0


def test_booleans_are_not_floats():
    _, bad = convert([True], pa.float64(), "price")
    assert "a boolean is not a number" in bad[0]


def test_nan_and_infinity_are_refused_for_decimals():
    t = pa.decimal128(10, 2)
    out, bad = convert([float("nan"), D("NaN"), "Infinity", D("-Infinity"), "1.50"], t, "amount")
    assert set(bad) == {0, 1, 2, 3}
    assert out[4] == D("1.50")


def test_decimal_scale_loss_is_refused():
    t = pa.decimal128(10, 2)
    values = ["1.005", D("1.2345"), 1.005, "2.5", 3, D("4.10"), 0.1]
    out, bad = convert(values, t, "amount")
    assert set(bad) == {0, 1, 2}
    assert "value '1.005' has more than 2 decimal places" in bad[0]
    assert good(out, bad) == [D("2.50"), D("3.00"), D("4.10"), D("0.10")]


def test_decimal_precision_overflow_is_refused():
    out, bad = convert(["123456789.12", "12345678.12"], pa.decimal128(10, 2), "amount")
    assert out == [None, D("12345678.12")]
    assert "more than 10 digits" in bad[0]


def test_a_huge_number_is_refused_for_a_decimal_not_crashed_on():
    out, bad = convert([1e26, "1e30", 5], pa.decimal128(10, 2), "amount")
    assert out == [None, None, D("5.00")]
    assert sorted(bad) == [0, 1] and all("more than 10 digits" in r for r in bad.values())


def test_decimal_scale_loss_is_refused_through_arrow():
    out, bad = cast(pa.array([D("1.2345"), D("1.2300")], pa.decimal128(10, 4)), pa.decimal128(10, 2), "amount")
    assert out == [None, D("1.23")] and set(bad) == {0}
    out, bad = cast(pa.array([1.005, 1.25, float("nan")]), pa.decimal128(10, 2), "amount")
    assert out == [None, D("1.25"), None] and set(bad) == {0, 2}
    # Arrow's own float-to-decimal cast rounds 1.005 to 1.00 without a word when nothing else fails.
    out, bad = cast(pa.array([1.005, 2.5]), pa.decimal128(10, 2), "amount")
    assert out == [None, D("2.50")]
    assert "value 1.005 has more than 2 decimal places" in bad[0]


# ------------------------------------------------------------------ booleans, text, dates


def test_booleans_strict():
    out, bad = convert([True, "true", "FALSE", "yes", "1", 0, 1, 2], pa.bool_(), "active")
    assert out == [True, True, False, None, None, False, True, None]
    assert set(bad) == {3, 4, 7}


def test_bytes_are_not_text():
    out, bad = convert([b"\x00\x01", "ok"], pa.string(), "s")
    assert out == [None, "ok"] and "bytes are not text" in bad[0]


def test_date_refuses_a_time_of_day():
    out, bad = convert(["2024-03-01", dt.datetime(2024, 3, 2), "2024-03-01T10:00:00", "2024-02-30"], pa.date32(), "d")
    assert out[:2] == [dt.date(2024, 3, 1), dt.date(2024, 3, 2)]
    assert set(bad) == {2, 3}


def test_arrow_timestamp_column_to_date_refuses_a_time_of_day():
    arr = pa.array([dt.datetime(2024, 3, 1), dt.datetime(2024, 3, 1, 10)], pa.timestamp("us"))
    out, bad = cast(arr, pa.date32(), "d")
    assert out == [dt.date(2024, 3, 1), None] and set(bad) == {1}


# ------------------------------------------------------------------ timestamps


def test_iso_timestamps_with_offsets_become_utc_naive_for_timestamp():
    values = ["2024-03-01T10:00:00Z", "2024-03-01T12:00:00+02:00", "2024-03-01 10:00:00", "2024-03-01"]
    out, bad = convert(values, pa.timestamp("us"), "ts")
    assert bad == {}
    assert out == [
        dt.datetime(2024, 3, 1, 10),
        dt.datetime(2024, 3, 1, 10),
        dt.datetime(2024, 3, 1, 10),
        dt.datetime(2024, 3, 1),
    ]


def test_iso_timestamps_become_utc_aware_for_timestamptz():
    values = ["2024-03-01T10:00:00Z", "2024-03-01T12:00:00+02:00", "2024-03-01T10:00:00"]
    out, bad = convert(values, pa.timestamp("us", tz="UTC"), "ts")
    assert bad == {}
    assert out == [dt.datetime(2024, 3, 1, 10, tzinfo=UTC)] * 3
    assert all(v.tzinfo is not None and v.utcoffset() == dt.timedelta(0) for v in out)


def test_text_column_to_timestamp_through_arrow():
    arr = pa.array(["2024-03-01T10:00:00Z", "yesterday", "2024-13-01T00:00:00", None])
    out, bad = cast(arr, pa.timestamp("us"), "ts")
    assert out == [dt.datetime(2024, 3, 1, 10), None, None, None]
    assert set(bad) == {1, 2}
    assert "column 'ts' value 'yesterday' not a timestamp" in bad[1]
    assert "not a valid timestamp" in bad[2]


def test_numbers_are_not_timestamps():
    out, bad = convert([1709287200, 1.5], pa.timestamp("us"), "ts")
    assert out == [None, None] and set(bad) == {0, 1}
    out, bad = cast(pa.array([1709287200]), pa.timestamp("us"), "ts")
    assert out == [None] and set(bad) == {0}


def test_first_reason_wins_and_nulls_are_never_bad():
    bad: dict[int, str] = {1: "earlier reason"}
    out = convert_values("n", [None, "x", None], pa.int64(), bad)
    assert out.to_pylist() == [None, None, None]
    assert bad == {1: "earlier reason"}


# ------------------------------------------------------------------ inference and conform


def test_infer_type():
    assert infer_type([1, 2, None]) == pa.int64()
    assert infer_type([1, 2.5]) == pa.float64()
    assert infer_type(["a", 1]) == pa.string()
    assert infer_type([None, None]) == pa.string()
    assert infer_type(["2024-03-01T10:00:00Z"]) == pa.timestamp("us", tz="UTC")
    assert infer_type(["2024-03-01T10:00:00"]) == pa.timestamp("us")
    assert infer_type(["2024-03-01"]) == pa.date32()
    assert infer_type([True, False]) == pa.bool_()


def test_conform_adds_missing_columns_as_nulls_and_keeps_extra_ones():
    schema = pa.schema([("id", pa.int64()), ("amount", pa.decimal128(10, 2)), ("note", pa.string())])
    table = pa.table({"id": ["1", "2x", "3"], "amount": ["1.50", "2.00", "0.001"], "extra": [1, 2, 3]})
    typed, bad = conform(table, schema)
    assert typed.schema.field("id").type == pa.int64()
    assert typed.schema.field("amount").type == pa.decimal128(10, 2)
    assert typed.column("note").type == pa.string()
    assert typed.column("note").null_count == 3
    assert typed.column("extra").to_pylist() == [1, 2, 3]
    assert set(bad) == {1, 2}
    assert "column 'id' value '2x'" in bad[1]
    assert "column 'amount' value '0.001'" in bad[2]
    assert typed.column("id").to_pylist()[0] == 1


def test_conform_of_matching_table_is_clean():
    schema = pa.schema([("id", pa.int64())])
    typed, bad = conform(pa.table({"id": pa.array([1, 2], pa.int64())}), schema)
    assert bad == {} and typed.column("id").to_pylist() == [1, 2]


# ------------------------------------------------------------------ property: integers are exact or bad

_ASCII_INT = re.compile(r"[+-]?[0-9]+")


def exact_int(v: Any) -> int | None:
    """The integer ``v`` denotes exactly, or None when it is not an int64 integer."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        n = v
    elif isinstance(v, str) and _ASCII_INT.fullmatch(v.strip()):
        n = int(v.strip())
    else:
        return None
    return n if INT64_MIN <= n <= INT64_MAX else None


_ints = st.one_of(st.integers(), st.integers(min_value=INT64_MIN - 2, max_value=INT64_MAX + 2))
_texts = st.one_of(
    st.text(max_size=8),
    st.from_regex(r"\A\s?[+-]?[0-9]{1,20}(\.[0-9]?)?\s?\Z"),
    _ints.map(str),
    st.sampled_from(["0x1f", "1e3", "１２", "٣", "1_0", "+0", "-0", "00", "12abc", " ", "NaN"]),
)


def check_exact_or_bad(values: list[Any], out: list[Any], bad: dict[int, str]) -> None:
    assert len(out) == len(values)
    for i, v in enumerate(values):
        expected = exact_int(v)
        if v is None:
            assert out[i] is None and i not in bad
        elif expected is None:
            assert i in bad and out[i] is None, (v, out[i])
        else:
            # A value that denotes an integer is kept as exactly that integer.
            assert i not in bad and out[i] == expected and type(out[i]) is int, (v, out[i])
        if i in bad:
            assert "column 'n'" in bad[i]


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.one_of(st.none(), _ints, _texts), max_size=12))
def test_property_convert_values_to_int64_is_exact_or_bad(values):
    bad: dict[int, str] = {}
    out = convert_values("n", values, pa.int64(), bad).to_pylist()
    check_exact_or_bad(values, out, bad)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.one_of(st.none(), _texts), max_size=12))
def test_property_cast_text_column_to_int64_is_exact_or_bad(values):
    bad: dict[int, str] = {}
    out = cast_column("n", pa.array(values, pa.string()), pa.int64(), bad).to_pylist()
    check_exact_or_bad(values, out, bad)


_numbers_text = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["12abc", "NaN", "inf", "-Infinity", " 7 ", "1e3", ".5", "5.", "0x1f", "１２", "", "99999999999999999999"]),
)


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.one_of(st.none(), _numbers_text), min_size=1, max_size=200), st.sampled_from([pa.int64(), pa.int32(), pa.float64()]))
def test_property_text_column_cast_agrees_with_the_value_converters(values, t):
    """The vectorised cast of a text column (mostly numbers, a few odd values) keeps and refuses exactly
    what the value-by-value converters keep and refuse, each refusal naming the column and the value."""
    bad_cast: dict[int, str] = {}
    bad_conv: dict[int, str] = {}
    out = cast_column("n", pa.array(values, pa.string()), t, bad_cast)
    expected = convert_values("n", values, t, bad_conv)
    assert sorted(bad_cast) == sorted(bad_conv)
    assert all(r.startswith("type: column 'n' value ") for r in bad_cast.values())
    assert out.type == t
    assert [None if i in bad_cast else v for i, v in enumerate(out.to_pylist())] == expected.to_pylist()
