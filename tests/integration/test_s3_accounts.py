"""Per-service credentials on the S3 server: a project that reaches the warehouse with the read-only account
queries the tables the writer's project lands, and is refused every change (exit 2, naming the storage
settings to fix) without losing or half-writing anything; the writer then lands the refused batch once.
The secrets come from ``${env:...}`` references and never show in any output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from stack import S3Settings

from icefield.cli import EXIT_USAGE, cli

pytestmark = pytest.mark.s3

PIPELINES = {
    "events": {
        "source": {"type": "files", "path": "data/events/*.jsonl", "format": "jsonl", "columns": {"id": "long", "v": "string"}},
        "target": {"table": "raw.events", "mode": "append"},
    },
    "users": {
        "source": {"type": "files", "path": "data/users/*.jsonl", "format": "jsonl", "columns": {"id": "long", "v": "string"}},
        "target": {"table": "raw.users", "mode": "merge", "keys": ["id"]},
    },
}


def _project(root: Path, s3: S3Settings, warehouse: str, catalog_db: Path, reader: bool) -> Path:
    who = "READER" if reader else "WRITER"
    storage = {**s3.storage(reader=reader), "secret_key": f"${{env:TEST_S3_{who}_SECRET}}"}
    (root / "pipelines").mkdir(parents=True)
    config = {"name": "t", "catalog": {"uri": f"sqlite:///{catalog_db}"}, "warehouse": warehouse, "storage": storage}
    (root / "icefield.yaml").write_text(yaml.safe_dump(config))
    for name, body in PIPELINES.items():
        (root / "pipelines" / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **body}))
    return root


def _drop(root: Path, folder: str, name: str, rows: list[tuple[int, str]]) -> None:
    d = root / "data" / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.jsonl").write_text("".join(json.dumps({"id": i, "v": v}) + "\n" for i, v in rows))


def _invoke(root: Path, *args: str) -> tuple[int, Any, str]:
    res = CliRunner().invoke(cli, ["--project", str(root), *args, "--json"])
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        doc = None
    return res.exit_code, doc, res.output


def test_the_read_only_account_queries_and_is_refused_every_change(
    tmp_path: Path, s3_server: S3Settings, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_S3_WRITER_SECRET", s3_server.writer_secret)
    monkeypatch.setenv("TEST_S3_READER_SECRET", s3_server.reader_secret)
    db = tmp_path / "catalog.db"
    writer = _project(tmp_path / "writer", s3_server, s3_prefix, db, reader=False)
    reader = _project(tmp_path / "reader", s3_server, s3_prefix, db, reader=True)
    for root in (writer, reader):
        _drop(root, "events", "a", [(1, "a1"), (2, "a2")])
        _drop(root, "users", "a", [(1, "u1"), (2, "u2")])
    _drop(writer, "events", "a0", [(9, "a9")])  # a second file: raw.events has something to compact
    code, doc, out = _invoke(writer, "run")
    assert code == 0, out
    outputs: list[str] = [out]

    code, doc, out = _invoke(reader, "sql", "select count(*) as n from raw.events")
    outputs.append(out)
    assert code == 0 and doc["rows"] == [{"n": 3}], out

    code, doc, out = _invoke(writer, "tables")
    before = {t["table"]: t["current_snapshot"] for t in doc["tables"]}
    _drop(reader, "events", "b", [(3, "b3")])
    _drop(reader, "users", "b", [(2, "u2-new")])
    code, doc, out = _invoke(reader, "run")
    outputs.append(out)
    assert code == EXIT_USAGE, out
    for result in doc["results"]:
        assert result["status"] == "failed" and "refused" in result["error"] and "storage.access_key" in result["error"], result
        assert result["pending"] is not None, "the refused batch stays pending"
    for command in (["compact", "raw.events"], ["expire", "raw.events", "--older-than", "0s", "--retain-last", "1"]):
        code, doc, out = _invoke(reader, *command)
        outputs.append(out)
        assert code == EXIT_USAGE and "refused" in out, (command, out)
    code, doc, out = _invoke(writer, "tables")
    assert {t["table"]: t["current_snapshot"] for t in doc["tables"]} == before, "nothing the reader tried changed a table"
    code, doc, out = _invoke(reader, "sql", "select id, v from raw.users order by id")
    assert doc["rows"] == [{"id": 1, "v": "u1"}, {"id": 2, "v": "u2"}]

    _drop(writer, "events", "b", [(3, "b3")])
    _drop(writer, "users", "b", [(2, "u2-new")])
    code, doc, out = _invoke(writer, "run")
    assert code == 0, out
    code, doc, out = _invoke(reader, "sql", "select (select count(*) from raw.events) as events, (select v from raw.users where id = 2) as v")
    assert doc["rows"] == [{"events": 4, "v": "u2-new"}], "the writer lands the batch once"
    for text in outputs:
        assert s3_server.reader_secret not in text and s3_server.writer_secret not in text
