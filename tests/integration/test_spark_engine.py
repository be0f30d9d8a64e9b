"""``engine: spark`` lands the same batches as ``engine: local`` (marker ``spark``).

Two projects hold the same pipelines and the same source files, one on each engine: an append with a row
check (a bad row goes to quarantine), merges by key with deletes, copy-on-write and merge-on-read, and change
data capture (``keep_newest`` merges with tombstones, from a CSV change feed and from Debezium events). After
each run the tables hold the same rows, the quarantines the same rows, the runs report the same counts and the
pipelines the same positions. On Spark, each batch is written on the staging branch by Spark's Iceberg writer
and ``main`` moves to it in the commit that also moves the position; a batch already on ``main`` is skipped.

Write-audit-publish runs on Spark as on the local engine (a failing gate holds the batch Spark wrote on the
audit branch; ``icefield publish`` or a rerun with the rule fixed publishes it once). Conflicts: another writer
committing to ``main`` while Spark writes the batch, before the fast-forward or before an audited publish makes
the batch staged again from the new ``main``; one committing on the staging branch never reaches ``main``.

One Spark session (local[2]) serves the module: it starts in about 20 s.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.serializers import FromInputFile

from icefield import Project, load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.iceberg.history import MAIN, STATE_PREFIX, SUMMARY_BATCH_ID, head_id, read_position

pytestmark = [
    pytest.mark.spark,
    pytest.mark.timeout(1200),
    # pyspark leaves the sockets of its JVM round trips (collect, py4j) to the garbage collector.
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(r"ignore:unclosed <socket\.socket:ResourceWarning"),
]

HEADER = "id,kind,amount,deleted\n"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _csv(rows: list[tuple[Any, ...]]) -> str:
    return HEADER + "".join(",".join("" if v is None else str(v) for v in r) + "\n" for r in rows)


FIRST = [(i, "xyz"[i % 3], i * 1.5, "false") for i in range(1, 21)]
# updates (2, 7), deletes (3, 11; 99 is not there), new keys (30, 31), and a key twice (7: the later one wins)
SECOND = [(2, "u", 102.0, "false"), (7, "u", 1.0, "false"), (3, "d", 0.0, "true"), (11, "d", 0.0, "true"),
          (99, "d", 0.0, "true"), (30, "n", 30.0, "false"), (31, "n", 31.0, "false"), (7, "w", 7.5, "false")]
# the append's bad row: amount below 0
APPEND_FIRST = [(i, "a", float(i), "false") for i in range(1, 11)] + [(11, "bad", -1.0, "false")]
APPEND_SECOND = [(i, "b", float(i), "false") for i in range(20, 25)]


NO_NEGATIVE = "select * from {table} where amount < 0"


def _audited(rule: str) -> str:
    """The pipeline ``aud``: appends behind an error gate (write-audit-publish)."""
    return (
        "name: aud\nsource: {type: files, path: 'data/aud/*.csv', format: csv}\n"
        f"target: {{table: raw.aud}}\ngates:\n  - {{name: no_negative, sql: '{rule}'}}\n"
    )


def _project(root: Path, engine: str) -> Project:
    _write(root, "icefield.yaml", f"name: parity\nengine: {engine}\nspark: {{master: 'local[2]', memory: 1g}}\n")
    _write(
        root, "pipelines/app.yaml",
        "name: app\nsource: {type: files, path: 'data/app/*.csv', format: csv}\n"
        "target: {table: raw.app}\nchecks:\n  - range: {column: amount, min: 0}\n",
    )
    for name, mode in (("cow", "copy-on-write"), ("mor", "merge-on-read")):
        _write(
            root, f"pipelines/{name}.yaml",
            f"name: {name}\nsource: {{type: files, path: 'data/{name}/*.csv', format: csv, file_column: null}}\n"
            f"target: {{table: raw.{name}, mode: merge, keys: [id], delete_column: deleted, "
            f"properties: {{write.merge.mode: {mode}}}}}\n",
        )
    for name, mode in (("cdc_cow", "copy-on-write"), ("cdc_mor", "merge-on-read")):
        _write(
            root, f"pipelines/{name}.yaml",
            f"name: {name}\nsource: {{type: files, path: 'data/{name}/*.csv', format: csv, file_column: null}}\n"
            f"target: {{table: raw.{name}, mode: merge, keys: [id], order_by: [tx, lsn], keep_newest: true, "
            f"delete_column: deleted, properties: {{write.merge.mode: {mode}}}}}\n"
            "checks:\n  - range: {column: amount, min: 0}\n",
        )
    # the same change feed behind an error gate (write-audit-publish)
    _write(
        root, "pipelines/cdc_aud.yaml",
        "name: cdc_aud\nsource: {type: files, path: 'data/cdc_aud/*.csv', format: csv, file_column: null}\n"
        "target: {table: raw.cdc_aud, mode: merge, keys: [id], order_by: [tx, lsn], keep_newest: true, delete_column: deleted}\n"
        "checks:\n  - range: {column: amount, min: 0}\n"
        f"gates:\n  - {{name: no_negative, sql: '{NO_NEGATIVE}'}}\n",
    )
    # A change table read by its arrival order (seq), its versions ordered by `version`: Spark reads it itself.
    _write(
        root, "pipelines/cdc_sql.yaml",
        f"name: cdc_sql\nsource: {{type: sql, url: 'sqlite:///{root.parent / 'changes.db'}', table: changes, cursor: seq}}\n"
        "target: {table: raw.cdc_sql, mode: merge, keys: [id], order_by: version, keep_newest: true, delete_column: deleted}\n"
        "checks:\n  - range: {column: amount, min: 0}\n",
    )
    _write(root, "pipelines/users.yaml", "name: users\nsource: {type: debezium, path: 'cdc/users/*.jsonl'}\ntarget: {table: raw.users, keys: [id]}\n")
    _write(
        root, "pipelines/ovw.yaml",
        "name: ovw\nsource: {type: files, path: 'data/ovw/*.csv', format: csv, file_column: null}\n"
        "target: {table: raw.ovw, mode: overwrite, partition_by: [kind]}\n",
    )
    _write(root, "pipelines/aud.yaml", _audited(NO_NEGATIVE))
    project = load_project(root)
    open_catalog(project)  # icefield creates the catalog database (WAL) before Spark opens it
    return project


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Project]:
    base = tmp_path_factory.mktemp("engines")
    with sqlite3.connect(base / "changes.db") as con:
        con.execute("CREATE TABLE changes (id INTEGER, seq INTEGER, version INTEGER, name TEXT, amount REAL, deleted INTEGER)")
    return {engine: _project(base / engine, engine) for engine in ("local", "spark")}


@pytest.fixture(scope="module")
def spark(projects: dict[str, Project]) -> Iterator[Any]:
    """The one Spark session of the module, on the spark project's catalog: the engine reuses it."""
    from icefield.engines.spark_session import project_session

    started = time.monotonic()
    session = project_session(projects["spark"])
    print(f"spark session started in {time.monotonic() - started:.1f}s")
    try:
        yield session
    finally:
        session.stop()


