"""`icefield tables` shows the rows a reader sees (issue 15): a merge-on-read table's rows less those its
position delete files delete (the snapshot summary's ``total-records`` counts them too), and "unknown"
rather than a wrong number for a table with equality delete files, which cannot be counted without
reading the data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from icefield.cli import EXIT_OK, cli


def _project(root: Path) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "drop").mkdir()
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "mor"}), encoding="utf-8")
    pipe = {
        "name": "p",
        "source": {"type": "files", "path": "drop/*.jsonl", "file_column": None},
        "target": {"table": "t.m", "mode": "merge", "keys": ["k"], "properties": {"write.merge.mode": "merge-on-read"}},
    }
    (root / "pipelines" / "p.yaml").write_text(yaml.safe_dump(pipe), encoding="utf-8")
    return root


def _drop(root: Path, name: str, rows: dict[int, str]) -> None:
    (root / "drop" / name).write_text("".join(json.dumps({"k": k, "v": v}) + "\n" for k, v in rows.items()), encoding="utf-8")


def _cli(root: Path, *args: str) -> tuple[int, Any, str]:
    res = CliRunner().invoke(cli, ["--project", str(root), *args])
    return res.exit_code, res.stdout, res.stderr


def _tables(root: Path) -> dict[str, dict[str, Any]]:
    code, out, err = _cli(root, "--json", "tables")
    assert code == EXIT_OK, (out, err)
    return {t["table"]: t for t in json.loads(out)["tables"]}


def _table(root: Path) -> Any:
    from icefield.catalog import open_catalog
    from icefield.config import load_project

    return open_catalog(load_project(root, env={})).load_table("t.m")


def test_rows_of_a_merge_on_read_table_leave_out_the_deleted_rows(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    _drop(root, "a.jsonl", {k: "a" for k in range(1, 11)})
    assert _cli(root, "run")[0] == EXIT_OK
    _drop(root, "b.jsonl", {1: "b", 2: "b", 3: "b", 11: "b"})  # three updates (marked deleted, rewritten) and an insert
    assert _cli(root, "run")[0] == EXIT_OK
    summary = _table(root).current_snapshot().summary
    assert int(summary["total-position-deletes"]) == 3 and int(summary["total-records"]) == 14  # what the rows column showed

    code, out, err = _cli(root, "--json", "sql", "select count(*) as n from t.m")
    assert json.loads(out)["rows"] == [{"n": 11}]
    assert _tables(root)["t.m"]["rows"] == 11
    code, out, err = _cli(root, "tables")
    row = next(line for line in out.splitlines() if " t.m " in line)
    assert code == EXIT_OK and [cell.strip() for cell in row.split("│")][1:3] == ["t.m", "11"], out


def test_rows_of_a_table_with_equality_deletes_are_unknown(tmp_path: Path) -> None:
    from icefield.testing.iceberg import add_equality_deletes

    root = _project(tmp_path / "p")
    _drop(root, "a.jsonl", {k: "a" for k in range(1, 11)})
    assert _cli(root, "run")[0] == EXIT_OK
    add_equality_deletes(_table(root), "k", [3, 4])  # another engine deletes two rows by value
    doc = _tables(root)["t.m"]
    assert doc["rows"] is None, "ten rows are stored, two of them deleted: neither 10 nor a guess"
    assert "equality delete" in doc["rows_note"]
    code, out, err = _cli(root, "tables")
    assert code == EXIT_OK
    text = " ".join(out.split())
    assert "unknown" in text and "t.m: rows unknown" in text
