"""A table with equality delete files (Flink, Iceberg's Java API) is refused with one clear error, not a
traceback (interop finding D3).

pyiceberg cannot apply equality deletes, so icefield cannot read, merge into or compact such a table.
Every command that would plan its files exits 2 (a configuration error) with one line that names the
table and the Spark call that folds the deletes; with ``--json`` stdout holds JSON. Commands that only
read metadata (``tables``, ``expire``) still work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner

from icefield.cli import EXIT_USAGE, cli
from icefield.errors import ConfigError
from icefield.testing.iceberg import add_equality_deletes


def _project(root: Path, mode: str = "merge") -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "drop").mkdir()
    (root / "drop" / "a.jsonl").write_text("".join(json.dumps({"k": k, "v": f"a{k}"}) + "\n" for k in range(1, 11)))
    (root / "drop" / "b.jsonl").write_text("".join(json.dumps({"k": k, "v": f"b{k}"}) + "\n" for k in range(11, 21)))
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "eq"}))
    target: dict[str, Any] = {"table": "t.m", "mode": mode}
    if mode == "merge":
        target["keys"] = ["k"]
    pipe = {"name": "p", "source": {"type": "files", "path": "drop/*.jsonl", "file_column": None}, "target": target}
    (root / "pipelines" / "p.yaml").write_text(yaml.safe_dump(pipe))
    return root


def _cli(root: Path, *args: str) -> tuple[int, list[Any], str]:
    res = CliRunner().invoke(cli, ["--project", str(root), "--json", *args])
    docs = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    return res.exit_code, docs, res.stderr


def _table(root: Path) -> Any:
    from icefield.catalog import open_catalog
    from icefield.config import load_project

    return open_catalog(load_project(root)).load_table(("t", "m"))


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """A project whose merge pipeline loaded keys 1-20 into ``t.m``, then another engine deleted keys 3
    and 4 with an equality delete file."""
    root = _project(tmp_path / "eq")
    code, docs, err = _cli(root, "run")
    assert code == 0, (docs, err)
    add_equality_deletes(_table(root), "k", [3, 4])
    (root / "drop" / "c.jsonl").write_text(json.dumps({"k": 5, "v": "merged"}) + "\n")
    return root


def _refused(docs: list[Any]) -> str:
    errors = [d["error"] for d in docs if d.get("error")]  # a command's error, or a run's (with its results)
    assert errors, docs
    return str(errors[0])


def test_sql_merge_and_compact_of_a_table_with_equality_deletes_exit_2_naming_the_fix(lake: Path) -> None:
    for args in (["sql", "select count(*) as n from t.m"], ["run"], ["compact", "t.m"]):
        code, docs, err = _cli(lake, *args)
        assert code == EXIT_USAGE, (args, code, docs, err)
        assert "Traceback" not in err, err
        message = _refused(docs)
        assert "t.m has equality delete files" in message, message
        assert "then rerun: CALL icefield.system.rewrite_data_files(table => 'icefield.t.m'" in message, message
        if args[0] != "run":  # `run` adds its result document (the CLI's concern)
            assert len(docs) == 1, docs

    # Nothing was committed by the refused merge: the other engine's delete is the table's head.
    table = _table(lake)
    snap = table.current_snapshot()
    assert snap is not None and snap.summary is not None and snap.summary.operation.value == "delete"


def test_commands_that_read_only_metadata_still_work_on_a_table_with_equality_deletes(lake: Path) -> None:
    code, docs, err = _cli(lake, "tables")
    assert code == 0, err
    assert {t["table"] for t in docs[0]["tables"]} >= {"t.m"}
    code, docs, err = _cli(lake, "expire", "t.m", "--older-than", "0")
    assert code == 0, err
    assert docs[0]["status"] == "ok" and docs[0]["snapshots_expired"] >= 1


def test_every_planner_refuses_with_a_config_error(lake: Path) -> None:
    """The library calls that plan files raise the same ConfigError (no bare ValueError): the merge, an
    overwrite, the gates' row count and compaction's plan."""
    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.quality.gates import snapshot_row_count
    from icefield.write import TableWriter
    from icefield.write.compact import plan

    table = _table(lake)
    snap = table.current_snapshot()
    assert snap is not None
    with pytest.raises(ConfigError, match="t.m has equality delete files.*cannot check it"):
        snapshot_row_count(table, snap.snapshot_id)
    with pytest.raises(ConfigError, match="cannot compact it"):
        plan(table, 1 << 20)
    batch = pa.table({"k": pa.array([5], pa.int64()), "v": ["x"]})
    for mode in ("merge", "overwrite"):
        target = TargetConfig(table="t.m", mode=mode, keys=["k"] if mode == "merge" else [])
        writer = TableWriter(table.catalog, target, "p", LocalEngine())
        with pytest.raises(ConfigError, match="t.m has equality delete files"):
            writer.commit(batch, f"b-{mode}", None, "r", table=table)
