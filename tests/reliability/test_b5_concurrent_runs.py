"""docs/reliability.md B5: the same pipeline run by 2 and 4 processes at once, for every source kind and mode
that runs without a server (``files`` append / merge / overwrite, ``sql`` cursor append / merge and full
load, ``debezium`` files into a merge), while the source keeps growing. Every source row ends in the table
exactly once (each key at its newest version in merge mode); the losers wait (``--wait``) or refuse with
exit 75 and a message naming the run that holds the table, never with a traceback.

The Kafka and Debezium-from-Kafka cases are in tests/integration/test_b5_kafka_concurrent_runs.py. A
second battery row below races writers of the same batches without any lease (processes calling the
writer directly): the commit path alone keeps every batch once.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from icefield.catalog import open_catalog
from icefield.config import load_project

TABLE = "raw.t"


@dataclass
class Source:
    """A pipeline's source and what the table must end as: ``rows`` maps each key to its newest value
    (append sources: every row has a key of its own)."""

    root: Path
    rng: random.Random
    rows: dict[int, str] = field(default_factory=dict)
    next_id: int = 0
    files: int = 0
    lsn: int = 1000


def _project(root: Path, source: str, target: str, batch_size: int = 500) -> None:
    (root / "pipelines").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "icefield.yaml").write_text("name: b5\n")
    (root / "pipelines" / "p.yaml").write_text(f"name: p\nsource: {source}\ntarget: {target}\nbatch_size: {batch_size}\n")


# ------------------------------------------------------------------ files


def _files_add(src: Source, n: int, overwrite_keys: bool = False) -> None:
    """A new JSON Lines file of ``n`` rows: new keys, or (``overwrite_keys``) new versions of old ones too."""
    lines = []
    for _ in range(n):
        if overwrite_keys and src.rows and src.rng.random() < 0.3:
            key = src.rng.choice(list(src.rows))
        else:
            key, src.next_id = src.next_id, src.next_id + 1
        value = f"f{src.files}-{src.rng.randrange(10**9)}"
        src.rows[key] = value
        lines.append(json.dumps({"id": key, "v": value, "day": f"2026-11-{1 + src.files % 28:02d}"}))
    (src.root / "data" / f"part-{src.files:04d}.jsonl").write_text("\n".join(lines) + "\n")
    src.files += 1


def files_append(root: Path, rng: random.Random) -> tuple[Source, Callable[[Source], None]]:
    _project(root, "{type: files, path: 'data/*.jsonl', format: jsonl, columns: {id: long, v: string, day: date}}", "{table: raw.t, mode: append}")
    src = Source(root, rng)
    for _ in range(12):
        _files_add(src, 1500)
    return src, lambda s: _files_add(s, 700)


def files_merge(root: Path, rng: random.Random) -> tuple[Source, Callable[[Source], None]]:
    _project(root, "{type: files, path: 'data/*.jsonl', format: jsonl, columns: {id: long, v: string, day: date}}", "{table: raw.t, mode: merge, keys: [id]}")
    src = Source(root, rng)
    for _ in range(12):
        _files_add(src, 1500, overwrite_keys=True)
    return src, lambda s: _files_add(s, 700, overwrite_keys=True)


def files_overwrite(root: Path, rng: random.Random) -> tuple[Source, Callable[[Source], None]]:
    # One file a day: each file's batch replaces its day's partition.
    _project(
        root,
        "{type: files, path: 'data/*.jsonl', format: jsonl, columns: {id: long, v: string, day: date}}",
        "{table: raw.t, mode: overwrite, partition_by: [day]}",
        batch_size=5000,
    )
    src = Source(root, rng)
    for _ in range(12):
        _files_add(src, 1500)
    return src, lambda s: _files_add(s, 700)


# ------------------------------------------------------------------ sql (SQLite)


def _sql_source(root: Path, rng: random.Random, cursor: bool, target: str) -> Source:
    source = "{type: sql, url: 'sqlite:///src.db', table: t" + (", cursor: updated_at}" if cursor else "}")
    _project(root, source, target)
    con = sqlite3.connect(root / "src.db")
    con.execute("create table t (id integer primary key, v text, updated_at text)")
    con.commit()
    con.close()
    src = Source(root, rng)
    _sql_add(src, 6000, updates=False)
    return src


def _sql_add(src: Source, n: int, updates: bool = True) -> None:
    """``n`` changes: new rows, and (``updates``) new versions of old ones, all with a newer cursor value
    than any before (several rows share each value, so batches end inside runs of equal values)."""
    con = sqlite3.connect(src.root / "src.db", timeout=60)
    try:
        stamp = con.execute("select coalesce(max(updated_at), '2026-11-01 00:00:00.000000') from t").fetchone()[0]
        base = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + 1
        for i in range(n):
            if updates and src.rows and src.rng.random() < 0.3:
                key = src.rng.choice(list(src.rows))
            else:
                key, src.next_id = src.next_id, src.next_id + 1
            value = f"s{src.rng.randrange(10**9)}"
            src.rows[key] = value
            ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(base + i // 5)) + ".000000"
            con.execute("insert or replace into t values (?, ?, ?)", (key, value, ts))
        con.commit()
    finally:
        con.close()


def sql_cursor_append(root: Path, rng: random.Random) -> tuple[Source, Callable[[Source], None]]:
    return _sql_source(root, rng, True, "{table: raw.t, mode: append}"), lambda s: _sql_add(s, 400, updates=False)


def sql_cursor_merge(root: Path, rng: random.Random) -> tuple[Source, Callable[[Source], None]]:
    return _sql_source(root, rng, True, "{table: raw.t, mode: merge, keys: [id]}"), lambda s: _sql_add(s, 400)


def sql_full_load(root: Path, rng: random.Random) -> tuple[Source, Callable[[Source], None]]:
    return _sql_source(root, rng, False, "{table: raw.t, mode: merge, keys: [id]}"), lambda s: _sql_add(s, 400)


# ------------------------------------------------------------------ debezium (files)


def _cdc_add(src: Source, n: int) -> None:
    """A file of ``n`` change events (inserts, updates, deletes), in commit order after every earlier one."""
    lines = []
    for _ in range(n):
        src.lsn += 1
        lsn = src.lsn
        if src.rows and src.rng.random() < 0.1:
            key = src.rng.choice(list(src.rows))
            del src.rows[key]
            lines.append(_event("d", key, None, lsn))
            continue
        if src.rows and src.rng.random() < 0.3:
            key, op = src.rng.choice(list(src.rows)), "u"
        else:
            key, src.next_id, op = src.next_id, src.next_id + 1, "c"
        value = f"d{src.rng.randrange(10**9)}"
        src.rows[key] = value
        lines.append(_event(op, key, value, lsn))
    (src.root / "data").mkdir(exist_ok=True)
    (src.root / "data" / f"cdc-{src.files:04d}.jsonl").write_text("\n".join(lines) + "\n")
    src.files += 1


def _event(op: str, key: int, value: str | None, lsn: int) -> str:
    row = None if value is None else {"id": key, "v": value}
    source = {"connector": "postgresql", "db": "app", "schema": "public", "table": "t", "lsn": lsn, "sequence": json.dumps([str(lsn), str(lsn)])}
    return json.dumps({"before": {"id": key} if op == "d" else None, "after": row, "source": source, "op": op, "ts_ms": 1})


def debezium_merge(root: Path, rng: random.Random) -> tuple[Source, Callable[[Source], None]]:
    _project(root, "{type: debezium, path: 'data/cdc-*.jsonl'}", "{table: raw.t, keys: [id]}")
    src = Source(root, rng)
    for _ in range(8):
        _cdc_add(src, 1500)
    return src, lambda s: _cdc_add(s, 500)


SCENARIOS: dict[str, Callable[[Path, random.Random], tuple[Source, Callable[[Source], None]]]] = {
    "files-append": files_append,
    "files-merge": files_merge,
    "files-overwrite": files_overwrite,
    "sql-cursor-append": sql_cursor_append,
    "sql-cursor-merge": sql_cursor_merge,
    "sql-full-load": sql_full_load,
    "debezium-files-merge": debezium_merge,
}


# ------------------------------------------------------------------ the runs


def _start(root: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    return subprocess.Popen(
        [sys.executable, "-m", "icefield.cli", "--project", str(root), "--json", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def race(root: Path, src: Source, grow: Callable[[Source], None], n: int, wait: bool) -> list[tuple[int, str, str]]:
    """Start ``n`` runs of the pipeline together while the source grows a few times; then one more run
    to the end. Returns each racer's (exit code, stdout, stderr)."""
    args = ["--wait", "10m"] if wait else []
    procs = [_start(root, *args) for _ in range(n)]
    stop = threading.Event()

    def growing() -> None:
        for _ in range(3):
            if stop.wait(src.rng.uniform(0.5, 2.0)):
                return
            grow(src)

    grower = threading.Thread(target=growing)
    grower.start()
    try:
        outs = [(p, *p.communicate(timeout=600)) for p in procs]
    finally:
        stop.set()
        grower.join()
    final = _start(root)
    out, err = final.communicate(timeout=600)
    assert final.returncode == 0, err
    return [(p.returncode, o, e) for p, o, e in outs]


