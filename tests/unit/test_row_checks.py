"""Row checks: which rows fail which check, why, and which rows a filter rule drops."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from icefield import ConfigError
from icefield.config.models import PipelineConfig
from icefield.quality import check_rows

D = decimal.Decimal


def checks(*items: dict[str, Any]) -> list[Any]:
    """Typed checks, parsed the way a pipeline file's ``checks:`` list is."""
    raw = {"name": "p", "source": {"type": "files", "path": "x"}, "target": {"table": "s.t"}, "checks": list(items)}
    return PipelineConfig.model_validate(raw).checks


ORDERS = pa.table(
    {
        "id": pa.array([1, 2, 3, 4, 5], pa.int64()),
        "status": ["new", "paid", "lost", None, "paid"],
        "amount": pa.array([D("10.00"), D("-1.00"), D("5.50"), D("99.99"), None], pa.decimal128(10, 2)),
        "sku": ["ABC-1", "abc-2", "XYZ-33", "Q", None],
        "ts": pa.array(
            [dt.datetime(2024, 1, 1), dt.datetime(2023, 12, 31, 23), dt.datetime(2024, 6, 1), None, dt.datetime(2025, 1, 1)],
            pa.timestamp("us"),
        ),
    }
)


def test_no_checks_no_failures():
    res = check_rows(ORDERS, [])
    assert res.bad == {} and res.filtered == set() and res.failures_by_check == {}


def test_empty_table():
    res = check_rows(ORDERS.slice(0, 0), checks({"not_null": ["status"]}))
    assert res.bad == {}


def test_not_null_names_the_column():
    res = check_rows(ORDERS, checks({"not_null": ["id", "status", "amount"]}))
    assert res.bad == {
        3: ("not_null", "not_null: column 'status' is null"),
        4: ("not_null", "not_null: column 'amount' is null"),
    }
    assert res.failures_by_check == {"not_null": 2}


@pytest.mark.parametrize(
    "check",
    [
        {"not_null": ["customer"]},
        {"accepted_values": {"column": "customer", "values": ["a"]}},
        {"regex": {"column": "customer", "pattern": "^a"}},
        {"range": {"column": "customer", "min": 1}},
    ],
)
def test_a_check_on_a_column_the_data_lacks_is_a_configuration_error(check):
    """F20: a check on a column that is in neither the batch nor the table (a typo) is a configuration
    error, not a quarantine of every row (the batch is the table's columns conformed, so a column it lacks
    is in neither)."""
    with pytest.raises(ConfigError, match=r"names column 'customer', which is in neither the data nor the table") as info:
        check_rows(ORDERS.slice(0, 2), checks(check))
    assert "id" in str(info.value)  # the columns there are


def test_unique_flags_every_row_of_a_duplicated_key():
    table = pa.table({"id": [1, 2, 1, 3, 2, 1], "v": ["a", "b", "c", "d", "e", "f"]})
    res = check_rows(table, checks({"unique": ["id"]}))
    assert sorted(res.bad) == [0, 1, 2, 4, 5]
    assert res.failures_by_check == {"unique": 5}
    assert res.bad[0] == ("unique", "unique: (id) = (1,) appears more than once in the batch")


def test_unique_over_several_columns():
    table = pa.table({"a": [1, 1, 1, 2], "b": ["x", "y", "x", "x"]})
    res = check_rows(table, checks({"unique": ["a", "b"]}))
    assert sorted(res.bad) == [0, 2]
    assert "(a, b) = (1, 'x')" in res.bad[0][1]


def test_unique_on_a_missing_column_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unique: column\(s\) \['nope'\]"):
        check_rows(ORDERS, checks({"unique": ["nope"]}))


def test_accepted_values_names_column_value_and_allowed_values():
    res = check_rows(ORDERS, checks({"accepted_values": {"column": "status", "values": ["new", "paid"]}}))
    assert res.bad == {2: ("accepted_values", "accepted_values: column 'status' value 'lost' is not one of new, paid")}


def test_accepted_values_on_ints():
    res = check_rows(ORDERS, checks({"accepted_values": {"column": "id", "values": [1, 2, 3]}}))
    assert sorted(res.bad) == [3, 4]
    assert "value 4 is not one of 1, 2, 3" in res.bad[3][1]


def test_accepted_values_that_do_not_fit_the_column_are_a_config_error():
    with pytest.raises(ConfigError, match=r"accepted_values for 'id'"):
        check_rows(ORDERS, checks({"accepted_values": {"column": "id", "values": ["one"]}}))