def _feed(projects: dict[str, Project], rel: str, rows: list[tuple[Any, ...]]) -> None:
    for project in projects.values():
        _write(project.root, rel, _csv(rows))


def _rows(project: Project, table: str) -> list[tuple[Any, ...]]:
    data = open_catalog(project).load_table(table).scan().to_arrow()
    names = [c for c in data.column_names if not c.startswith("_")]
    return sorted(tuple(r[c] for c in names) for r in data.to_pylist())


def _quarantine(project: Project, table: str) -> list[tuple[Any, ...]]:
    catalog = open_catalog(project)
    name = table + "__quarantine"
    if not catalog.table_exists(name):
        return []
    data = catalog.load_table(name).scan().to_arrow()
    return sorted((r["pipeline"], r["batch_id"], r["check"], r["reason"], r["raw"], r["source"]) for r in data.to_pylist())


def _counts(result: Any) -> list[tuple[Any, ...]]:
    return [
        (b.rows_in, b.rows_committed, b.rows_quarantined, b.rows_deleted, b.rows_updated, b.rows_inserted, b.skipped)
        for b in result.batches
    ]


def _run_both(projects: dict[str, Project], name: str) -> dict[str, Any]:
    results = {}
    for engine, project in projects.items():
        started = time.monotonic()
        results[engine] = run_pipeline(project, name)
        print(f"{name} on {engine}: {time.monotonic() - started:.1f}s, {len(results[engine].batches)} batches")
        assert results[engine].status == "success", results[engine].error
    return results


def _assert_same(projects: dict[str, Project], name: str, table: str, results: dict[str, Any]) -> None:
    local, spark = projects["local"], projects["spark"]
    assert _counts(results["spark"]) == _counts(results["local"])
    assert results["spark"].conserved and results["local"].conserved
    assert _rows(spark, table) == _rows(local, table)
    assert _quarantine(spark, table) == _quarantine(local, table)
    sp, lp = (read_position(open_catalog(p).load_table(table), name) for p in (spark, local))
    assert sp == lp and sp is not None


def _assert_published_with_position(project: Project, name: str, table: str, result: Any, branch: str | None = None) -> None:
    """``main``'s head is Spark's snapshot, carrying the batch id, and no metadata version has ``main`` there
    without the batch's position: they moved in one commit. ``main`` was fast-forwarded to ``branch`` (default:
    the staging branch)."""
    tbl = open_catalog(project).load_table(table)
    head = tbl.current_snapshot()
    assert head is not None and head.summary is not None
    assert head.summary.additional_properties.get("engine-name") == "spark"
    assert head.summary[SUMMARY_BATCH_ID] == result.batches[-1].batch_id and head.summary["icefield.pipeline"] == name
    assert head.snapshot_id == result.batches[-1].snapshot_id
    position = tbl.metadata.properties[STATE_PREFIX + name]
    versions = [FromInputFile.table_metadata(tbl.io.new_input(e.metadata_file)) for e in tbl.metadata.metadata_log]
    first = next(md for md in [*versions, tbl.metadata] if md.refs.get(MAIN) and md.refs[MAIN].snapshot_id == head.snapshot_id)
    assert first.properties.get(STATE_PREFIX + name) == position
    assert head_id(tbl, branch or "icefield-stage-" + name) == head.snapshot_id, "main was fast-forwarded to the branch"


