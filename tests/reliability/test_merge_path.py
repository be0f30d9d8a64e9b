"""Reliability of the merge path (docs/reliability.md A2, A3, B1, B2, C5) and a property test of merge
against an in-memory oracle. Each test prints its seed and the four counts (lost, duplicated,
unexpected, divergent) against its oracle; any non-zero count fails. The merge tests run in both merge
modes: copy-on-write (files rewritten) and merge-on-read (position delete files), on a local folder and on
the S3 server (``tests/stores.py``); a child process gets the store as JSON (``Store(**json.loads(arg))``)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.stores import STORES, Store, make_store

from icefield.catalog import sql_catalog
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.errors import CommitConflictError
from icefield.iceberg.history import SUMMARY_BATCH_ID
from icefield.write import TableWriter

LONG = bool(os.environ.get("ICEFIELD_LONG"))
MODES = ["copy-on-write", "merge-on-read"]
SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string()), ("_deleted", pa.bool_())])


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


CHILD_PATHS = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent.parent)]
"""What a child script puts first on ``sys.path``: the tests folder (``reliability.test_merge_path``) and the
repository (``tests.stores``)."""


def as_arg(store: Store) -> str:
    """``store`` for a child process's argv: the child rebuilds it with ``Store(**json.loads(arg))``."""
    return json.dumps({"kind": store.kind, "uri": store.uri, "props": store.props})


def catalog_at(root: Path, store: Store) -> Any:
    """The SQL catalog in ``root`` (``catalog.db``) whose warehouse is ``store``."""
    return sql_catalog("icefield", f"sqlite:///{root / 'catalog.db'}", store.uri, **store.props)


def merge_writer(root: Path, store: Store, table: str = "t.m", mode: str = "copy-on-write") -> TableWriter:
    """The merge writer of ``table``; ``mode`` (``write.merge.mode``) applies when it creates the table."""
    target = TargetConfig(table=table, mode="merge", keys=["k"], delete_column="_deleted", properties={"write.merge.mode": mode})
    return TableWriter(catalog_at(root, store), target, "p", LocalEngine())


def batch(ops: list[tuple[int, str | None]]) -> pa.Table:
    """``(key, value)`` upserts and ``(key, None)`` deletes."""
    return pa.table(
        {"k": [k for k, _ in ops], "v": [v or "" for _, v in ops], "_deleted": [v is None for _, v in ops]},
        schema=SCHEMA,
    )


def apply(oracle: dict[int, str], ops: list[tuple[int, str | None]]) -> None:
    for k, v in ops:  # later ops of a key win, as in the merge's dedupe
        if v is None:
            oracle.pop(k, None)
        else:
            oracle[k] = v


def counts(table_rows: list[dict[str, Any]], oracle: dict[int, str]) -> tuple[int, int, int, int]:
    seen: dict[int, list[str]] = {}
    for r in table_rows:
        seen.setdefault(r["k"], []).append(r["v"])
    lost = sum(1 for k in oracle if k not in seen)
    duplicated = sum(len(v) - 1 for v in seen.values())
    unexpected = sum(1 for k in seen if k not in oracle)
    divergent = sum(1 for k, v in seen.items() if k in oracle and v[0] != oracle[k])
    return lost, duplicated, unexpected, divergent


def rows(writer: TableWriter) -> list[dict[str, Any]]:
    table = writer.load()
    return [] if table is None else table.scan().to_arrow().to_pylist()


def referenced_files_exist(writer: TableWriter, store: Store) -> bool:
    """Whether every data and delete file a snapshot of the writer's table reads is in ``store``."""
    table = writer.load()
    assert table is not None
    assert table.metadata.location.startswith(store.uri), "the table lives in the store"
    for snap in table.metadata.snapshots:
        for task in table.scan(snapshot_id=snap.snapshot_id).plan_files():
            for f in [task.file, *task.delete_files]:
                if not store.exists(f.file_path):
                    return False
    return True


# ---------------------------------------------------------------------------------------- property


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=12 if not LONG else 200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 40), st.one_of(st.none(), st.text("abcxyz", min_size=1, max_size=3))), max_size=25),
        min_size=1,
        max_size=4,
    )
)
def test_random_upserts_and_deletes_match_the_oracle(
    tmp_path_factory: pytest.TempPathFactory, store: Store, mode: str, batches: list[list[tuple[int, str | None]]]
) -> None:
    root = tmp_path_factory.mktemp("prop")
    here = Store(store.kind, store.location(root.name), store.props)  # each example its own warehouse
    writer = merge_writer(root, here, mode=mode)
    oracle: dict[int, str] = {}
    for i, ops in enumerate(batches):
        writer.commit(batch(ops), f"b{i}", None, "r")
        apply(oracle, ops)
        assert counts(rows(writer), oracle) == (0, 0, 0, 0)


