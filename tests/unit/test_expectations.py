"""Great Expectations suites as gates, run by GX's own library (extra ``gx``) on the written snapshot:
one result per expectation, pass and fail, stored like the other gates; and the errors a user can meet
(no GX installed, a missing or malformed suite)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from icefield.errors import ConfigError, GateFailedError, MissingDependencyError

HAS_GX = importlib.util.find_spec("great_expectations") is not None
needs_gx = pytest.mark.skipif(not HAS_GX, reason="needs Great Expectations: pip install 'icefield[gx]' (make venv installs it)")

SUITE = {
    "name": "events_suite",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "min_value": 0, "max_value": 100}},
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1, "max_value": 1000}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "kind", "value_set": ["a", "b"]}},
    ],
}


def project(lake: Any, tmp_path: Path, suite: dict[str, Any] | str, severity: str = "error") -> Any:
    lk = lake(
        {
            "events": {
                "source": {"type": "files", "path": "data/*.jsonl", "format": "jsonl", "columns": {"id": "long", "amount": "double", "kind": "string"}},
                "target": {"table": "raw.events"},
                "gates": [{"expectations": {"suite": "suites/events.json"}, "severity": severity, "name": "gx"}],
            }
        }
    )
    (lk.root / "suites").mkdir()
    (lk.root / "suites" / "events.json").write_text(suite if isinstance(suite, str) else json.dumps(suite))
    (lk.root / "data").mkdir()
    return lk


def add_file(lk: Any, name: str, rows: list[dict[str, Any]]) -> None:
    (lk.root / "data" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


@needs_gx
def test_a_passing_suite_publishes_and_stores_one_result_per_expectation(lake, tmp_path):
    lk = project(lake, tmp_path, SUITE)
    add_file(lk, "a.jsonl", [{"id": 1, "amount": 5.0, "kind": "a"}, {"id": 2, "amount": 50.0, "kind": "b"}])
    res = lk.run("events")
    assert res.status == "success"
    assert [(c.check, c.status, c.kind) for c in res.checks] == [
        ("gx:expect_column_values_to_not_be_null(id)", "pass", "expectations"),
        ("gx:expect_column_values_to_be_between(amount)", "pass", "expectations"),
        ("gx:expect_table_row_count_to_be_between", "pass", "expectations"),
        ("gx:expect_column_values_to_be_in_set(kind)", "pass", "expectations"),
    ]
    assert res.checks[2].value == 2  # GX's observed row count
    assert len(lk.rows("raw.events")) == 2
    stored = lk.rows("icefield.quality_results", "check")
    assert sorted(r["check"] for r in stored) == sorted(c.check for c in res.checks)
    assert {r["snapshot_id"] for r in stored} == {lk.table("raw.events").current_snapshot().snapshot_id}


@needs_gx
def test_a_failing_suite_holds_the_batch_and_reports_each_failing_expectation(lake, tmp_path):
    lk = project(lake, tmp_path, SUITE)
    add_file(lk, "a.jsonl", [{"id": 1, "amount": 5.0, "kind": "a"}])
    lk.run("events")
    before = lk.table("raw.events").current_snapshot().snapshot_id
    add_file(lk, "b.jsonl", [{"id": None, "amount": 500.0, "kind": "a"}, {"id": 3, "amount": 7.0, "kind": "z"}])
    with pytest.raises(GateFailedError) as e:
        lk.run("events")
    failing = {c.check: c for c in e.value.checks}
    assert set(failing) == {
        "gx:expect_column_values_to_not_be_null(id)",
        "gx:expect_column_values_to_be_between(amount)",
        "gx:expect_column_values_to_be_in_set(kind)",
    }
    assert all(c.status == "fail" and c.value == 1 for c in failing.values())  # one unexpected row each
    assert "1 unexpected of 3 values" in failing["gx:expect_column_values_to_be_in_set(kind)"].message
    assert lk.table("raw.events").current_snapshot().snapshot_id == before


@needs_gx
def test_a_warn_suite_reports_and_publishes(lake, tmp_path):
    lk = project(lake, tmp_path, SUITE, severity="warn")
    add_file(lk, "a.jsonl", [{"id": 1, "amount": 500.0, "kind": "a"}])
    res = lk.run("events")
    assert res.status == "success" and len(lk.rows("raw.events")) == 1
    assert [c.status for c in res.checks] == ["pass", "warn", "pass", "pass"]


def test_without_great_expectations_the_error_names_the_extra(lake, tmp_path, monkeypatch):
    lk = project(lake, tmp_path, SUITE)
    add_file(lk, "a.jsonl", [{"id": 1, "amount": 5.0, "kind": "a"}])
    monkeypatch.setitem(sys.modules, "great_expectations", None)  # import raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'icefield\[gx\]'"):
        lk.run("events")
    assert lk.table("raw.events").current_snapshot() is None or not lk.rows("raw.events")


@pytest.mark.parametrize(
    ("suite", "words"),
    [
        ("{not json", ["not readable JSON"]),
        ({"name": "s"}, ["'expectations' list"]),
        ({"expectations": [{"expectation_type": "expect_column_values_to_not_be_null"}]}, ["expectations[0] needs a 'type'", "expectation_type"]),
    ],
)
def test_a_malformed_suite_is_a_config_error_naming_the_file(lake, tmp_path, suite, words):
    lk = project(lake, tmp_path, suite)
    add_file(lk, "a.jsonl", [{"id": 1, "amount": 5.0, "kind": "a"}])
    with pytest.raises(ConfigError) as e:
        lk.run("events")
    assert "suites/events.json" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_a_missing_suite_file_says_so(lake, tmp_path):
    lk = project(lake, tmp_path, SUITE)
    (lk.root / "suites" / "events.json").unlink()
    add_file(lk, "a.jsonl", [{"id": 1, "amount": 5.0, "kind": "a"}])
    with pytest.raises(ConfigError, match="does not exist"):
        lk.run("events")
