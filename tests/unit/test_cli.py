"""The CLI: commands, --json output, one-line errors and exit codes scripts can trust."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from icefield.cli import EXIT_FAILED, EXIT_USAGE, cli


def _project(root: Path) -> Path:
    runner = CliRunner()
    res = runner.invoke(cli, ["init", str(root)])
    assert res.exit_code == 0, res.output
    (root / "data" / "events" / "a.jsonl").write_text('{"id": 1, "v": "x"}\n{"id": 2, "v": "y"}\n{"id": null, "v": "z"}\n')
    return root


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


def test_init_run_tables_show_sql(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    code, out = _invoke("--project", str(root), "run", "--json")
    assert code == 0, out
    doc = json.loads(out)
    (res,) = doc["results"]
    assert (res["rows_in"], res["rows_committed"], res["rows_quarantined"]) == (3, 2, 1)
    assert res["conserved"] is True

    code, out = _invoke("--project", str(root), "tables", "--json")
    names = {t["table"]: t["rows"] for t in json.loads(out)["tables"]}
    assert names == {"raw.events": 2, "raw.events__quarantine": 1}

    code, out = _invoke("--project", str(root), "show", "raw.events", "--json")
    doc = json.loads(out)
    assert [f["name"] for f in doc["schema"]] == ["id", "v", "_source_file"]
    assert doc["snapshots"][-1]["icefield"]["icefield.pipeline"] == "events"
    assert "icefield.state.events" in doc["properties"]

    code, out = _invoke("--project", str(root), "sql", "select id, v from raw.events order by id", "--format", "csv")
    assert code == 0
    assert out.splitlines() == ["id,v", "1,x", "2,y"]
    code, out = _invoke("--project", str(root), "sql", "select count(*) as n from raw.events__quarantine", "--json")
    assert json.loads(out)["rows"] == [{"n": 1}]

    # a rerun with nothing new commits nothing
    code, out = _invoke("--project", str(root), "--json", "run")
    assert json.loads(out)["results"][0]["snapshots"] == []


def test_config_errors_are_one_clear_line_with_exit_2(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    (root / "pipelines" / "events.yaml").write_text(
        "name: events\nsource: {type: files, path: 'data/*.jsonl'}\ntarget: {table: raw.events, mode: upsert, colour: red}\n"
    )
    proc = subprocess.run([sys.executable, "-m", "icefield.cli", "--project", str(root), "run"], capture_output=True, text=True, check=False)
    assert proc.returncode == EXIT_USAGE
    assert "Traceback" not in proc.stderr
    assert "events.yaml: target.mode" in proc.stderr and "'upsert'" in proc.stderr
    assert "target.colour: unknown key" in proc.stderr


def test_missing_secret_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _project(tmp_path / "p")
    (root / "pipelines" / "db.yaml").write_text(
        "name: db\nsource: {type: sql, url: '${env:ICEFIELD_TEST_NO_SUCH_VAR}', table: t, cursor: c}\ntarget: {table: raw.t}\n"
    )
    monkeypatch.delenv("ICEFIELD_TEST_NO_SUCH_VAR", raising=False)
    code, out = _invoke("--project", str(root), "run", "db")
    assert code == EXIT_USAGE
    assert "ICEFIELD_TEST_NO_SUCH_VAR is not set" in out


def test_unknown_names_and_tables_exit_2(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    assert _invoke("--project", str(root), "run", "nope")[0] == EXIT_USAGE
    code, out = _invoke("--project", str(root), "show", "no.table", "--json")
    assert code == EXIT_USAGE
    assert json.loads(out)["status"] == "error"


def test_failed_run_exits_1_and_keeps_the_pending_batch(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    (root / "pipelines" / "events.yaml").write_text(
        "name: events\nsource: {type: files, path: 'data/events/*.jsonl'}\n"
        "target: {table: raw.events, partition_by: ['day(no_such_column)']}\n"
    )
    code, out = _invoke("--project", str(root), "run", "--json")
    assert code == EXIT_FAILED
    assert "no_such_column" in out
    assert _invoke("--project", str(root), "tables", "--json")[1].count("raw.events\"") == 0


def test_no_project_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = _invoke("tables")
    assert code == EXIT_USAGE
    assert "icefield init" in out


def test_compact_joins_the_small_files_of_a_table_and_sql_reads_the_same_rows(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    for i in range(3):  # three more drops: four files, four snapshots, four small data files
        (root / "data" / "events" / f"b{i}.jsonl").write_text(f'{{"id": {10 + i}, "v": "n{i}"}}\n')
        assert _invoke("--project", str(root), "run")[0] == 0
    before = _invoke("--project", str(root), "sql", "select id, v from raw.events order by id", "--format", "csv")[1]

    code, out = _invoke("--project", str(root), "compact", "raw.events", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["files_removed"] == 4 and json.loads(out)["snapshot_id"] is None
    code, out = _invoke("--project", str(root), "compact", "raw.events", "--sort-by", "id")
    assert code == 0 and "4 files and 0 delete files -> 1" in out, out
    assert _invoke("--project", str(root), "sql", "select id, v from raw.events order by id", "--format", "csv")[1] == before
    code, out = _invoke("--project", str(root), "show", "raw.events", "--json")
    doc = json.loads(out)
    assert doc["snapshots"][-1]["operation"] == "replace"
    assert (doc["storage"]["data_files"], doc["storage"]["delete_files"], doc["storage"]["snapshots"]) == (1, 0, 5)
    code, out = _invoke("--project", str(root), "show", "raw.events")
    assert code == 0 and "1 data files, 0 delete files" in out
    code, out = _invoke("--project", str(root), "compact", "raw.events")
    assert code == 0 and "Nothing to compact" in out

    code, out = _invoke("--project", str(root), "compact", "raw.events", "--sort-by", "nope", "--json")
    assert code == EXIT_USAGE and "nope" in json.loads(out)["error"]
    assert _invoke("--project", str(root), "compact", "no.table")[0] == EXIT_USAGE


def test_expire_drops_old_snapshots_and_their_files_and_keeps_the_rows(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    (root / "data" / "events" / "b.jsonl").write_text('{"id": 7, "v": "w"}\n')
    assert _invoke("--project", str(root), "run")[0] == 0
    assert _invoke("--project", str(root), "compact", "raw.events")[0] == 0
    before = _invoke("--project", str(root), "sql", "select id, v from raw.events order by id", "--format", "csv")[1]

    code, out = _invoke("--project", str(root), "expire", "raw.events", "--json")
    assert code == 0 and json.loads(out)["snapshots_expired"] == 0, "the default keeps 7 days"
    code, out = _invoke("--project", str(root), "expire", "raw.events", "--older-than", "0", "--json")
    doc = json.loads(out)
    assert code == 0 and (doc["snapshots_expired"], doc["snapshots_kept"]) == (2, 1) and doc["data_files_deleted"] == 2
    assert _invoke("--project", str(root), "sql", "select id, v from raw.events order by id", "--format", "csv")[1] == before
    code, out = _invoke("--project", str(root), "expire", "raw.events", "--older-than", "soon")
    assert code == EXIT_USAGE and "'soon' is not an age" in out
