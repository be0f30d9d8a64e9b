"""``icefield sql`` output keeps every column at its place (F4 in the probe findings): two output
columns of one name (``select *`` over a join) collapsed into one, so values shifted under the wrong
header (CSV: 3 values under 4 headers) or vanished (JSON). Rows are built by position, and a repeated
name is shown as ``name_1``, ``name_2`` ... in every format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from icefield.cli import cli

JOIN = "select * from (select 1 as id, 'alice' as name) a join (select 1 as id, 99.5::double as amount) b on a.id = b.id"
TWICE = "select 1 as a, 2 as a, 3 as a_1, 4 as a"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    res = CliRunner().invoke(cli, ["init", str(root)])
    assert res.exit_code == 0, res.output
    return root


def _sql(root: Path, *args: str) -> str:
    res = CliRunner().invoke(cli, ["--project", str(root), "sql", *args])
    assert res.exit_code == 0, res.output
    return res.output


def test_csv_keeps_every_value_under_its_header(root: Path) -> None:
    assert _sql(root, JOIN, "--format", "csv").splitlines() == ["id,name,id_1,amount", "1,alice,1,99.5"]
    # A generated name already taken by a real column is skipped.
    assert _sql(root, TWICE, "--format", "csv").splitlines() == ["a,a_2,a_1,a_3", "1,2,3,4"]


def test_json_has_one_key_per_column(root: Path) -> None:
    assert json.loads(_sql(root, JOIN, "--format", "json")) == {
        "columns": ["id", "name", "id_1", "amount"],
        "rows": [{"id": 1, "name": "alice", "id_1": 1, "amount": 99.5}],
    }
    assert json.loads(_sql(root, TWICE, "--json")) == {"columns": ["a", "a_2", "a_1", "a_3"], "rows": [{"a": 1, "a_2": 2, "a_1": 3, "a_3": 4}]}


def test_table_keeps_every_value_in_its_column(root: Path) -> None:
    out = _sql(root, JOIN)
    assert re.search(r"id\s*┃\s*name\s*┃\s*id_1\s*┃\s*amount", out), out
    assert re.search(r"1\s*│\s*alice\s*│\s*1\s*│\s*99\.5", out), out


def test_table_format_limit_still_applies(root: Path) -> None:
    out = _sql(root, "select range as i, range as i from range(5)", "--limit", "2")
    assert "(3 more rows; use --format csv for all)" in out
    assert re.search(r"1\s*│\s*1", out) and not re.search(r"\b2\s*│\s*2\b", out), out
