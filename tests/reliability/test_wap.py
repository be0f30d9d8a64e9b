"""Reliability of write-audit-publish (DESIGN.md rule 6; docs/reliability.md A2 and B4 on the audited path).

- Every metadata version the catalog ever held is replayed: ``main``'s rows always equal the rows of the
  source files its position names (data and position move in one swap), and a batch that failed its gate
  is never in ``main``, before or after it is discarded and fixed.
- Crashes at the failpoints of the audited path (the branch commit landed; the gates passed but ``main``
  has not moved) followed by a clean run: 0 lost, 0 duplicated, 0 unexpected, 0 divergent.
- Another writer commits to ``main`` while a batch is being audited: its commit is kept and the batch is
  rebased, published once.
Each test prints its seed and the four counts against its oracle, and runs on a local folder and on the S3
server (``tests/stores.py``): the source files stay local, the warehouse moves.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from pyiceberg.serializers import FromInputFile
from tests.stores import STORES, Store, make_store

from icefield.catalog import open_catalog
from icefield.config import load_project
from icefield.errors import GateFailedError
from icefield.iceberg.history import STATE_PREFIX, SUMMARY_BATCH_ID, ancestors, head_id
from icefield.write.branches import audit_branch

FILES = 6
ROWS_PER_FILE = 50
BRANCH = audit_branch("events")


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


def _project(root: Path, store: Store, rng: random.Random, bad_file: int | None = None) -> dict[int, tuple[str, float]]:
    """A project whose warehouse is ``store`` and whose pipeline ``events`` loads data/*.jsonl (one batch per
    file) under an error gate (no negative amount). File ``bad_file`` carries one negative amount. Returns
    the oracle of good rows."""
    (root / "pipelines").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "icefield.yaml").write_text(yaml.safe_dump(store.project(name="wap")))
    (root / "pipelines" / "events.yaml").write_text(
        "name: events\n"
        "source: {type: files, path: 'data/*.jsonl', format: jsonl, columns: {id: long, v: string, amount: double}}\n"
        "target: {table: raw.events, mode: append}\n"
        "gates:\n"
        "  - sql: 'select * from {table} where amount < 0'\n"
        "    name: no_negative\n"
        "  - distinct_ratio: {column: id, min: 1}\n"
    )
    oracle: dict[int, tuple[str, float]] = {}
    for f in range(FILES):
        lines = []
        for j in range(ROWS_PER_FILE):
            i = f * ROWS_PER_FILE + j
            row = (f"v{rng.randrange(10**9)}", float(rng.randrange(1, 1000)))
            oracle[i] = row
            amount = -1.0 if (f == bad_file and j == 7) else row[1]
            lines.append(json.dumps({"id": i, "v": row[0], "amount": amount}))
        (root / "data" / f"part-{f:02d}.jsonl").write_text("\n".join(lines) + "\n")
    return oracle


def _file_ids(f: int) -> set[int]:
    return set(range(f * ROWS_PER_FILE, (f + 1) * ROWS_PER_FILE))


def _counts(rows: list[dict[str, Any]], oracle: dict[int, tuple[str, float]]) -> tuple[int, int, int, int]:
    seen: dict[int, int] = {}
    unexpected = divergent = 0
    for r in rows:
        seen[r["id"]] = seen.get(r["id"], 0) + 1
        if r["id"] not in oracle:
            unexpected += 1
        elif (r["v"], r["amount"]) != oracle[r["id"]]:
            divergent += 1
    lost = sum(1 for i in oracle if i not in seen)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    print(f"lost={lost} duplicated={duplicated} unexpected={unexpected} divergent={divergent}")
    return lost, duplicated, unexpected, divergent


def _replay(table: Any, forbidden: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """Check every metadata version: main's ids equal the ids of the files in its position, and hold none
    of ``forbidden``. Returns the number of versions checked."""
    paths = [e.metadata_file for e in table.metadata.metadata_log] + [table.metadata_location]
    for p in paths:
        m = FromInputFile.table_metadata(table.io.new_input(p))
        raw = m.properties.get(STATE_PREFIX + "events")
        files = sorted(json.loads(raw)["files"]) if raw else []
        expected: set[int] = set().union(*(_file_ids(int(Path(f).stem.split("-")[1])) for f in files)) if files else set()
        main = m.current_snapshot_id
        ids = table.scan(snapshot_id=main).to_arrow().column("id").to_pylist() if main is not None else []
        assert len(ids) == len(set(ids)), f"{p}: main holds duplicates"
        assert set(ids) == expected, f"{p}: main's rows and main's position disagree"
        assert not (set(ids) & forbidden), f"{p}: main holds rows of a batch that failed its gate"
    return len(paths)


def test_readers_of_main_never_see_a_held_batch_and_data_moves_with_its_position(tmp_path: Path, store: Store) -> None:
    seed = int(os.environ.get("ICEFIELD_SEED", random.randrange(1 << 30)))
    print(f"seed={seed}")
    rng = random.Random(seed)
    bad = rng.randrange(1, FILES)
    root = tmp_path / "proj"
    oracle = _project(root, store, rng, bad_file=bad)
    project = load_project(root, env={})
    catalog = open_catalog(project)
    from icefield import run_pipeline

    try:
        with pytest.raises(GateFailedError):
            run_pipeline(project, "events", catalog)
        table = catalog.load_table("raw.events")
        assert table.metadata.location.startswith(store.uri), "the table lives in the store"
        main_rows = set(table.scan().to_arrow().column("id").to_pylist())
        assert main_rows == set().union(*(_file_ids(f) for f in range(bad)))  # everything before the bad file
        versions = _replay(table, forbidden=_file_ids(bad))

        # Discard the held batch, fix the file at the source, run to the end.
        table.manage_snapshots().remove_branch(BRANCH).commit()
        path = root / "data" / f"part-{bad:02d}.jsonl"
        path.write_text(path.read_text().replace('"amount": -1.0', f'"amount": {oracle[bad * ROWS_PER_FILE + 7][1]}'))
        result = run_pipeline(project, "events", catalog)
        assert result.status == "success"
        table = catalog.load_table("raw.events")
        assert _counts(table.scan().to_arrow().to_pylist(), oracle) == (0, 0, 0, 0)
        assert _replay(table) > versions
        history = [b for s in ancestors(table.metadata, head_id(table)) if s.summary and (b := s.summary[SUMMARY_BATCH_ID])]
        assert len(history) == len(set(history)) == FILES  # one published snapshot per file, none twice
    finally:
        catalog.engine.dispose()


def _cli(root: Path, failpoint: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    if failpoint:
        env["ICEFIELD_FAILPOINT"] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "icefield.testing.failpoints", "--project", str(root), "run"], capture_output=True, text=True, env=env, timeout=300, check=False
    )


FAILPOINTS = ["after-commit@2", "after-commit@5", "before-publish@1", "before-publish@3", "after-data-files@4"]
S3_FAILPOINTS = ["after-commit@2", "before-publish@1", "after-data-files@4"]
"""On S3, each failpoint once (a crashed run there takes twice as long)."""


@pytest.mark.parametrize(
    ("store", "failpoint"),
    [("local", f) for f in FAILPOINTS] + [pytest.param("s3", f, marks=pytest.mark.s3) for f in S3_FAILPOINTS],
    indirect=["store"],
)
def test_a_crash_on_the_audited_path_then_a_clean_run_loses_and_duplicates_nothing(tmp_path: Path, store: Store, failpoint: str) -> None:
    seed = int(os.environ.get("ICEFIELD_SEED", random.randrange(1 << 30)))
    print(f"seed={seed} failpoint={failpoint}")
    root = tmp_path / "proj"
    oracle = _project(root, store, random.Random(seed))
    crashed = _cli(root, failpoint)
    assert crashed.returncode == 137, crashed.stderr  # the failpoint killed the run mid-flight
    clean = _cli(root, None)
    assert clean.returncode == 0, clean.stderr
    catalog = open_catalog(load_project(root, env={}))
    try:
        table = catalog.load_table("raw.events")
        assert table.metadata.location.startswith(store.uri), "the table lives in the store"
        assert _counts(table.scan().to_arrow().to_pylist(), oracle) == (0, 0, 0, 0)
        _replay(table)
        history = [b for s in ancestors(table.metadata, head_id(table)) if s.summary and (b := s.summary[SUMMARY_BATCH_ID])]
        assert len(history) == len(set(history)), "a batch was published twice"
        assert head_id(table, BRANCH) == head_id(table)  # nothing left held
    finally:
        catalog.engine.dispose()


def test_a_commit_on_main_during_the_audit_is_kept_and_the_batch_is_rebased(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from icefield import run_pipeline
    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.pipeline import audit
    from icefield.write import TableWriter

    root = tmp_path / "proj"
    oracle = _project(root, store, random.Random(1))
    project = load_project(root, env={})
    catalog = open_catalog(project)
    real = audit.run_gates
    audited: list[int | None] = []

    def gates_while_another_writer_commits(gates: Any, ctx: Any) -> Any:
        audited.append(ctx.snapshot_id)
        if len(audited) == 3:  # during the third batch's audit, another writer appends to main
            other = TableWriter(catalog, TargetConfig(table="raw.events"), "other", LocalEngine())
            row = pa.table({"id": pa.array([10_000], pa.int64()), "v": ["other"], "amount": [5.0]})
            other.commit(row, "other-batch", None, "other-run")
        return real(gates, ctx)

    monkeypatch.setattr(audit, "run_gates", gates_while_another_writer_commits)
    try:
        result = run_pipeline(project, "events", catalog)
        assert result.status == "success"
        assert len(audited) == FILES + 1  # the third batch was audited twice: before and after its rebase
        table = catalog.load_table("raw.events")
        assert table.metadata.location.startswith(store.uri), "the table lives in the store"
        rows = table.scan().to_arrow().to_pylist()
        oracle[10_000] = ("other", 5.0)
        assert _counts(rows, oracle) == (0, 0, 0, 0)
        history = [b for s in ancestors(table.metadata, head_id(table)) if s.summary and (b := s.summary[SUMMARY_BATCH_ID])]
        assert "other-batch" in history and len(history) == len(set(history)) == FILES + 1
        assert audited[2] not in {s.snapshot_id for s in ancestors(table.metadata, head_id(table))}  # the first try was dropped
    finally:
        catalog.engine.dispose()