def test_an_append_with_a_quarantined_row_lands_the_same(projects: dict[str, Project], spark: Any) -> None:
    _feed(projects, "data/app/a.csv", APPEND_FIRST)
    results = _run_both(projects, "app")
    _assert_same(projects, "app", "raw.app", results)
    assert results["spark"].rows_quarantined == 1 and results["spark"].rows_committed == 10
    _assert_published_with_position(projects["spark"], "app", "raw.app", results["spark"])

    _feed(projects, "data/app/b.csv", APPEND_SECOND)
    results = _run_both(projects, "app")
    _assert_same(projects, "app", "raw.app", results)
    assert len(_rows(projects["spark"], "raw.app")) == 15
    _assert_published_with_position(projects["spark"], "app", "raw.app", results["spark"])

    # A rerun adds nothing.
    before = head_id(open_catalog(projects["spark"]).load_table("raw.app"))
    results = _run_both(projects, "app")
    assert results["spark"].rows_in == results["local"].rows_in == 0
    assert head_id(open_catalog(projects["spark"]).load_table("raw.app")) == before

    # A changed source file replaces the rows it gave before, in one snapshot.
    _feed(projects, "data/app/b.csv", [*APPEND_SECOND[:2], (40, "c", 40.0, "false")])
    results = _run_both(projects, "app")
    _assert_same(projects, "app", "raw.app", results)
    assert sorted(r[0] for r in _rows(projects["spark"], "raw.app")) == [*range(1, 11), 20, 21, 40]
    _assert_published_with_position(projects["spark"], "app", "raw.app", results["spark"])


@pytest.mark.parametrize("name", ["cow", "mor"])
def test_a_merge_with_deletes_lands_the_same(projects: dict[str, Project], spark: Any, name: str) -> None:
    table = f"raw.{name}"
    _feed(projects, f"data/{name}/a.csv", FIRST)
    results = _run_both(projects, name)
    _assert_same(projects, name, table, results)

    _feed(projects, f"data/{name}/b.csv", SECOND)
    results = _run_both(projects, name)
    _assert_same(projects, name, table, results)
    assert results["spark"].batches[0].rows_deleted == 2 and results["spark"].batches[0].rows_updated == 2
    rows = {r[0]: r for r in _rows(projects["spark"], table)}
    assert 3 not in rows and 11 not in rows and 99 not in rows and rows[7][1:3] == ("w", 7.5) and 31 in rows
    _assert_published_with_position(projects["spark"], name, table, results["spark"])
    tbl = open_catalog(projects["spark"]).load_table(table)
    deletes = [t for t in tbl.scan().plan_files() if t.delete_files]
    assert bool(deletes) == (name == "mor"), "write.merge.mode decides between rewritten files and delete files"

    results = _run_both(projects, name)
    assert results["spark"].rows_in == 0 and _rows(projects["spark"], table) == _rows(projects["local"], table)


CDC_HEADER = "id,kind,amount,deleted,tx,lsn\n"
# Change events of keys 1-8 and more, versioned by (tx, lsn): out of order, deleted, redelivered late.
CDC_RUNS: list[list[tuple[Any, ...]]] = [
    # key 1 twice (the newer version comes first in the batch), a bad row (quarantined)
    [(1, "a", 1.0, "false", 10, 1), (1, "older", 0.5, "false", 10, 0),
     *[(i, "a", float(i), "false", 10, i) for i in range(2, 10)], (50, "bad", -1.0, "false", 10, 50)],
    # 2 newer; 3 older and 4 equal (stale); 5 deleted; 6 an older delete (stale); 7 newer by lsn alone;
    # 20 deleted before it was ever inserted; 21 new
    [(2, "b", 2.5, "false", 20, 1), (3, "old", 3.5, "false", 5, 9), (4, "same", 4.5, "false", 10, 4),
     (5, None, 0.0, "true", 20, 2), (6, None, 0.0, "true", 9, 0), (7, "b", 7.5, "false", 10, 8),
     (20, None, 0.0, "true", 20, 3), (21, "b", 21.0, "false", 20, 4)],
    # late events: 5 and 20 not newer than their tombstones (no resurrection); 21 an equal delete and 9 a
    # version without tx (NULL is oldest): stale; 8 deleted; 6 newer than its stale delete
    [(5, "late", 5.5, "false", 15, 0), (20, "late", 20.5, "false", 20, 3), (21, None, 0.0, "true", 20, 4),
     (9, "nul", 9.5, "false", None, 99), (8, None, 0.0, "true", 30, 1), (6, "c", 6.5, "false", 30, 0)],
    # 5 and 20 come back with versions newer than their tombstones; 8's late update stays buried
    [(5, "back", 5.0, "false", 40, 0), (20, "back", 20.0, "false", 20, 4), (8, "late", 8.5, "false", 25, 0)],
]
CDC_STALE = [0, 3, 4, 1]
CDC_END = {1: ("a", 1.0), 2: ("b", 2.5), 3: ("a", 3.0), 4: ("a", 4.0), 5: ("back", 5.0), 6: ("c", 6.5), 7: ("b", 7.5),
           9: ("a", 9.0), 20: ("back", 20.0), 21: ("b", 21.0)}  # fmt: skip


