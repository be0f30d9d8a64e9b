"""Partition expressions of ``target.partition_by``."""

from __future__ import annotations

import pytest
from pyiceberg.transforms import parse_transform

from icefield import ConfigError
from icefield.config.partitions import PartitionField, parse_partition


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("region", PartitionField("region", "identity", "region")),
        (" region ", PartitionField("region", "identity", "region")),
        ("identity(region)", PartitionField("region", "identity", "region")),
        ("year(ts)", PartitionField("ts", "year", "ts_year")),
        ("month(ts)", PartitionField("ts", "month", "ts_month")),
        ("day(updated_at)", PartitionField("updated_at", "day", "updated_at_day")),
        ("hour( ts )", PartitionField("ts", "hour", "ts_hour")),
        ("DAY(ts)", PartitionField("ts", "day", "ts_day")),
        ("bucket(16, id)", PartitionField("id", "bucket[16]", "id_bucket")),
        ("bucket(16,id)", PartitionField("id", "bucket[16]", "id_bucket")),
        ("truncate(4, sku)", PartitionField("sku", "truncate[4]", "sku_truncate")),
    ],
)
def test_parse_partition(expr, expected):
    assert parse_partition(expr) == expected


@pytest.mark.parametrize("expr", ["region", "year(ts)", "day(ts)", "hour(ts)", "bucket(16, id)", "truncate(4, sku)"])
def test_transform_strings_are_pyiceberg_transforms(expr):
    transform = parse_transform(parse_partition(expr).transform)
    assert str(transform) == parse_partition(expr).transform


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("bucket(id)", r"bucket needs a width, e.g. bucket\(16, id\)"),
        ("truncate(sku)", r"truncate needs a width, e.g. truncate\(16, sku\)"),
        ("day(7, ts)", r"day\(\) takes only a column; write day\(ts\)"),
        ("days(ts)", r"unknown transform 'days'"),
        ("zorder(a)", r"unknown transform 'zorder'"),
        ("bucket(16, id, x)", r"is not a partition expression"),
        ("day(ts", r"is not a partition expression"),
        ("", r"is not a partition expression"),
        ("a b", r"is not a partition expression"),
        ("bucket(-1, id)", r"is not a partition expression"),
        ("bucket(0, id)", r"width must be a positive number"),
        ("truncate(0, sku)", r"width must be a positive number"),
    ],
)
def test_bad_partition_expressions_name_the_entry_and_the_forms(expr, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_partition(expr)
    msg = str(info.value)
    assert msg.startswith("target.partition_by: ")
    assert repr(expr) in msg


def test_unparsable_expression_lists_the_forms():
    with pytest.raises(ConfigError) as info:
        parse_partition("day(ts")
    for form in ("column", "day(col)", "bucket(N, col)", "truncate(W, col)"):
        assert form in str(info.value)
