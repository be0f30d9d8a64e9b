"""A big file is read in chunks of ``batch_size`` records, each its own commit, and a run stopped in the
middle of a file resumes inside it: no record lost, none doubled, whatever the format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icefield import load_project, run_pipeline
from icefield.catalog import open_catalog

N = 1_000


def _project(root: Path, fmt: str) -> None:
    (root / "pipelines").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "icefield.yaml").write_text("name: chunks\n")
    (root / "pipelines" / "f.yaml").write_text(
        f"name: f\nsource: {{type: files, path: 'data/*.{fmt}'}}\ntarget: {{table: raw.f}}\nbatch_size: 128\n"
        "checks:\n  - range: {column: v, min: 0}\n"
    )


def _write(path: Path, fmt: str, rows: list[dict]) -> None:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        path.write_text("id,v\n" + "".join(f"{r['id']},{r['v']}\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=100)


def _ids(root: Path) -> list[int]:
    table = open_catalog(load_project(root)).load_table("raw.f")
    return sorted(table.scan().to_arrow().column("id").to_pylist())


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_stopped_mid_file_resumes_inside_it(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / fmt
    _project(root, fmt)
    rows = [{"id": i, "v": -1 if i % 97 == 0 else i} for i in range(N)]
    bad = sum(1 for r in rows if r["v"] < 0)
    _write(root / "data" / f"big.{fmt}", fmt, rows)
    project = load_project(root)
    partial = run_pipeline(project, "f", max_batches=3)
    assert [b.rows_in for b in partial.batches] == [128, 128, 128]
    rest = run_pipeline(project, "f")
    assert sum(b.rows_in for b in rest.batches) == N - 3 * 128
    assert _ids(root) == [r["id"] for r in rows if r["v"] >= 0]
    assert partial.rows_quarantined + rest.rows_quarantined == bad
    assert partial.conserved and rest.conserved
    assert run_pipeline(project, "f").batches == []


def test_file_changed_while_half_loaded_is_replaced_whole(tmp_path: Path) -> None:
    root = tmp_path / "p"
    _project(root, "jsonl")
    path = root / "data" / "big.jsonl"
    _write(path, "jsonl", [{"id": i, "v": i} for i in range(N)])
    project = load_project(root)
    run_pipeline(project, "f", max_batches=2)
    _write(path, "jsonl", [{"id": 10_000 + i, "v": i} for i in range(300)])
    run_pipeline(project, "f")
    assert _ids(root) == [10_000 + i for i in range(300)]


def test_sigkill_after_a_commit_inside_a_file(tmp_path: Path) -> None:
    """Failpoint `after-commit@3`: the process dies right after the third commit landed (before it could
    report it). The rerun starts from the position in that commit."""
    root = tmp_path / "p"
    _project(root, "jsonl")
    _write(root / "data" / "big.jsonl", "jsonl", [{"id": i, "v": i} for i in range(N)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    cmd = [sys.executable, "-m", "icefield.testing.failpoints", "--project", str(root), "run"]
    died = subprocess.run(cmd, env={**env, "ICEFIELD_FAILPOINT": "after-commit@3"}, capture_output=True, check=False)
    assert died.returncode == 137
    assert len(_ids(root)) == 3 * 128  # three commits landed
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert _ids(root) == list(range(N))
