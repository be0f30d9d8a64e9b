"""The condition an engine that holds a batch's rows uses to hand back every row a check may refuse."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from icefield.config.models import (
    AcceptedValuesCheck,
    FilterRule,
    NotNullCheck,
    RangeCheck,
    RegexCheck,
    UniqueCheck,
)
from icefield.errors import ConfigError
from icefield.quality import check_rows
from icefield.quality.frames import suspect_condition

CHECKS = [
    NotNullCheck(not_null=["kind"]),
    UniqueCheck(unique=["id"]),
    AcceptedValuesCheck.model_validate({"accepted_values": {"column": "kind", "values": ["a", "b"]}}),
    RangeCheck.model_validate({"range": {"column": "amount", "min": 0, "max": 100}}),
    RegexCheck.model_validate({"regex": {"column": "kind", "pattern": "^[a-z]$"}}),
    FilterRule(filter="amount <> 50"),
]


def test_the_condition_marks_every_row_the_checks_refuse_or_filter_and_no_other() -> None:
    """Run in DuckDB's dialect over a batch, the condition marks exactly the rows check_rows quarantines or
    filters: a row it missed would be written unchecked by the engine."""
    batch = pa.table({
        "id": [1, 2, 3, 3, 4, 5, 6, 7, 8],
        "kind": ["a", None, "c", "a", "b", "a", "bb", "b", "a"],
        "amount": [1.0, 2.0, 3.0, 4.0, -1.0, 500.0, 6.0, 50.0, 8.0],
    })
    cond = suspect_condition(CHECKS, batch.column_names, "duckdb")
    assert cond is not None
    marked = duckdb.sql(f"SELECT row_number() OVER () - 1 AS i, ({cond}) AS s FROM batch").fetchall()
    res = check_rows(batch, CHECKS)
    assert {i for i, s in marked if s} == set(res.bad) | res.filtered == {1, 2, 3, 4, 5, 6, 7}


def test_no_check_no_condition_and_an_unknown_column_is_refused_with_the_fix() -> None:
    assert suspect_condition([], ["id"], "spark") is None
    with pytest.raises(ConfigError, match=r"not_null names column 'nope'.*fix the column name"):
        suspect_condition([NotNullCheck(not_null=["nope"])], ["id"], "spark")
    spark_sql = suspect_condition(CHECKS, ["id", "kind", "amount"], "spark")
    assert spark_sql is not None and "RLIKE" in spark_sql and "OVER (PARTITION BY `id`)" in spark_sql
