"""The answer checks of the TPC-H benchmark (bench/w5_tpch.py): engines return decimals, floats, dates and
padded text in their own types and in any order among ORDER BY ties; the check must accept those and
still fail a wrong answer."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from bench.w5_tpch import for_trino, normalize_rows, parse_answer, same_rows

ANSWER = "l_returnflag|sum_qty|avg_disc|o_orderdate|count_order\nA|37734107.00|0.049985295838397614|1995-03-15|1478493\nN|991417|0.05|1995-03-16|38854\n"


def test_each_engines_types_and_order_match_the_official_answer() -> None:
    want = parse_answer(ANSWER)
    duckdb_rows = [("N", Decimal("991417.00"), 0.0500, date(1995, 3, 16), 38854), ("A", Decimal("37734107.00"), 0.04998529583, date(1995, 3, 15), 1478493)]
    trino_rows = [("A ", Decimal("37734107"), 0.04998, "1995-03-15", 1478493), ("N", Decimal("991417"), Decimal("0.0500"), "1995-03-16", 38854)]
    assert same_rows(normalize_rows(duckdb_rows), want) is None
    assert same_rows(normalize_rows(trino_rows), want) is None


def test_a_wrong_answer_is_named() -> None:
    want = parse_answer(ANSWER)
    off_by_one = [("A", 37734108, 0.05, date(1995, 3, 15), 1478493), ("N", 991417, 0.05, date(1995, 3, 16), 38854)]
    assert same_rows(normalize_rows(off_by_one), want) == "row 0 column 1: 37734108.0 != 37734107.0"
    assert same_rows(normalize_rows(off_by_one[:1]), want) == "1 rows, expected 2"
    other_day = [("A", 37734107, 0.05, date(1995, 3, 14), 1478493), ("N", 991417, 0.05, date(1995, 3, 16), 38854)]
    assert same_rows(normalize_rows(other_day), want) == "row 0 column 3: '1995-03-14' != '1995-03-15'"


def test_trino_gets_q15_without_the_group_by_alias() -> None:
    q15 = "WITH revenue AS (SELECT l_suppkey AS supplier_no FROM lineitem GROUP BY\n        supplier_no)\nSELECT * FROM revenue;\n"
    assert for_trino(q15) == "WITH revenue AS (SELECT l_suppkey AS supplier_no FROM lineitem GROUP BY l_suppkey)\nSELECT * FROM revenue"