@pytest.mark.parametrize("mode", MODES)
def test_c5_three_versions_of_a_key_in_one_batch(tmp_path: Path, store: Store, mode: str) -> None:
    writer = merge_writer(tmp_path, store, mode=mode)
    writer.commit(batch([(1, "a"), (2, "x")]), "b0", None, "r")
    writer.commit(batch([(1, "v1"), (1, "v2"), (1, "v3"), (2, None), (2, "back")]), "b1", None, "r")
    assert sorted((r["k"], r["v"]) for r in rows(writer)) == [(1, "v3"), (2, "back")]


# ---------------------------------------------------------------------------------------- A2 failpoints

CHILD = r"""
import json, sys
from pathlib import Path
sys.path[:0] = {paths!r}
from icefield.testing import failpoints
failpoints.arm()
from reliability.test_merge_path import merge_writer, batch
from tests.stores import Store
from icefield.iceberg.history import read_position
root, store = Path(sys.argv[1]), Store(**json.loads(sys.argv[3]))
# Like a pipeline: resume after the position committed in the table, and let batch ids catch the rest.
done = (read_position(merge_writer(root, store).load(), "p") or {{"i": -1}})["i"]
for i, ops in enumerate(json.loads(Path(sys.argv[2]).read_text())):
    if i > done:
        merge_writer(root, store).commit(batch([tuple(o) for o in ops]), f"b{{i}}", {{"i": i}}, "run")
"""


POINTS = ["after-data-files", "before-commit", "after-commit"]
S3_A2 = [("after-data-files", "merge-on-read"), ("before-commit", "copy-on-write"), ("after-commit", "merge-on-read")]
"""On S3 each failpoint once, the merge modes taking turns (every case there adds a few seconds)."""