def test_an_audited_keep_newest_merge_lands_the_same(projects: dict[str, Project], spark: Any) -> None:
    """The change feed behind an error gate: Spark writes each batch on the audit branch, comparing versions with
    the branch's rows and the tombstones, and the publish moves ``main``; as on the local engine."""
    from icefield.write.branches import audit_branch

    for i, rows in enumerate(CDC_RUNS):
        for project in projects.values():
            _write(project.root, f"data/cdc_aud/{'abcd'[i]}.csv", _cdc_csv(rows))
        results = _run_both(projects, "cdc_aud")
        _assert_same(projects, "cdc_aud", "raw.cdc_aud", results)
        assert [b.rows_stale for b in results["spark"].batches] == [b.rows_stale for b in results["local"].batches] == [CDC_STALE[i]]
        assert _graves(projects["spark"], "raw.cdc_aud") == _graves(projects["local"], "raw.cdc_aud")
        _assert_published_with_position(projects["spark"], "cdc_aud", "raw.cdc_aud", results["spark"], audit_branch("cdc_aud"))
    assert {r[0]: (r[1], r[2]) for r in _rows(projects["spark"], "raw.cdc_aud")} == CDC_END


def _graves(project: Project, table: str) -> list[tuple[Any, ...]]:
    """The tombstones of ``table`` (key and version; none before its first delete)."""
    if not open_catalog(project).table_exists(table + "__tombstones"):
        return []
    return _rows(project, table + "__tombstones")


def _cdc_csv(rows: list[tuple[Any, ...]]) -> str:
    return CDC_HEADER + "".join(",".join("" if v is None else str(v) for v in r) + "\n" for r in rows)


@pytest.mark.parametrize("name", ["cdc_cow", "cdc_mor"])
def test_a_keep_newest_merge_with_tombstones_lands_the_same(projects: dict[str, Project], spark: Any, name: str) -> None:
    """Change data capture (``keep_newest``, ordered by ``[tx, lsn]``) on Spark: only a strictly newer version
    replaces or deletes a stored row, a late older event never brings a deleted key back (its tombstone in
    ``<table>__tombstones`` holds it), an equal version or one without ``tx`` is stale; the tables, the
    tombstones, the quarantines, the counts (``rows_stale`` too) and the positions are those of the local
    engine."""
    table = f"raw.{name}"
    for i, rows in enumerate(CDC_RUNS):
        for project in projects.values():
            _write(project.root, f"data/{name}/{'abcd'[i]}.csv", _cdc_csv(rows))
        results = _run_both(projects, name)
        _assert_same(projects, name, table, results)
        stale = {engine: [b.rows_stale for b in r.batches] for engine, r in results.items()}
        assert stale["spark"] == stale["local"] == [CDC_STALE[i]]
        assert _graves(projects["spark"], table) == _graves(projects["local"], table)
        _assert_published_with_position(projects["spark"], name, table, results["spark"])
    assert results["spark"].batches[0].rows_inserted == 2, "5 and 20 came back"
    rows = {r[0]: (r[1], r[2]) for r in _rows(projects["spark"], table)}
    assert rows == CDC_END
    graves = {r[0]: r[1:] for r in _graves(projects["spark"], table)}
    assert graves == {5: (20, 2), 6: (9, 0), 8: (30, 1), 20: (20, 3), 21: (20, 4)}
    assert len(_quarantine(projects["spark"], table)) == 1
    tbl = open_catalog(projects["spark"]).load_table(table)
    deletes = [t for t in tbl.scan().plan_files() if t.delete_files]
    assert bool(deletes) == (name == "cdc_mor"), "write.merge.mode decides between rewritten files and delete files"

    results = _run_both(projects, name)
    assert results["spark"].rows_in == 0 and _rows(projects["spark"], table) == _rows(projects["local"], table)


# (id, version, name, amount, deleted) in arrival order; seq is the position in this list.
CHANGES: list[list[tuple[Any, ...]]] = [
    [*((i, 10, f"v{i}", float(i), 0) for i in range(1, 7)), (50, 10, "bad", -1.0, 0)],
    # 2 newer, 3 older and 4 equal (stale), 5 deleted, 6 an older delete (stale), 9 deleted before it existed
    [(2, 20, "two", 2.5, 0), (3, 5, "old", 3.5, 0), (4, 10, "same", 4.5, 0), (5, 20, None, 0.0, 1), (6, 8, None, 0.0, 1),
     (9, 20, None, 0.0, 1)],
    # late: 5 older and 9 equal to their tombstones (held back); 6 newer; 1 twice (the newer version arrives
    # first); 4 twice at one version (the later arrival wins)
    [(5, 15, "late", 5.5, 0), (9, 20, "late", 9.5, 0), (6, 30, "six", 6.5, 0), (1, 12, "one", 1.5, 0), (1, 11, "eleven", 1.1, 0),
     (4, 13, "four-a", 4.1, 0), (4, 13, "four-b", 4.2, 0)],
]  # fmt: skip
CHANGES_STALE = [0, 3, 2]


