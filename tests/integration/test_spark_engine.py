"""``engine: spark`` lands the same batches as ``engine: local`` (marker ``spark``).

Two projects hold the same pipelines and the same source files, one on each engine: an append with a row
check (a bad row goes to quarantine), and merges by key with deletes, copy-on-write and merge-on-read. After
each run the tables hold the same rows, the quarantines the same rows, the runs report the same counts and the
pipelines the same positions. On Spark, each batch is written on the staging branch by Spark's Iceberg writer
and ``main`` moves to it in the commit that also moves the position; a batch already on ``main`` is skipped.

One Spark session (local[2]) serves the module: it starts in about 20 s.
"""

from __future__ import annotations

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
    _write(
        root, "pipelines/ovw.yaml",
        "name: ovw\nsource: {type: files, path: 'data/ovw/*.csv', format: csv, file_column: null}\n"
        "target: {table: raw.ovw, mode: overwrite, partition_by: [kind]}\n",
    )
    project = load_project(root)
    open_catalog(project)  # icefield creates the catalog database (WAL) before Spark opens it
    return project


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Project]:
    base = tmp_path_factory.mktemp("engines")
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


def _assert_published_with_position(project: Project, name: str, table: str, result: Any) -> None:
    """``main``'s head is Spark's snapshot, carrying the batch id, and no metadata version has ``main`` there
    without the batch's position: they moved in one commit."""
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
    assert head_id(tbl, "icefield-stage-" + name) == head.snapshot_id, "main was fast-forwarded to the staging branch"


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