@pytest.mark.parametrize(
    ("store", "point", "mode"),
    [("local", p, m) for m in MODES for p in POINTS] + [pytest.param("s3", p, m, marks=pytest.mark.s3) for p, m in S3_A2],
    indirect=["store"],
)
def test_a2_failpoints_on_the_merge_path(tmp_path: Path, store: Store, point: str, mode: str) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed} point={point} mode={mode}")
    merge_writer(tmp_path, store, mode=mode).create(SCHEMA.remove(2))
    rng = random.Random(seed)
    plan = [[(rng.randrange(30), None if rng.random() < 0.2 else f"v{i}-{j}") for j in range(rng.randrange(1, 15))] for i in range(8)]
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    script = CHILD.format(paths=CHILD_PATHS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    kill_at = rng.randrange(1, len(plan) + 1)
    argv = [sys.executable, "-c", script, str(tmp_path), str(plan_file), as_arg(store)]
    died = subprocess.run(argv, env={**env, "ICEFIELD_FAILPOINT": f"{point}@{kill_at}"}, capture_output=True, text=True, check=False)
    assert died.returncode == 137, died.stderr
    # The restart replays every batch: those that landed are found by batch id and skipped.
    ok = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    oracle: dict[int, str] = {}
    for ops in plan:
        apply(oracle, [tuple(o) for o in ops])  # type: ignore[misc]
    writer = merge_writer(tmp_path, store)
    c = counts(rows(writer), oracle)
    print(f"lost={c[0]} duplicated={c[1]} unexpected={c[2]} divergent={c[3]}")
    assert c == (0, 0, 0, 0)
    table = writer.load()
    assert table is not None
    ids = [s.summary[SUMMARY_BATCH_ID] for s in table.metadata.snapshots if s.summary]
    assert len(ids) == len(set(ids)), "no batch committed twice"
    assert set(ids) <= {f"b{i}" for i in range(len(plan))}
    # A batch that changes nothing (deletes of absent keys) commits only its position, no snapshot.
    assert referenced_files_exist(writer, store)


# ---------------------------------------------------------------------------------------- A3 commit outcomes


class FlakyCatalog:
    """Wraps a real SQL catalog; its next commit fails in the way the test asks (the one thing mocked:
    a catalog server that times out or loses a response cannot be produced on demand otherwise)."""

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner = inner
        self.mode = mode
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def load_table(self, ident: Any) -> Any:
        table = self.inner.load_table(ident)
        table.catalog = self
        return table

    def commit_table(self, table: Any, requirements: Any, updates: Any) -> Any:
        from pyiceberg.exceptions import CommitFailedException, CommitStateUnknownException

        if not self.fired:
            self.fired = True
            if self.mode == "failed-before":
                raise CommitFailedException("simulated: another writer won")
            if self.mode == "unknown-not-landed":
                raise CommitStateUnknownException("simulated: timeout before the swap")
            if self.mode == "landed-then-error":
                self.inner.commit_table(table, requirements, updates)
                raise TimeoutError("simulated: the response was lost after the swap")
        return self.inner.commit_table(table, requirements, updates)


@pytest.mark.parametrize("merge_mode", MODES)
@pytest.mark.parametrize("mode", ["failed-before", "landed-then-error", "unknown-not-landed"])
def test_a3_commit_outcome_matrix(tmp_path: Path, store: Store, mode: str, merge_mode: str) -> None:
    from icefield.errors import TransientError

    plain = merge_writer(tmp_path, store, mode=merge_mode)
    plain.commit(batch([(1, "a"), (2, "b")]), "b0", None, "r")
    flaky = FlakyCatalog(catalog_at(tmp_path, store), mode)
    writer = TableWriter(flaky, plain.target, "p", LocalEngine())  # type: ignore[arg-type]
    if mode == "unknown-not-landed":
        with pytest.raises(TransientError, match="stays pending"):
            writer.commit(batch([(1, "A"), (3, "c")]), "b1", None, "r")
        writer.commit(batch([(1, "A"), (3, "c")]), "b1", None, "r")  # the rerun lands it
    else:
        writer.commit(batch([(1, "A"), (3, "c")]), "b1", None, "r")
    assert sorted((r["k"], r["v"]) for r in rows(plain)) == [(1, "A"), (2, "b"), (3, "c")]
    table = plain.load()
    assert table is not None
    ids = [s.summary[SUMMARY_BATCH_ID] for s in table.metadata.snapshots if s.summary]
    assert ids == ["b0", "b1"], "committed exactly once"
    assert referenced_files_exist(plain, store), "no referenced file was deleted"


# ---------------------------------------------------------------------------------------- B1, B2 concurrency

APPENDER = r"""
import json, sys
from pathlib import Path
sys.path[:0] = {paths!r}
import pyarrow as pa
from reliability.test_merge_path import catalog_at
from tests.stores import Store
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.write import TableWriter
root, proc, n, store = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Store(**json.loads(sys.argv[4]))
w = TableWriter(catalog_at(root, store), TargetConfig(table="t.a", mode="append"), "p", LocalEngine())
for i in range(n):
    w.commit(pa.table({{"proc": [proc], "i": [i]}}), f"p{{proc}}-{{i}}", None, "r")
"""


def test_b1_concurrent_appenders(tmp_path: Path, store: Store) -> None:
    procs, each = (8, 50) if LONG else (4, 20)
    TableWriter(catalog_at(tmp_path, store), TargetConfig(table="t.a", mode="append"), "p", LocalEngine()).create(
        pa.schema([("proc", pa.int64()), ("i", pa.int64())])
    )
    script = APPENDER.format(paths=CHILD_PATHS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    children = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(p), str(each), as_arg(store)], env=env, stderr=subprocess.PIPE, text=True) for p in range(procs)]
    for c in children:
        _, err = c.communicate(timeout=600)
        assert c.returncode == 0, err
    table = catalog_at(tmp_path, store).load_table("t.a")
    assert table.metadata.location.startswith(store.uri), "the table lives in the store"
    got = sorted((r["proc"], r["i"]) for r in table.scan().to_arrow().to_pylist())
    assert got == [(p, i) for p in range(procs) for i in range(each)], "exactly one row per acknowledged append"


MERGER = r"""
import json, random, sys, time
from pathlib import Path
sys.path[:0] = {paths!r}
from icefield.testing import failpoints
failpoints.arm()
from reliability.test_merge_path import merge_writer, batch
from tests.stores import Store
from icefield.errors import CommitConflictError
root, proc, seconds, seed = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
store = Store(**json.loads(sys.argv[5]))
rng = random.Random(seed * 100 + proc)
log = open(root / f"log-{{proc}}.jsonl", "a")
deadline = time.monotonic() + seconds
i = 0
while time.monotonic() < deadline:
    ops = [(rng.randrange(100), None if rng.random() < 0.15 else f"p{{proc}}-{{i}}-{{j}}") for j in range(rng.randrange(1, 8))]
    bid = f"p{{proc}}-{{i}}"
    try:
        res = merge_writer(root, store).commit(batch(ops), bid, None, "r")
        log.write(json.dumps({{"batch": bid, "ops": ops, "snapshot": res.snapshot_id}}) + "\n")
        log.flush()
    except CommitConflictError:
        log.write(json.dumps({{"batch": bid, "conflict": True}}) + "\n")
        log.flush()
    i += 1
"""


