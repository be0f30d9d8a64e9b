"""Concurrent runs commit each batch once, and a table has one writer.

- A batch another process committed meanwhile is skipped, never applied a second time by pyiceberg's own
  commit retries (which re-apply an append on the refreshed table, past icefield's batch check), whatever
  the table's ``commit.retry.num-retries`` says.
- Losing the race to create a table uses the winner's table.
- A commit checks that the table still holds the position its run started from.
- A run takes the lease of its table: a second run waits for it or refuses, naming the first; a lease whose
  holder died is taken over.
- A project refuses two writers of one table (pipelines or models) unless each declares ``shared``, and
  targets named like icefield's own tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from icefield.catalog import leases, sql_catalog
from icefield.config import load_project
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.errors import ConfigError
from icefield.iceberg.history import read_position
from icefield.write import PositionMovedError, TableWriter

PIPE = "events"


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Any]:
    cat = sql_catalog("test", f"sqlite:///{tmp_path / 'catalog.db'}", (tmp_path / "warehouse").as_uri())
    yield cat
    cat.engine.dispose()


def writer(catalog: Any, **target: Any) -> TableWriter:
    target.setdefault("table", "raw.events")
    return TableWriter(catalog, TargetConfig(**target), PIPE, LocalEngine())


def rows(*ids: int) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "v": pa.array([f"v{i}" for i in ids])})


def ids(table: Any) -> list[int]:
    return sorted(table.scan().to_arrow().column("id").to_pylist())


# ------------------------------------------------------------------ the commit path


@pytest.mark.parametrize("retries", [None, "10"], ids=["property-absent", "legacy-10-retries"])
@pytest.mark.parametrize("mode", ["append", "merge"])
def test_a_batch_committed_by_another_process_meanwhile_is_skipped_not_applied_twice(catalog: Any, mode: str, retries: str | None) -> None:
    """F1: writer B loaded the table, writer A committed batch-1, then B commits batch-1 (what two
    overlapping runs do). pyiceberg's own retry used to re-apply B's append on A's snapshot: 6 rows."""
    props = {"commit.retry.num-retries": retries} if retries else {}
    keys = ["id"] if mode == "merge" else []
    a, b = writer(catalog, mode=mode, keys=keys, properties=props), writer(catalog, mode=mode, keys=keys, properties=props)
    a.commit(rows(0), "batch-0", {"n": 1}, "run-A")
    stale = b.load()
    a.commit(rows(1, 2, 3), "batch-1", {"n": 4}, "run-A")
    res = b.commit(rows(1, 2, 3), "batch-1", {"n": 4}, "run-B", table=stale)
    assert res.skipped
    table = a.load()
    assert ids(table) == [0, 1, 2, 3]
    assert read_position(table, PIPE) == {"n": 4}
    # The table's own setting is untouched (other engines read it), and no commit of icefield retried.
    assert table.metadata.properties.get("commit.retry.num-retries") == retries


def test_a_new_tables_properties_leave_commit_retries_to_icefield(catalog: Any) -> None:
    w = writer(catalog)
    w.commit(rows(1), "b1", None, "r")
    assert "commit.retry.num-retries" not in w.load().metadata.properties