def test_range_on_ints():
    table = pa.table({"qty": pa.array([0, 1, 10, 11, None], pa.int32())})
    res = check_rows(table, checks({"range": {"column": "qty", "min": 1, "max": 10}}))
    assert res.bad == {
        0: ("range", "range: column 'qty' value 0 is below the minimum 1"),
        3: ("range", "range: column 'qty' value 11 is above the maximum 10"),
    }
    assert res.failures_by_check == {"range": 2}


def test_range_on_decimals():
    res = check_rows(ORDERS, checks({"range": {"column": "amount", "min": 0, "max": "99.98"}}))
    assert sorted(res.bad) == [1, 3]
    assert "value Decimal('-1.00') is below the minimum 0" in res.bad[1][1]
    assert "above the maximum 99.98" in res.bad[3][1]


def test_range_on_timestamps_with_string_bounds():
    spec = {"column": "ts", "min": "2024-01-01", "max": "2024-12-31T23:59:59"}
    res = check_rows(ORDERS, checks({"range": spec}))
    assert sorted(res.bad) == [1, 4]
    assert "column 'ts' value datetime.datetime(2023, 12, 31, 23, 0) is below the minimum 2024-01-01" in res.bad[1][1]
    assert "above the maximum" in res.bad[4][1]


def test_range_on_timestamptz_with_an_offset_bound():
    table = pa.table(
        {"ts": pa.array([dt.datetime(2024, 1, 1, 9, tzinfo=dt.UTC), dt.datetime(2024, 1, 1, 11, tzinfo=dt.UTC)], pa.timestamp("us", tz="UTC"))}
    )
    res = check_rows(table, checks({"range": {"column": "ts", "min": "2024-01-01T12:00:00+02:00"}}))
    assert sorted(res.bad) == [0]  # the bound is 10:00 UTC


def test_range_bound_that_does_not_fit_the_column_is_a_config_error():
    with pytest.raises(ConfigError, match=r"range for 'ts': the bound 'soon'"):
        check_rows(ORDERS, checks({"range": {"column": "ts", "max": "soon"}}))


def test_regex_names_column_value_and_pattern():
    res = check_rows(ORDERS, checks({"regex": {"column": "sku", "pattern": "^[A-Z]{3}-[0-9]+$"}}))
    assert sorted(res.bad) == [1, 3]  # nulls are for not_null to judge
    assert res.bad[1] == ("regex", "regex: column 'sku' value 'abc-2' does not match '^[A-Z]{3}-[0-9]+$'")


def test_regex_on_a_non_text_column():
    res = check_rows(ORDERS, checks({"regex": {"column": "id", "pattern": "^[1-3]$"}}))
    assert sorted(res.bad) == [3, 4]


def test_filter_rows_are_counted_as_filtered_not_bad():
    res = check_rows(ORDERS, checks({"filter": "status <> 'lost'"}))
    # 'lost' is false and a null status is unknown: both are dropped by the filter.
    assert res.filtered == {2, 3}
    assert res.bad == {} and res.failures_by_check == {}


def test_invalid_filter_is_a_config_error():
    # Refused when the pipeline is loaded: it is not one expression.
    with pytest.raises(ValidationError, match=r"the filter is not one SQL expression.*amount >>> 1"):
        checks({"filter": "amount >>> 1"})
    # One expression, but DuckDB cannot run it over the batch.
    with pytest.raises(ConfigError, match=r"(?s)filter 'nope\(amount\) > 1' failed: .*a filter must be a valid SQL expression"):
        check_rows(ORDERS, checks({"filter": "nope(amount) > 1"}))


def test_first_failing_check_wins():
    res = check_rows(
        ORDERS,
        checks(
            {"not_null": ["status"]},
            {"accepted_values": {"column": "status", "values": ["new", "paid"]}},
            {"range": {"column": "amount", "min": 0}},
            {"regex": {"column": "sku", "pattern": "^[A-Z]"}},
        ),
    )
    assert {i: check for i, (check, _) in res.bad.items()} == {3: "not_null", 2: "accepted_values", 1: "range"}
    assert res.failures_by_check == {"not_null": 1, "accepted_values": 1, "range": 1}


def test_a_filtered_row_is_not_also_bad():
    res = check_rows(ORDERS, checks({"filter": "id <> 2"}, {"range": {"column": "amount", "min": 0}}))
    assert res.filtered == {1}
    assert res.bad == {}


def test_a_bad_row_is_not_also_filtered():
    """A row counts once: quarantined by the first check it fails, never also counted as filtered
    (conservation: rows in = committed + quarantined + filtered)."""
    res = check_rows(ORDERS, checks({"range": {"column": "amount", "min": 0}}, {"filter": "id <> 2 AND id <> 3"}))
    assert set(res.bad) == {1}
    assert res.filtered == {2}
    assert not set(res.bad) & res.filtered