@pytest.mark.parametrize(
    ("store", "mode"),
    # On S3 in one mode (each run takes its 15 s): copy-on-write, whose merges read the other mergers' files remotely.
    [("local", m) for m in MODES] + [pytest.param("s3", "copy-on-write", marks=pytest.mark.s3)],
    indirect=["store"],
)
def test_b2_conflicting_mergers_lose_no_update(tmp_path: Path, store: Store, mode: str) -> None:
    seed = random.randrange(1 << 30)
    procs, seconds = 4, (60.0 if LONG else 15.0)
    print(f"seed={seed} procs={procs} seconds={seconds} mode={mode}")
    merge_writer(tmp_path, store, mode=mode).commit(batch([(k, "init") for k in range(100)]), "init", None, "r")
    script = MERGER.format(paths=CHILD_PATHS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    children = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(p), str(seconds), str(seed), as_arg(store)], env=env, stderr=subprocess.PIPE, text=True) for p in range(procs)]
    for c in children:
        _, err = c.communicate(timeout=600)
        assert c.returncode == 0, err
    acknowledged: dict[str, list[tuple[int, str | None]]] = {}
    no_ops: dict[str, list[tuple[int, str | None]]] = {}
    conflicts = 0
    for p in range(procs):
        for line in (tmp_path / f"log-{p}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("conflict"):
                conflicts += 1
            elif rec["snapshot"] is None:
                no_ops[rec["batch"]] = [tuple(o) for o in rec["ops"]]  # type: ignore[misc]
            else:
                acknowledged[rec["batch"]] = [tuple(o) for o in rec["ops"]]  # type: ignore[misc]
    # A batch that changes nothing (it only deletes keys another merger deleted first) makes no snapshot.
    assert all(v is None for ops in no_ops.values() for _, v in ops), f"only pure deletes may be no-ops: {no_ops}"
    writer = merge_writer(tmp_path, store)
    table = writer.load()
    assert table is not None and table.metadata.location.startswith(store.uri)
    history = [s.summary[SUMMARY_BATCH_ID] for s in table.metadata.snapshots if s.summary]
    assert history[0] == "init"
    committed = history[1:]
    assert len(committed) == len(set(committed)), "no batch committed twice"
    assert set(committed) == set(acknowledged), "every acknowledged batch is in the history, and only those"
    oracle = {k: "init" for k in range(100)}
    for bid in committed:  # replay in snapshot order
        apply(oracle, acknowledged[bid])
    c = counts(rows(writer), oracle)
    print(f"batches={len(committed)} conflicts={conflicts} lost={c[0]} duplicated={c[1]} unexpected={c[2]} divergent={c[3]}")
    assert len(committed) >= procs, "each merger should commit something in the time"
    assert c == (0, 0, 0, 0)


def test_b2_conflict_error_when_retries_run_out(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A merger that keeps losing gets CommitConflictError (loud), never a silent lost update."""
    import icefield.write as write

    writer = merge_writer(tmp_path, store)
    writer.commit(batch([(1, "a")]), "b0", None, "r")
    other = merge_writer(tmp_path, store)

    class RacingEngine(LocalEngine):
        """Plans the merge, then lets another writer commit on the same key before it can."""

        def merge(self, table: Any, data: Any, target: Any, write_files: Any, tombstones: Any = None) -> Any:
            plan = super().merge(table, data, target, write_files, tombstones)
            other.commit(batch([(1, f"other-{time.monotonic_ns()}")]), f"o{time.monotonic_ns()}", None, "r")
            return plan

    monkeypatch.setattr(write, "COMMIT_ATTEMPTS", 3)
    loser = TableWriter(catalog_at(tmp_path, store), writer.target, "p", RacingEngine())
    with pytest.raises(CommitConflictError, match="could not be committed"):
        loser.commit(batch([(1, "mine")]), "mine", None, "r")
    assert [r["v"] for r in rows(writer)][0].startswith("other-")