def test_losing_the_race_to_create_the_table_uses_the_winners_table(catalog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """F1: both runs saw no table; the other one's create landed between ours being built and committed.
    pyiceberg then raises CommitFailedException('Table already exists'), which crashed the run."""
    winner, loser = writer(catalog), writer(catalog)
    real = catalog.create_table_transaction

    def racing(*args: Any, **kwargs: Any) -> Any:
        tx = real(*args, **kwargs)
        monkeypatch.setattr(catalog, "create_table_transaction", real)
        winner.commit(rows(1), "winner-batch", None, "run-W")  # creates the table first
        return tx

    monkeypatch.setattr(catalog, "create_table_transaction", racing)
    res = loser.commit(rows(2), "loser-batch", None, "run-L")
    assert not res.skipped
    assert ids(winner.load()) == [1, 2]


def test_a_commit_refuses_when_another_run_moved_the_position_since_the_batch_was_read(catalog: Any) -> None:
    """Batch ids alone cannot tell two runs' batches apart when they cut the source differently (a cursor
    read while rows arrive): the position each batch starts from must still be the table's."""
    a, b = writer(catalog), writer(catalog)
    a.commit(rows(1), "first", {"cursor": 1}, "run-A")
    a.base_position = b.base_position = {"cursor": 1}
    a.commit(rows(2, 3), "A:1-3", {"cursor": 3}, "run-A")
    with pytest.raises(PositionMovedError, match="another run of events committed meanwhile"):
        b.commit(rows(2, 3, 4), "B:1-4", {"cursor": 4}, "run-B")
    table = a.load()
    assert ids(table) == [1, 2, 3]
    assert read_position(table, PIPE) == {"cursor": 3}


def test_a_position_only_commit_also_refuses_a_moved_main(catalog: Any) -> None:
    """A batch whose rows were all quarantined commits only its position (no snapshot); it must still fail
    when main moved after the table was loaded and checked, instead of putting an older position back."""
    from pyiceberg.exceptions import CommitFailedException

    a, b = writer(catalog), writer(catalog)
    a.commit(rows(1), "first", {"cursor": 1}, "run-A")
    stale = b.load()
    a.commit(rows(2), "second", {"cursor": 2}, "run-A")
    with pytest.raises(CommitFailedException):
        b._commit_once(stale, rows(), "empty", {"cursor": 1}, "run-B", None, time.perf_counter())
    assert read_position(a.load(), PIPE) == {"cursor": 2}


# ------------------------------------------------------------------ leases


def test_a_second_run_of_a_table_refuses_and_names_the_first(catalog: Any) -> None:
    first = leases.acquire(catalog, "raw.events", "run-1", "pipeline events")
    try:
        with pytest.raises(leases.LeaseHeldError, match=r"run run-1 of pipeline events \(pid \d+") as err:
            leases.acquire(catalog, "raw.events", "run-2", "pipeline events")
        assert "--wait" in str(err.value)
        other = leases.acquire(catalog, "raw.other", "run-2", "pipeline other")  # other tables are free
        other.release()
    finally:
        first.release()
    again = leases.acquire(catalog, "raw.events", "run-3", "pipeline events")
    again.release()


def test_a_waiting_run_gets_the_lease_when_the_first_ends(catalog: Any) -> None:
    first = leases.acquire(catalog, "raw.events", "run-1", "pipeline events")
    threading.Timer(0.8, first.release).start()
    started = time.monotonic()
    second = leases.acquire(catalog, "raw.events", "run-2", "pipeline events", wait=30)
    second.release()
    assert 0.5 < time.monotonic() - started < 20


def test_a_lease_whose_process_died_is_taken_over_at_once(tmp_path: Path, catalog: Any) -> None:
    """kill -9 leaves the row behind: the next run on this host sees the process is gone."""
    script = (
        "import sys, os\n"
        "from icefield.catalog import leases, sql_catalog\n"
        f"cat = sql_catalog('test', 'sqlite:///{tmp_path / 'catalog.db'}', '{(tmp_path / 'warehouse').as_uri()}')\n"
        "leases.acquire(cat, 'raw.events', 'run-dead', 'pipeline events')\n"
        "os._exit(0)  # no release: as if killed\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    lease = leases.acquire(catalog, "raw.events", "run-next", "pipeline events")
    lease.release()


def test_an_expired_lease_of_another_host_is_taken_over_and_a_live_one_is_not(catalog: Any) -> None:
    from sqlalchemy import update

    held = leases.acquire(catalog, "raw.events", "run-far", "pipeline events", ttl=3600)
    held._stop.set()  # stop its heartbeat; it stays in the table as a far host's lease would
    store = leases.SqlLeases(catalog.engine, catalog.name)
    with catalog.engine.begin() as con:
        con.execute(update(store._table).values(host="far-away-host", pid=1))
    with pytest.raises(leases.LeaseHeldError, match="far-away-host"):
        leases.acquire(catalog, "raw.events", "run-near", "pipeline events")
    with catalog.engine.begin() as con:
        con.execute(update(store._table).values(expires_at=time.time() - 1))
    taken = leases.acquire(catalog, "raw.events", "run-near", "pipeline events")
    taken.release()


def test_the_heartbeat_keeps_a_lease_past_its_ttl_and_notices_a_takeover(catalog: Any) -> None:
    from sqlalchemy import update

    lease = leases.acquire(catalog, "raw.events", "run-1", "pipeline events", ttl=0.6)
    try:
        time.sleep(1.5)  # over twice the ttl: alive only because it was renewed
        with pytest.raises(leases.LeaseHeldError):
            leases.acquire(catalog, "raw.events", "run-2", "pipeline events", ttl=0.6)
        store = leases.SqlLeases(catalog.engine, catalog.name)
        with catalog.engine.begin() as con:
            con.execute(update(store._table).values(run_id="run-thief"))
        deadline = time.monotonic() + 10
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.lost
    finally:
        lease.release()


def _events_project(root: Path, files: int, rows_per_file: int, mode: str = "append") -> None:
    (root / "pipelines").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "icefield.yaml").write_text("name: race\n")
    keys = ", keys: [id]" if mode == "merge" else ""
    (root / "pipelines" / "events.yaml").write_text(
        "name: events\n"
        "source: {type: files, path: 'data/*.jsonl', format: jsonl}\n"
        f"target: {{table: raw.events, mode: {mode}{keys}}}\n"
        "batch_size: 1000\n"
    )
    for f in range(files):
        lines = [f'{{"id": {f * rows_per_file + i}, "v": "f{f}"}}' for i in range(rows_per_file)]
        (root / "data" / f"part-{f:03d}.jsonl").write_text("\n".join(lines) + "\n")


def _start(root: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    return subprocess.Popen(
        [sys.executable, "-m", "icefield.cli", "--project", str(root), "--json", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.timeout(600)
def test_two_runs_started_together_land_every_row_once_and_the_second_says_why_it_stopped(tmp_path: Path) -> None:
    """F1 with real processes: before, two runs of 20 files x 2,000 rows committed 220,000-270,000 rows."""
    import json

    root = tmp_path / "proj"
    _events_project(root, files=20, rows_per_file=2000)
    procs = [_start(root), _start(root)]
    outs = [p.communicate(timeout=500) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 75]), outs
    for p, (out, err) in zip(procs, outs, strict=True):
        assert "Traceback" not in err
        if p.returncode == 75:
            doc = json.loads(out)  # one document
            assert doc["status"] == "failed" and doc["type"] == "LeaseHeldError", doc
            assert "is being written by run" in doc["error"] and "read and wrote nothing" in doc["error"]
    table = open_catalog_of(root).load_table("raw.events")
    got = ids(table)
    assert len(got) == 40_000 and len(set(got)) == 40_000
    # A run with --wait gets its turn and finds nothing new.
    procs = [_start(root, "--wait", "5m"), _start(root, "--wait", "5m")]
    outs = [p.communicate(timeout=500) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(ids(open_catalog_of(root).load_table("raw.events"))) == 40_000


def open_catalog_of(root: Path) -> Any:
    from icefield.catalog import open_catalog

    return open_catalog(load_project(root, env={}))


# ------------------------------------------------------------------ one writer per table


def _project(root: Path, pipelines: dict[str, str], models: dict[str, str] | None = None) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text("name: owners\n")
    for name, target in pipelines.items():
        (root / "pipelines" / f"{name}.yaml").write_text(
            f"name: {name}\nsource: {{type: files, path: 'data/*.jsonl'}}\ntarget: {target}\n"
        )
    if models:
        (root / "models").mkdir()
        for name, header in models.items():
            (root / "models" / f"{name}.sql").write_text(f"{header}\nselect 42 as id\n")
    return root


def test_a_model_cannot_overwrite_a_pipelines_table(tmp_path: Path) -> None:
    """F2: a model with `-- target: raw.events` / `-- mode: overwrite` erased the pipeline's rows for good."""
    root = _project(tmp_path / "p", {"events": "{table: raw.events}"}, {"m": "-- target: raw.events\n-- mode: overwrite"})
    with pytest.raises(ConfigError, match=r"table 'raw.events' has 2 writers: pipeline events .*; model m .*shared: true"):
        load_project(root, env={})


def test_two_pipelines_cannot_write_one_table_unless_both_declare_it_shared(tmp_path: Path) -> None:
    root = _project(tmp_path / "p", {"a": "{table: raw.events}", "b": "{table: raw.events, shared: true}"})
    with pytest.raises(ConfigError, match="has 2 writers: pipeline a"):
        load_project(root, env={})
    root = _project(tmp_path / "q", {"a": "{table: raw.events, shared: true}", "b": "{table: raw.events, shared: true}"})
    project = load_project(root, env={})
    assert sorted(project.pipelines) == ["a", "b"]


@pytest.mark.parametrize("table", ["raw.events__quarantine", "raw.events__tombstones"])
def test_no_pipeline_or_model_may_target_icefields_own_tables(tmp_path: Path, table: str) -> None:
    root = _project(tmp_path / "p", {"events": "{table: raw.events}", "z": f"{{table: {table}, mode: append}}"})
    with pytest.raises(ConfigError, match=r"icefield's own .*pipeline z cannot write it"):
        load_project(root, env={})
    root = _project(tmp_path / "q", {"events": "{table: raw.events}"}, {"m": f"-- target: {table}"})
    with pytest.raises(ConfigError, match="model m cannot write it"):
        load_project(root, env={})


OPENER = r"""
import sys, time
from icefield.catalog import open_catalog
from icefield.config import load_project
project = load_project(sys.argv[1], env={})
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start at the same moment
open_catalog(project).list_namespaces()
"""


@pytest.mark.timeout(600)
def test_processes_opening_a_new_project_at_once_all_get_its_catalog(tmp_path: Path) -> None:
    """Runs started together on a new project all create the catalog database: the losers used to fail
    with 'table iceberg_tables already exists' (exit 2) or 'database is locked' (a traceback)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    for attempt in range(3):
        root = tmp_path / f"p{attempt}"
        root.mkdir()
        (root / "icefield.yaml").write_text("name: fresh\n")
        at = str(time.time() + 3)
        procs = [
            subprocess.Popen([sys.executable, "-c", OPENER, str(root), at], env=env, stderr=subprocess.PIPE, text=True) for _ in range(6)
        ]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err


def test_a_branch_commit_after_main_moved_says_so_for_the_audit_to_cut_it_again(catalog: Any) -> None:
    """The audit rebases on BranchMovedError; the writer used to turn it into a plain TransientError
    (as if the commit's outcome were unknown), so a run failed (exit 75) instead of rebasing."""
    from icefield.errors import BranchMovedError
    from icefield.write.branches import cut_branch

    w = writer(catalog)
    w.commit(rows(1), "b1", None, "r")
    table = cut_branch(w.load(), "audit")
    w.commit(rows(2), "b2", None, "r")  # main moves after the cut
    with pytest.raises(BranchMovedError):
        w.commit(rows(3), "b3", None, "r", table=w.load(), branch="audit")
    assert table is not None