def test_a_keep_newest_merge_of_a_sql_source_spark_reads_lands_the_same(
    projects: dict[str, Project], spark: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``sql`` source Spark reads itself (the batch stays in Spark) merged with ``keep_newest``: the tombstones
    are collected from Spark's rows, and the tables, tombstones, counts and positions are the local engine's."""
    db = projects["spark"].root.parent / "changes.db"
    seq = 0
    for i, rows in enumerate(CHANGES):
        with sqlite3.connect(db) as con:
            for r in rows:
                seq += 1
                con.execute("INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?)", (r[0], seq, *r[1:]))
        with caplog.at_level(logging.INFO, logger="icefield.engines.spark"):
            results = _run_both(projects, "cdc_sql")
        assert any(r.getMessage().startswith("spark read ") for r in caplog.records), "Spark read the source itself"
        caplog.clear()
        _assert_same(projects, "cdc_sql", "raw.cdc_sql", results)
        stale = {engine: [b.rows_stale for b in r.batches] for engine, r in results.items()}
        assert stale["spark"] == stale["local"] == [CHANGES_STALE[i]]
        assert _graves(projects["spark"], "raw.cdc_sql") == _graves(projects["local"], "raw.cdc_sql")
    rows = {r[0]: r[3] for r in _rows(projects["spark"], "raw.cdc_sql")}  # id, seq, version, name, amount
    assert rows == {1: "one", 2: "two", 3: "v3", 4: "four-b", 6: "six"}
    assert {r[0] for r in _graves(projects["spark"], "raw.cdc_sql")} == {5, 6, 9}


def _event(op: str, row: dict[str, Any] | None, commit: int | None, lsn: int, before: dict[str, Any] | None = None) -> str:
    """A Debezium 3.6 PostgreSQL change event as JsonConverter writes it with ``schemas.enable=false``."""
    source = {
        "version": "3.6.1.Final", "connector": "postgresql", "name": "app", "ts_ms": 1_790_000_000_000, "snapshot": "true" if op == "r" else "false",
        "db": "app", "sequence": json.dumps([None if commit is None else str(commit), str(lsn)]), "schema": "public", "table": "users",
        "txId": 700, "lsn": lsn, "xmin": None,
    }  # fmt: skip
    return json.dumps({"before": before, "after": row, "source": source, "op": op, "ts_ms": 1_790_000_000_001})


def _user(i: int, name: str, commit: int | None, lsn: int, op: str = "u") -> str:
    return _event(op, {"id": i, "name": name}, commit, lsn)


def _gone(i: int, commit: int, lsn: int) -> str:
    return _event("d", None, commit, lsn, before={"id": i})


# One file per run; versions are (commit LSN, LSN), a snapshot read (op r) has no commit LSN (the oldest).
USERS_RUNS: list[list[str]] = [
    [*(_user(i, f"snap{i}", None, 100 + i, "r") for i in range(1, 5)), _user(1, "one", 200, 201), _gone(2, 210, 211),
     _user(5, "five", 220, 221, "c"), _user(1, "older", 190, 191), "null"],
    # 2's snapshot read redelivered after its delete; 5 deleted; 3 updated; 4 deleted
    [_user(2, "snap2", None, 102, "r"), _gone(5, 230, 231), _user(3, "three", 240, 241), _gone(4, 235, 236)],
    # 5's insert redelivered after its delete; 4's delete again; 2 inserted anew; 3's update again (equal)
    [_user(5, "five", 220, 221, "c"), _gone(4, 235, 236), _user(2, "two", 250, 251, "c"), _user(3, "three", 240, 241)],
    # an update from before the truncate, the truncate, then 6 inserted and deleted and 1 inserted anew
    [_user(1, "late", 195, 196), _event("t", None, 300, 301), _user(6, "six", 310, 311, "c"), _user(1, "new", 320, 321, "c"),
     _gone(6, 330, 331)],
    # 6's insert redelivered after its delete; 1 updated
    [_user(6, "six", 310, 311, "c"), _user(1, "newer", 340, 341)],
]  # fmt: skip
USERS_AFTER = [{1: "one", 3: "snap3", 4: "snap4", 5: "five"}, {1: "one", 3: "three"}, {1: "one", 2: "two", 3: "three"}, {1: "new"}, {1: "newer"}]


def test_a_debezium_source_lands_the_same(projects: dict[str, Project], spark: Any) -> None:
    """Debezium change events (files of JSON lines; the target merges with ``keep_newest`` by ``source.sequence``,
    deletes by ``_cdc_deleted``): snapshot reads, redeliveries after deletes, a truncate (the batch replaces the
    table), on Spark as on the local engine: tables, tombstones, counts, positions."""
    for i, lines in enumerate(USERS_RUNS):
        for project in projects.values():
            _write(project.root, f"cdc/users/{i:04d}.jsonl", "".join(line + "\n" for line in lines))
        results = _run_both(projects, "users")
        _assert_same(projects, "users", "raw.users", results)
        stale = {engine: [b.rows_stale for b in r.batches] for engine, r in results.items()}
        assert stale["spark"] == stale["local"]
        assert _graves(projects["spark"], "raw.users") == _graves(projects["local"], "raw.users")
        names = {r["id"]: r["name"] for r in open_catalog(projects["spark"]).load_table("raw.users").scan().to_arrow().to_pylist()}
        assert names == USERS_AFTER[i], f"after file {i}"
    results = _run_both(projects, "users")
    assert results["spark"].rows_in == 0


def test_an_overwrite_replaces_the_partitions_the_batch_touches(projects: dict[str, Project], spark: Any) -> None:
    _feed(projects, "data/ovw/a.csv", FIRST)
    _assert_same(projects, "ovw", "raw.ovw", _run_both(projects, "ovw"))
    _feed(projects, "data/ovw/b.csv", [(100, "x", 1.0, "false"), (101, "x", 2.0, "false")])
    results = _run_both(projects, "ovw")
    _assert_same(projects, "ovw", "raw.ovw", results)
    kinds = [(r[1], r[0]) for r in _rows(projects["spark"], "raw.ovw")]
    assert sorted(i for k, i in kinds if k == "x") == [100, 101], "partition x was replaced"
    assert sorted(i for k, i in kinds if k != "x") == [i for i in range(1, 21) if i % 3 != 0], "y and z stayed"
    _assert_published_with_position(projects["spark"], "ovw", "raw.ovw", results["spark"])


def test_a_batch_already_on_main_is_skipped(projects: dict[str, Project], spark: Any) -> None:
    from icefield.engines import get_engine
    from icefield.write import TableWriter

    project = projects["spark"]
    pipe = project.pipeline("cow")
    catalog = open_catalog(project)
    table = catalog.load_table("raw.cow")
    if table.current_snapshot() is None:
        pytest.fail("run after the merge test: it needs a batch on main")
    engine = get_engine("spark", project)
    landed = table.current_snapshot().summary[SUMMARY_BATCH_ID]  # type: ignore[union-attr]
    import pyarrow as pa

    again = pa.table({"id": pa.array([500], pa.int64()), "kind": ["x"], "amount": [1.0], "deleted": [False]})
    result = TableWriter(catalog, pipe.target, pipe.name, engine).commit(again, landed, read_position(table, "cow"), "rerun")
    assert result.skipped and engine.timings == []  # type: ignore[attr-defined]
    assert head_id(catalog.load_table("raw.cow")) == head_id(table)


def _fail_both(projects: dict[str, Project], name: str) -> None:
    from icefield.errors import GateFailedError

    for engine, project in projects.items():
        with pytest.raises(GateFailedError, match="no_negative"):
            run_pipeline(project, name)
        print(f"{name} on {engine}: held")


def _files(project: Project, name: str, table: str) -> set[str]:
    position = read_position(open_catalog(project).load_table(table), name)
    assert position is not None
    return set(position["files"])


def _main_history(tbl: Any) -> list[Any]:
    from icefield.iceberg.history import ancestors

    return ancestors(tbl.metadata, head_id(tbl))


def _batch_ids_on_main(project: Project, table: str) -> list[str]:
    tbl = open_catalog(project).load_table(table)
    return [s.summary[SUMMARY_BATCH_ID] for s in _main_history(tbl) if s.summary and s.summary.get(SUMMARY_BATCH_ID)]


def test_write_audit_publish_holds_a_failing_batch_on_the_audit_branch_and_publishes_it_once(
    projects: dict[str, Project], spark: Any
) -> None:
    """The gates of ``aud`` audit each batch Spark wrote on ``icefield-audit-aud``: a passing batch is published
    with its position, a failing one stays on the branch (``main`` and its position untouched) until
    ``icefield publish`` or a rerun with the rule fixed publishes it, exactly once; as on the local engine."""
    from click.testing import CliRunner

    from icefield.cli import cli
    from icefield.iceberg.history import is_held
    from icefield.write.branches import audit_branch

    branch = audit_branch("aud")
    sp = projects["spark"]
    # A passing gate publishes the batch Spark wrote on the audit branch, with its position, in one commit.
    _feed(projects, "data/aud/a.csv", APPEND_FIRST[:10])
    results = _run_both(projects, "aud")
    _assert_same(projects, "aud", "raw.aud", results)
    _assert_published_with_position(sp, "aud", "raw.aud", results["spark"], branch)

    # A failing gate holds the batch on the branch: main and its position stay.
    published = head_id(open_catalog(sp).load_table("raw.aud"))
    _feed(projects, "data/aud/b.csv", [(11, "bad", -1.0, "false"), (12, "b", 12.0, "false")])
    _fail_both(projects, "aud")
    for project in projects.values():
        tbl = open_catalog(project).load_table("raw.aud")
        assert is_held(tbl, branch) and "data/aud/b.csv" not in _files(project, "aud", "raw.aud")
        held = sorted(tbl.scan(snapshot_id=head_id(tbl, branch)).to_arrow().column("id").to_pylist())
        assert held == [*range(1, 13)], "the held batch is on the branch, for inspection"
    tbl = open_catalog(sp).load_table("raw.aud")
    assert head_id(tbl) == published and len(_rows(sp, "raw.aud")) == 10
    held_snapshot = tbl.snapshot_by_id(head_id(tbl, branch))  # type: ignore[arg-type]
    assert held_snapshot is not None and held_snapshot.summary is not None
    assert held_snapshot.summary.additional_properties.get("engine-name") == "spark"
    assert "icefield.position" in held_snapshot.summary.additional_properties, "the position rides on the held snapshot"

    # `icefield publish` publishes the held batch with its position; the rerun reads nothing again.
    for project in projects.values():
        res = CliRunner().invoke(cli, ["--project", str(project.root), "publish", "raw.aud"])
        assert res.exit_code == 0, res.output
    tbl = open_catalog(sp).load_table("raw.aud")
    assert head_id(tbl) == held_snapshot.snapshot_id and "data/aud/b.csv" in _files(sp, "aud", "raw.aud")
    assert _rows(sp, "raw.aud") == _rows(projects["local"], "raw.aud") and len(_rows(sp, "raw.aud")) == 12
    results = _run_both(projects, "aud")
    assert results["spark"].rows_in == results["local"].rows_in == 0 and len(_rows(sp, "raw.aud")) == 12

    # Held again, then the rule is fixed: the next run publishes the held batch and goes on.
    _feed(projects, "data/aud/c.csv", [(13, "bad", -2.0, "false")])
    _fail_both(projects, "aud")
    held_id = head_id(open_catalog(sp).load_table("raw.aud"), branch)
    fixed = {}
    for engine, project in projects.items():
        _write(project.root, "pipelines/aud.yaml", _audited(NO_NEGATIVE.replace("< 0", "< -10")))
        _write(project.root, "data/aud/d.csv", _csv([(14, "d", 14.0, "false")]))
        fixed[engine] = load_project(project.root)
    results = _run_both(fixed, "aud")
    _assert_same(fixed, "aud", "raw.aud", results)
    assert sorted(r[0] for r in _rows(sp, "raw.aud")) == [*range(1, 15)]
    tbl = open_catalog(sp).load_table("raw.aud")
    assert held_id in [s.snapshot_id for s in _main_history(tbl)], "the held batch was published, not rewritten"
    for project in projects.values():
        batches = _batch_ids_on_main(project, "raw.aud")
        assert len(batches) == len(set(batches)) == 4, "a, b, c and d, once each"
        assert _files(project, "aud", "raw.aud") == {f"data/aud/{x}.csv" for x in "abcd"}


def _race_project(project: Project, name: str, gate: str | None = None) -> Project:
    """``project`` with the pipeline ``name`` appending ``data/<name>/*.csv`` to ``raw.<name>`` (behind the
    error gate ``gate``, when given)."""
    gates = f"gates:\n  - {{name: no_negative, sql: '{gate}'}}\n" if gate else ""
    _write(
        project.root, f"pipelines/{name}.yaml",
        f"name: {name}\nsource: {{type: files, path: 'data/{name}/*.csv', format: csv}}\n"
        f"target: {{table: raw.{name}}}\n{gates}",
    )
    return load_project(project.root)


def _rival(project: Project, table: str) -> None:
    """Another writer appends rows 900, 901 and 902 to ``main`` of ``table`` (pyiceberg, no batch id)."""
    import pyarrow as pa

    tbl = open_catalog(project).load_table(table)
    rows = [{"id": 900 + i, "kind": "r", "amount": float(i), "deleted": "false"} for i in range(3)]
    tbl.append(pa.Table.from_pylist(rows, schema=tbl.schema().as_arrow()))


@pytest.mark.parametrize("moment", ["before-fast-forward", "during-spark-write"])
def test_a_commit_on_main_before_the_fast_forward_stages_the_batch_again(
    projects: dict[str, Project], spark: Any, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """Another writer commits to ``main`` after Spark's staging branch was cut: while Spark writes the batch on
    it, or after (before the fast-forward, at the failpoint ``after-data-files``). The fast-forward's
    compare-and-swap fails, the commit path stages the batch again on a branch cut from the new ``main``, and
    both writers' rows are in the table exactly once, with the pipeline's position."""
    from icefield.engines.spark import SparkEngine
    from icefield.testing import failpoints

    name = "race_" + moment.replace("-", "_")
    project = _race_project(projects["spark"], name)
    table = f"raw.{name}"
    _write(project.root, f"data/{name}/a.csv", _csv(FIRST[:5]))
    assert run_pipeline(project, name).status == "success"

    def rival() -> None:
        _rival(project, table)

    stagings: list[str] = []
    if moment == "before-fast-forward":

        def hit(point: str) -> None:
            if point == "after-data-files":
                stagings.append(point)
                if len(stagings) == 1:
                    rival()

        monkeypatch.setattr(failpoints, "hit", hit)
    else:
        real = SparkEngine._run

        def run_beside_a_rival(*args: Any) -> None:
            stagings.append(moment)
            if len(stagings) == 1:
                rival()
            real(*args)

        monkeypatch.setattr(SparkEngine, "_run", staticmethod(run_beside_a_rival))
    _write(project.root, f"data/{name}/b.csv", _csv(FIRST[5:10]))
    with failpoints.armed():
        result = run_pipeline(project, name)
    assert result.status == "success", result.error
    assert len(stagings) == 2, "the batch was staged again after the conflict"
    ids = sorted(r[0] for r in _rows(project, table))
    assert ids == [*range(1, 11), 900, 901, 902], "both writers' rows, once each"
    tbl = open_catalog(project).load_table(table)
    head = tbl.current_snapshot()
    assert head is not None and head.summary is not None and head.summary[SUMMARY_BATCH_ID] == result.batches[-1].batch_id
    parent = tbl.snapshot_by_id(head.parent_snapshot_id)  # type: ignore[arg-type]
    assert parent is not None and parent.summary is not None and SUMMARY_BATCH_ID not in parent.summary.additional_properties, (
        "the batch was staged on top of the rival's commit"
    )
    assert _files(project, name, table) == {f"data/{name}/a.csv", f"data/{name}/b.csv"}
    _assert_published_with_position(project, name, table, result)


def test_a_commit_on_the_staging_branch_by_another_writer_never_reaches_main(
    projects: dict[str, Project], spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer of the staging branch (a second driver of the pipeline, or the JVM of a killed one that
    finished its commit) commits on it between the cut and Spark's write: Spark's append lands on top of it.
    The engine sees the staged snapshot does not sit on the cut and stages the batch again: the other writer's
    rows never reach ``main``."""
    from icefield.engines.spark import SparkEngine, staging_branch

    name = "intruder"
    project = _race_project(projects["spark"], name)
    table = f"raw.{name}"
    _write(project.root, f"data/{name}/a.csv", _csv(FIRST[:5]))
    assert run_pipeline(project, name).status == "success"
    columns = open_catalog(project).load_table(table).schema().column_names
    values = {"id": "900", "kind": "'r'", "amount": "0.0", "deleted": "'false'"}
    row = ", ".join(values.get(c, "CAST(NULL AS STRING)") for c in columns)
    branch = f"`{project.config.catalog.name}`.raw.{name}.`branch_{staging_branch(name)}`"

    real = SparkEngine._run
    stagings: list[str] = []

    def run_after_an_intruder(session: Any, *args: Any) -> None:
        stagings.append(args[0])
        if len(stagings) == 1:
            session.sql(f"INSERT INTO {branch} VALUES ({row})")
        real(session, *args)

    monkeypatch.setattr(SparkEngine, "_run", staticmethod(run_after_an_intruder))
    _write(project.root, f"data/{name}/b.csv", _csv(FIRST[5:10]))
    result = run_pipeline(project, name)
    assert result.status == "success", result.error
    assert sorted(r[0] for r in _rows(project, table)) == [*range(1, 11)], "the intruder's row stayed off main"
    assert len(stagings) == 2, "the batch was staged again"
    _assert_published_with_position(project, name, table, result)


def test_a_commit_on_main_before_the_publish_writes_the_audited_batch_again(
    projects: dict[str, Project], spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Write-audit-publish on Spark: another writer commits to ``main`` after the batch passed its gates on the
    audit branch (failpoint ``before-publish``). The publish fails its compare-and-swap; the run cuts the audit
    branch again from the new ``main``, Spark writes the batch there again, the gates pass and it is published:
    both writers' rows once each, with the position."""
    from icefield.testing import failpoints
    from icefield.write.branches import audit_branch

    name = "race_publish"
    project = _race_project(projects["spark"], name, gate=NO_NEGATIVE)
    table = f"raw.{name}"
    _write(project.root, f"data/{name}/a.csv", _csv(FIRST[:5]))
    assert run_pipeline(project, name).status == "success"

    publishes: list[str] = []

    def hit(point: str) -> None:
        if point == "before-publish":
            publishes.append(point)
            if len(publishes) == 1:
                _rival(project, table)

    monkeypatch.setattr(failpoints, "hit", hit)
    _write(project.root, f"data/{name}/b.csv", _csv(FIRST[5:10]))
    with failpoints.armed():
        result = run_pipeline(project, name)
    assert result.status == "success", result.error
    assert len(publishes) == 2, "the batch was written and audited again after the conflict"
    assert sorted(r[0] for r in _rows(project, table)) == [*range(1, 11), 900, 901, 902], "both writers' rows, once each"
    _assert_published_with_position(project, name, table, result, audit_branch(name))
    assert _files(project, name, table) == {f"data/{name}/a.csv", f"data/{name}/b.csv"}
    batches = _batch_ids_on_main(project, table)
    assert len(batches) == len(set(batches)) == 2