def table_rows(root: Path) -> list[tuple[int, str]]:
    table = open_catalog(load_project(root, env={})).load_table(TABLE)
    return [(r["id"], r["v"]) for r in table.scan(selected_fields=("id", "v")).to_arrow().to_pylist()]


def counts(got: list[tuple[int, str]], oracle: dict[int, str]) -> tuple[int, int, int, int]:
    """(lost, duplicated, unexpected, divergent) of ``got`` against the oracle's rows."""
    seen: dict[int, list[str]] = {}
    for key, value in got:
        seen.setdefault(key, []).append(value)
    lost = sum(1 for k in oracle if k not in seen)
    duplicated = sum(len(v) - 1 for v in seen.values())
    unexpected = sum(1 for k in seen if k not in oracle)
    divergent = sum(1 for k, v in seen.items() if k in oracle and v[-1] != oracle[k])
    return lost, duplicated, unexpected, divergent


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("n", "wait"), [(2, True), (4, False)], ids=["2-waiting", "4-refusing"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_b5_one_pipeline_run_by_several_processes_lands_every_row_once(tmp_path: Path, scenario: str, n: int, wait: bool) -> None:
    seed = int(os.environ.get("ICEFIELD_SEED", random.randrange(1 << 30)))
    print(f"seed={seed} scenario={scenario} processes={n} wait={wait}")
    root = tmp_path / "proj"
    src, grow = SCENARIOS[scenario](root, random.Random(seed))
    results = race(root, src, grow, n, wait)
    refused = 0
    for code, out, err in results:
        assert "Traceback" not in err, err
        docs = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert docs, f"exit {code} printed no JSON; stderr: {err}"
        if code == 75:
            refused += 1
            assert not wait, f"a waiting run must not give up: {out}"
            assert "is being written by run" in out and "read and wrote nothing" in out, out
        else:
            assert code == 0, (code, out, err)
    got = table_rows(root)
    c = counts(got, src.rows)
    print(f"rows={len(got)} refused={refused} lost={c[0]} duplicated={c[1]} unexpected={c[2]} divergent={c[3]}")
    assert c == (0, 0, 0, 0)


# ------------------------------------------------------------------ the commit path alone


RACER = r"""
import random, sys
from pathlib import Path
import pyarrow as pa
from icefield.catalog import sql_catalog
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.write import TableWriter
root, proc, batches, mode = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(proc)
cat = sql_catalog("race", f"sqlite:///{root / 'catalog.db'}", (root / "warehouse").as_uri())
target = TargetConfig(table="t.race", mode=mode, keys=["id"] if mode == "merge" else [])
# Each process commits the same batches (ids and rows), starting at a different one: every retry must find
# a batch another process committed meanwhile, and no batch may land twice.
order = list(range(batches))
start = rng.randrange(batches)
for b in order[start:] + order[:start]:
    w = TableWriter(cat, target, "race", LocalEngine())
    rows = pa.table({"id": pa.array(range(b * 100, b * 100 + 100), pa.int64()), "batch": pa.array([b] * 100, pa.int64())})
    w.commit(rows, f"batch-{b}", None, f"run-{proc}")
"""


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["append", "merge"])
def test_b5_writers_of_the_same_batches_without_a_lease_commit_each_batch_once(tmp_path: Path, mode: str) -> None:
    """Four processes commit the same 12 batches through the writer with no lease between them (as runs
    whose lease expired would). Before, pyiceberg's own retries re-applied an append another process had
    already committed."""
    procs, batches = 4, 12
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    children = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(p), str(batches), mode], env=env, stderr=subprocess.PIPE, text=True)
        for p in range(procs)
    ]
    errors = [(c.returncode, err) for c, (_, err) in ((c, c.communicate(timeout=600)) for c in children)]
    for code, err in errors:  # every child waited for and its pipe closed before the first assertion
        assert code == 0, err
    from icefield.catalog import sql_catalog

    cat = sql_catalog("race", f"sqlite:///{tmp_path / 'catalog.db'}", (tmp_path / "warehouse").as_uri())
    table = cat.load_table("t.race")
    ids = sorted(table.scan().to_arrow().column("id").to_pylist())
    assert ids == list(range(batches * 100)), f"{len(ids)} rows for {batches * 100}"
    history = [s.summary["icefield.batch-id"] for s in table.metadata.snapshots if s.summary and s.summary["icefield.batch-id"]]
    assert sorted(history) == sorted(f"batch-{b}" for b in range(batches))
    cat.engine.dispose()
