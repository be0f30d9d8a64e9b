"""docs/reliability.md A1 (small): SIGKILL `icefield run` at random moments during a multi-batch load.

After the kills and a clean run to the end, the table must equal the source exactly (0 lost, 0
duplicated, 0 unexpected, 0 divergent) and every snapshot in the history must be readable and hold a
whole number of batches (never half a batch). Runs on a local folder and on the S3 server
(``tests/stores.py``): the source database stays local, the warehouse moves.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.stores import STORES, Store, make_store

from icefield.catalog import open_catalog
from icefield.config import load_project

KILLS = int(os.environ.get("ICEFIELD_A1_KILLS", "50" if os.environ.get("ICEFIELD_LONG") else "10"))
ROWS = 40_000
BATCH = 400


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


def _make_project(root: Path, store: Store, rng: random.Random) -> dict[int, tuple[int, str, str]]:
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text(yaml.safe_dump(store.project(name="a1")))
    (root / "pipelines" / "events.yaml").write_text(
        "name: events\n"
        "source: {type: sql, url: 'sqlite:///src.db', table: events, cursor: updated_at}\n"
        "target: {table: raw.events, mode: append}\n"
        f"batch_size: {BATCH}\n"
    )
    oracle: dict[int, tuple[int, str, str]] = {}
    con = sqlite3.connect(root / "src.db")
    try:
        con.execute("create table events (id integer primary key, value integer, payload text, updated_at timestamp)")
        con.commit()
    finally:
        con.close()
    _add_rows(root, rng, oracle, ROWS)
    return oracle


def _add_rows(root: Path, rng: random.Random, oracle: dict[int, tuple[int, str, str]], n: int) -> None:
    """``n`` more source rows, after those in ``oracle`` (their cursor values too)."""
    con = sqlite3.connect(root / "src.db")
    try:
        rows = []
        for i in range(len(oracle), len(oracle) + n):
            # ~8 rows share each timestamp, so batch boundaries fall inside runs of equal cursor values.
            ts = f"2026-11-01 {(i // 8) // 3600 % 24:02d}:{(i // 8) // 60 % 60:02d}:{(i // 8) % 60:02d}"
            value = rng.randrange(1_000_000)
            payload = f"p{rng.randrange(10**9)}"
            rows.append((i, value, payload, ts))
            oracle[i] = (value, payload, ts)
        con.executemany("insert into events values (?,?,?,?)", rows)
        con.commit()
    finally:
        con.close()


def _run(root: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    return subprocess.Popen(
        [sys.executable, "-m", "icefield.cli", "--project", str(root), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


@pytest.mark.timeout(900)
def test_sigkill_during_load_loses_and_duplicates_nothing(tmp_path: Path, store: Store) -> None:
    seed = int(os.environ.get("ICEFIELD_SEED", random.randrange(1 << 30)))
    print(f"seed={seed} kills={KILLS}")
    rng = random.Random(seed)
    root = tmp_path / "proj"
    oracle = _make_project(root, store, rng)

    kills = 0
    for _ in range(KILLS):
        proc = _run(root)
        # Python start-up takes ~1 s; the load itself a few seconds: aim inside it.
        time.sleep(rng.uniform(0.8, 4.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        else:
            # The run loaded everything before its kill: give the next one rows to load, so that the
            # kills keep landing inside a load however fast it got.
            _add_rows(root, rng, oracle, ROWS // 4)
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    final = _run(root)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    print(f"killed {kills} runs mid-flight")
    assert kills >= KILLS // 2, "the kills should land while the load runs"

    table = open_catalog(load_project(root)).load_table("raw.events")
    assert table.metadata.location.startswith(store.uri), "the table lives in the store"
    rows = table.scan().to_arrow().to_pylist()
    seen: dict[int, int] = {}
    divergent = unexpected = 0
    for r in rows:
        seen[r["id"]] = seen.get(r["id"], 0) + 1
        if r["id"] not in oracle:
            unexpected += 1
        elif (r["value"], r["payload"], r["updated_at"].strftime("%Y-%m-%d %H:%M:%S")) != oracle[r["id"]]:
            divergent += 1
    lost = sum(1 for i in oracle if i not in seen)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    print(f"lost={lost} duplicated={duplicated} unexpected={unexpected} divergent={divergent}")
    assert (lost, duplicated, unexpected, divergent) == (0, 0, 0, 0)

    # Every snapshot is readable, holds no duplicate, and contains the one before it (append-only);
    # each names its batch, and no batch id was committed twice.
    previous: set[int] = set()
    for snap in table.metadata.snapshots:
        ids = table.scan(snapshot_id=snap.snapshot_id).to_arrow().column("id").to_pylist()
        assert len(ids) == len(set(ids)), f"snapshot {snap.snapshot_id} holds duplicates"
        assert set(ids) <= set(oracle)
        assert previous <= set(ids), f"snapshot {snap.snapshot_id} lost rows of its parent"
        previous = set(ids)
        assert snap.summary is not None and snap.summary["icefield.batch-id"], "every snapshot names its batch"
    batch_ids = [s.summary["icefield.batch-id"] for s in table.metadata.snapshots if s.summary]
    assert len(batch_ids) == len(set(batch_ids)), "a batch was committed twice"
