"""Spark 4.1 + Iceberg and icefield share one catalog, both ways (marker ``spark``).

icefield (pyiceberg's ``SqlCatalog`` on the project's default SQLite catalog, catalog name
``icefield``) and Spark (Iceberg's ``JdbcCatalog`` on the same file, through ``stack.spark``) load
the same tables: what one commits, the other reads row for row, at once. Spark's ``MERGE INTO`` is
run in both write modes: copy-on-write (rewrites data files) and merge-on-read (writes position
delete files, which icefield's DuckDB reader and its own merge must apply).

Needs ``pip install -r requirements/spark.txt``, Maven (``ensure_jars`` fetches the jars once into
the icefield cache) and Java 17. A missing piece fails the tests with the command to run; nothing
is skipped.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from stack.spark import SparkNotInstalled, import_pyspark, spark_session_for_project

from icefield import Project, load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.query import run_query
from icefield.write.compact import compact_table

pytestmark = [
    pytest.mark.spark,
    pytest.mark.timeout(900),
    # pyspark leaves the sockets of its JVM round trips (collect, py4j) to the garbage collector.
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(r"ignore:unclosed <socket\.socket:ResourceWarning"),
]

CATALOG = "icefield"
COLUMNS = ("id", "kind", "amount", "day", "ts")
Row = tuple[Any, ...]


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _csv(rows: list[Row]) -> str:
    lines = [",".join(COLUMNS)]
    for r in rows:
        lines.append(f"{r[0]},{r[1]},{r[2]!r},{r[3].isoformat()},{r[4].isoformat()}")
    return "\n".join(lines) + "\n"


def _row(i: int, kind: str, amount: float) -> Row:
    return (i, kind, amount, dt.date(2026, 11, 1 + i % 28), dt.datetime(2026, 11, 1, 12, 0, i % 60))


BASE = [_row(i, "xyz"[i % 3], i * 1.5) for i in range(1, 21)]


def _pipeline(root: Path, name: str, table: str, merge_mode: str | None = None) -> None:
    props = f", properties: {{write.merge.mode: {merge_mode}}}" if merge_mode else ""
    _write(
        root,
        f"pipelines/{name}.yaml",
        f"name: {name}\n"
        f"source: {{type: files, path: 'data/{name}/*.csv', format: csv, file_column: null}}\n"
        f"target: {{table: {table}, mode: merge, keys: [id]{props}}}\n",
    )
    _write(root, f"data/{name}/a.csv", _csv(BASE))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project on the embedded default: SQLite catalog ``icefield`` under .icefield/, local warehouse."""
    root = tmp_path_factory.mktemp("spark") / "proj"
    _write(root, "icefield.yaml", "name: sparkshare\n")
    _pipeline(root, "ev", "raw.ev")
    _pipeline(root, "cow", "raw.ev_cow")
    _pipeline(root, "mor", "raw.ev_mor")
    _pipeline(root, "imor", "raw.ev_imor", merge_mode="merge-on-read")
    project = load_project(root)
    assert project.config.catalog.name == CATALOG
    open_catalog(project)  # icefield creates the catalog database (WAL) before Spark opens it
    return project


@pytest.fixture(scope="module")
def spark(project: Project) -> Iterator[Any]:
    """One local[2] session for the module, on the project's catalog; fails (never skips) if Spark is missing."""
    try:
        import_pyspark()
        missing = None
    except SparkNotInstalled as e:
        missing = str(e)
    if missing:
        pytest.fail(f"the `spark` tests need pyspark 4.1 (CI installs it): {missing}", pytrace=False)
    session = spark_session_for_project(project, app="icefield-tests", memory="1g")
    try:
        yield session
    finally:
        session.stop()


def _spark_rows(spark: Any, table: str) -> list[Row]:
    return [tuple(r) for r in spark.sql(f"SELECT {', '.join(COLUMNS)} FROM {CATALOG}.{table} ORDER BY id").collect()]


def _iceberg_rows(project: Project, table: str) -> list[Row]:
    data = open_catalog(project).load_table(table).scan().to_arrow().sort_by("id")
    return [tuple(r[c] for c in COLUMNS) for r in data.to_pylist()]


def _duckdb_rows(project: Project, table: str) -> list[Row]:
    data = run_query(project, f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY id")
    return [tuple(r[c] for c in COLUMNS) for r in data.to_pylist()]


def _changes_view(spark: Any, name: str, rows: list[Row]) -> None:
    schema = "id BIGINT, kind STRING, amount DOUBLE, day DATE, ts TIMESTAMP_NTZ"
    spark.createDataFrame(rows, schema).createOrReplaceTempView(name)


def test_spark_reads_what_icefield_wrote(project: Project, spark: Any) -> None:
    first = run_pipeline(project, "ev")
    assert first.rows_committed == len(BASE) and first.conserved
    assert _spark_rows(spark, "raw.ev") == _iceberg_rows(project, "raw.ev") == sorted(BASE)
    # The types Spark maps from icefield's schema: long, string, double, date, timestamp without zone.
    types = {f.name: f.dataType.simpleString() for f in spark.table(f"{CATALOG}.raw.ev").schema.fields}
    assert types == {"id": "bigint", "kind": "string", "amount": "double", "day": "date", "ts": "timestamp_ntz"}

    # A second icefield commit is visible to Spark at once (the Spark catalog cache is off).
    more = [_row(i, "w", -float(i)) for i in (5, 21)]
    _write(project.root, "data/ev/b.csv", _csv(more))
    second = run_pipeline(project, "ev")
    assert second.rows_committed == 2
    expected = sorted({r[0]: r for r in BASE + more}.values())
    assert _spark_rows(spark, "raw.ev") == _iceberg_rows(project, "raw.ev") == expected
    assert spark.sql(f"SELECT count(*) FROM {CATALOG}.raw.ev.snapshots").collect()[0][0] == 2


@pytest.mark.parametrize("mode", ["copy-on-write", "merge-on-read"])
def test_spark_merge_is_read_by_icefield(project: Project, spark: Any, mode: str) -> None:
    name = "cow" if mode == "copy-on-write" else "mor"
    table = f"raw.ev_{name}"
    assert run_pipeline(project, name).rows_committed == len(BASE)
    spark.sql(
        f"ALTER TABLE {CATALOG}.{table} SET TBLPROPERTIES "
        f"('write.merge.mode'='{mode}', 'write.update.mode'='{mode}', 'write.delete.mode'='{mode}')"
    )
    changes = [_row(i, "u", 1000.0 + i) for i in (2, 7, 19)] + [_row(i, "n", -1.0 * i) for i in (30, 31)]
    _changes_view(spark, f"changes_{name}", changes)
    spark.sql(f"""
        MERGE INTO {CATALOG}.{table} t USING changes_{name} s ON t.id = s.id
        WHEN MATCHED THEN UPDATE SET *
        WHEN NOT MATCHED THEN INSERT *
    """)
    expected = sorted({r[0]: r for r in BASE + changes}.values())
    assert _iceberg_rows(project, table) == expected
    assert _duckdb_rows(project, table) == expected  # icefield's SQL reader
    assert _spark_rows(spark, table) == expected

    tbl = open_catalog(project).load_table(table)
    tasks = list(tbl.scan().plan_files())
    with_deletes = [t for t in tasks if t.delete_files]
    if mode == "merge-on-read":
        assert with_deletes, "Spark's merge-on-read MERGE wrote no delete files: the test lost its point"
    else:
        assert not with_deletes
    # Spark's commit kept icefield's position (table properties live in metadata): nothing is reloaded.
    assert f"icefield.state.{name}" in tbl.metadata.properties
    assert run_pipeline(project, name).snapshots == []

    # icefield merges on top of Spark's files (and delete files); every reader agrees afterwards.
    later = [_row(i, "i", 0.5 * i) for i in (2, 3, 30, 40)]
    _write(project.root, f"data/{name}/b.csv", _csv(later))
    res = run_pipeline(project, name)
    assert res.rows_committed == len(later) and res.conserved
    expected = sorted({r[0]: r for r in BASE + changes + later}.values())
    assert _iceberg_rows(project, table) == expected
    assert _duckdb_rows(project, table) == expected
    assert _spark_rows(spark, table) == expected


def test_icefield_merge_on_read_is_read_by_spark(project: Project, spark: Any) -> None:
    """icefield's merge-on-read merges (file-scoped position delete files) read the same in Spark,
    pyiceberg and DuckDB; Spark's merge-on-read MERGE on top of them, and icefield's after that, too."""
    table = "raw.ev_imor"
    assert run_pipeline(project, "imor").rows_committed == len(BASE)
    changes = [_row(i, "u", 100.0 + i) for i in (2, 7, 19)] + [_row(i, "n", 1.0 * i) for i in (30, 31)]
    _write(project.root, "data/imor/b.csv", _csv(changes))
    res = run_pipeline(project, "imor")
    assert res.rows_committed == len(changes) and res.conserved
    tbl = open_catalog(project).load_table(table)
    summary = tbl.current_snapshot().summary  # type: ignore[union-attr]
    assert summary["added-position-deletes"] == "3" and "deleted-data-files" not in summary.additional_properties, "marked, not rewritten"
    expected = sorted({r[0]: r for r in BASE + changes}.values())
    assert _spark_rows(spark, table) == _iceberg_rows(project, table) == _duckdb_rows(project, table) == expected

    spark.sql(f"ALTER TABLE {CATALOG}.{table} SET TBLPROPERTIES ('write.update.mode'='merge-on-read', 'write.delete.mode'='merge-on-read')")
    theirs = [_row(i, "s", 7.0 * i) for i in (2, 3, 40)]
    _changes_view(spark, "changes_imor", theirs)
    spark.sql(f"""
        MERGE INTO {CATALOG}.{table} t USING changes_imor s ON t.id = s.id
        WHEN MATCHED THEN UPDATE SET *
        WHEN NOT MATCHED THEN INSERT *
    """)
    expected = sorted({r[0]: r for r in BASE + changes + theirs}.values())
    assert _spark_rows(spark, table) == _iceberg_rows(project, table) == _duckdb_rows(project, table) == expected

    later = [_row(i, "i", 0.25 * i) for i in (2, 3, 7, 50)]
    _write(project.root, "data/imor/c.csv", _csv(later))
    assert run_pipeline(project, "imor").rows_committed == len(later)
    expected = sorted({r[0]: r for r in BASE + changes + theirs + later}.values())
    assert _spark_rows(spark, table) == _iceberg_rows(project, table) == _duckdb_rows(project, table) == expected
    tasks = list(open_catalog(project).load_table(table).scan().plan_files())
    assert all(len(t.delete_files) <= 1 for t in tasks), "a data file keeps one delete file: the older one is replaced"

    # icefield's compaction folds icefield's and Spark's deletes into new files; Spark reads the same rows
    # and sees a replace snapshot.
    res = compact_table(open_catalog(project), table, sort_by=["id"])
    assert res.rows == len(expected) and res.files_removed == len(tasks) and res.rows_purged > 0
    after = list(open_catalog(project).load_table(table).scan().plan_files())
    assert len(after) < len(tasks) and not any(t.delete_files for t in after)
    assert _spark_rows(spark, table) == _iceberg_rows(project, table) == _duckdb_rows(project, table) == expected
    ops = [r[0] for r in spark.sql(f"SELECT operation FROM {CATALOG}.{table}.snapshots ORDER BY committed_at").collect()]
    assert ops[-1] == "replace"


def test_concurrent_commits_from_both_engines(project: Project, spark: Any) -> None:
    """Spark and pyiceberg commit to the same table at the same time through the one SQLite file:
    no commit is lost (optimistic concurrency on ``metadata_location``) and no lock error escapes."""
    n = 6
    # Both engines read the same retry settings from the table; 4 retries (the default) can run out
    # when every commit races another one.
    spark.sql(
        f"CREATE TABLE {CATALOG}.raw.both (id BIGINT, who STRING) USING iceberg "
        "TBLPROPERTIES ('commit.retry.num-retries'='20')"
    )
    errors: list[BaseException] = []

    def icefield_side() -> None:
        try:
            table = open_catalog(project).load_table("raw.both")
            for i in range(n):
                table.refresh()
                table.append(pa.table({"id": pa.array([1000 + i], pa.int64()), "who": ["pyiceberg"]}))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    worker = threading.Thread(target=icefield_side)
    worker.start()
    try:
        for i in range(n):
            spark.sql(f"INSERT INTO {CATALOG}.raw.both VALUES ({i}, 'spark')")
    finally:
        worker.join(timeout=600)
    assert not errors, f"pyiceberg commits failed beside Spark's: {errors!r}"
    counts = dict(spark.sql(f"SELECT who, count(*) FROM {CATALOG}.raw.both GROUP BY who").collect())
    assert counts == {"spark": n, "pyiceberg": n}
    scanned = open_catalog(project).load_table("raw.both").scan().to_arrow()
    assert scanned.num_rows == 2 * n
    # The catalog file is still in WAL mode after Java's connections (WAL is persistent).
    con = sqlite3.connect(project.state_dir / "catalog.db")
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def test_spark_reads_a_copy_on_write_rewrite_of_dictionary_columns(project: Project, spark: Any) -> None:
    """A copy-on-write merge reads a string column stored dictionary-encoded as an Arrow dictionary and
    writes it back as it is (no Arrow schema in the file): Spark, pyiceberg and DuckDB read the rewritten
    file and the files beside it alike."""
    import pyarrow.parquet as pq

    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.write import TableWriter

    n = 20_000
    kinds = ["placed", "paid", "shipped", "delivered"]

    def rows(ids: range, kind: Any) -> pa.Table:
        return pa.table({"id": pa.array(list(ids), pa.int64()), "kind": [kind(i) for i in ids], "note": [f"n{i % 7}" for i in ids]})

    catalog = open_catalog(project)
    writer = TableWriter(catalog, TargetConfig(table="raw.dict_cow", mode="merge", keys=["id"]), "dict_cow", LocalEngine())
    writer.commit(rows(range(n), lambda i: kinds[i % 4]), "load", None, "r")
    writer.commit(rows(range(n, 2 * n), lambda i: kinds[i % 4]), "load2", None, "r")
    first = {t.file.file_path for t in writer.load().scan().plan_files()}
    writer.commit(rows(range(0, n, 100), lambda i: "refunded"), "merge", None, "r")
    table = writer.load()
    rewritten = [t.file.file_path for t in table.scan().plan_files() if t.file.file_path not in first]
    assert len(rewritten) == 1
    meta = pq.read_metadata(rewritten[0].removeprefix("file://"))
    assert b"ARROW:schema" not in (meta.metadata or {})
    assert "RLE_DICTIONARY" in meta.row_group(0).column(1).encodings

    expected = sorted([(i, "refunded" if i % 100 == 0 else kinds[i % 4], f"n{i % 7}") for i in range(n)]
                      + [(i, kinds[i % 4], f"n{i % 7}") for i in range(n, 2 * n)])
    spark_rows = [tuple(r) for r in spark.sql(f"SELECT id, kind, note FROM {CATALOG}.raw.dict_cow ORDER BY id").collect()]
    assert spark_rows == expected
    scanned = table.scan().to_arrow().sort_by("id")
    assert list(zip(*(scanned.column(c).to_pylist() for c in ("id", "kind", "note")), strict=True)) == expected
    duck = run_query(project, "SELECT id, kind, note FROM raw.dict_cow ORDER BY id")
    assert [tuple(r.values()) for r in duck.to_pylist()] == expected


# ------------------------------------------------------------------ other engines' writes (issue 13, interop)


def _with_pipeline(project: Project, name: str, body: str, files: dict[str, str]) -> Project:
    _write(project.root, f"pipelines/{name}.yaml", f"name: {name}\n{body}")
    for rel, text in files.items():
        _write(project.root, f"data/{name}/{rel}", text)
    return load_project(project.root)


def test_a_spark_delete_and_insert_during_an_icefield_merge_are_kept(
    project: Project, spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/reliability.md B6 (interop finding D1, r3): while an icefield copy-on-write merge of id 10 is between
    its plan and its commit, Spark deletes id 5 of the file the merge rewrites (merge-on-read: a position
    delete file), then inserts a row. icefield's commit conflicts and it replans: id 5 stays deleted, the insert
    stays, id 10 has its one new version, in every reader."""
    from icefield.testing import failpoints

    table = "raw.b6"
    project = _with_pipeline(
        project, "b6",
        "source: {type: files, path: 'data/b6/*.csv', format: csv, file_column: null}\n"
        f"target: {{table: {table}, mode: merge, keys: [id]}}\n",
        {"a.csv": _csv(BASE)},
    )
    assert run_pipeline(project, "b6").rows_committed == len(BASE)
    # Snapshot isolation: Spark's insert alone does not make the merge replan; only the delete can.
    spark.sql(
        f"ALTER TABLE {CATALOG}.{table} SET TBLPROPERTIES ('write.delete.mode'='merge-on-read', "
        "'write.merge.isolation-level'='snapshot', 'write.update.isolation-level'='snapshot', "
        "'write.delete.isolation-level'='snapshot')"
    )
    inserted = _row(99, "s", 9.5)
    hits: dict[str, int] = {}
    real = failpoints.hit

    def hit(name: str) -> None:
        hits[name] = hits.get(name, 0) + 1
        if name == "before-commit" and hits[name] == 1:
            spark.sql(f"DELETE FROM {CATALOG}.{table} WHERE id = 5")
            spark.sql(
                f"INSERT INTO {CATALOG}.{table} VALUES ({inserted[0]}, '{inserted[1]}', {inserted[2]}, "
                f"DATE '{inserted[3].isoformat()}', TIMESTAMP_NTZ '{inserted[4].isoformat(sep=' ')}')"
            )
        real(name)

    monkeypatch.setattr(failpoints, "hit", hit)
    failpoints.arm()
    merged = _row(10, "m", 123.0)
    _write(project.root, "data/b6/b.csv", _csv([merged]))
    res = run_pipeline(project, "b6")

    assert res.rows_committed == 1
    expected = sorted([r for r in BASE if r[0] not in (5, 10)] + [merged, inserted])
    assert _spark_rows(spark, table) == _iceberg_rows(project, table) == _duckdb_rows(project, table) == expected
    assert hits["before-commit"] == 2, "icefield's first commit conflicted and it replanned"
    ops = [tuple(r) for r in spark.sql(f"SELECT operation, summary['added-position-deletes'] FROM {CATALOG}.{table}.snapshots ORDER BY committed_at").collect()]
    assert ops[-3][0] == "delete" and ops[-3][1] == "1", f"Spark's DELETE was not merge-on-read: {ops}"


def test_icefield_merges_into_a_spark_table_with_identifier_fields(project: Project, spark: Any) -> None:
    """Interop finding D2: a Spark table with ``id BIGINT NOT NULL`` and ``SET IDENTIFIER FIELDS id`` is a
    merge target; the key stays required and the identifier field stays."""
    table = "spk.items"
    spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {CATALOG}.spk")
    spark.sql(
        f"CREATE TABLE {CATALOG}.{table} (id BIGINT NOT NULL, kind STRING, amount DOUBLE, day DATE, ts TIMESTAMP_NTZ) "
        "USING iceberg TBLPROPERTIES ('format-version'='2')"
    )
    spark.sql(f"ALTER TABLE {CATALOG}.{table} SET IDENTIFIER FIELDS id")
    _changes_view(spark, "items_seed", BASE[:3])
    spark.sql(f"INSERT INTO {CATALOG}.{table} SELECT * FROM items_seed")
    changes = [_row(2, "u", 2.5), _row(30, "n", 3.0)]
    project = _with_pipeline(
        project, "items",
        "source: {type: files, path: 'data/items/*.csv', format: csv, file_column: null}\n"
        f"target: {{table: {table}, mode: merge, keys: [id]}}\n",
        {"a.csv": _csv(changes)},
    )
    res = run_pipeline(project, "items")

    assert res.rows_committed == 2 and res.conserved
    schema = open_catalog(project).load_table(table).schema()
    assert schema.find_field("id").required and schema.identifier_field_names() == {"id"}
    expected = sorted({r[0]: r for r in BASE[:3] + changes}.values())
    assert _spark_rows(spark, table) == _iceberg_rows(project, table) == expected
    # Spark still sees its key as NOT NULL.
    assert not next(f for f in spark.table(f"{CATALOG}.{table}").schema.fields if f.name == "id").nullable


def test_a_table_with_equality_deletes_is_refused_with_the_spark_call_that_fixes_it(project: Project, spark: Any) -> None:
    """Interop finding D3: Spark applies an equality delete file; icefield refuses the table with a
    configuration error naming the Spark call to run, and that very call makes the table readable and
    mergeable by icefield again."""
    from icefield.errors import ConfigError
    from icefield.testing.iceberg import add_equality_deletes

    table = "raw.eq"
    project = _with_pipeline(
        project, "eq",
        "source: {type: files, path: 'data/eq/*.csv', format: csv, file_column: null}\n"
        f"target: {{table: {table}, mode: merge, keys: [id]}}\n",
        {"a.csv": _csv(BASE)},
    )
    assert run_pipeline(project, "eq").rows_committed == len(BASE)
    add_equality_deletes(open_catalog(project).load_table(table), "id", [3, 4])
    expected = [r for r in BASE if r[0] not in (3, 4)]
    assert _spark_rows(spark, table) == expected, "Spark applies the equality delete file"

    with pytest.raises(ConfigError, match=r"raw\.eq has equality delete files") as refused:
        run_query(project, f"SELECT count(*) FROM {table}")
    calls = str(refused.value).split("then rerun: ", 1)[1].split("; ")
    for call in calls:
        assert call.startswith(f"CALL {CATALOG}.system.rewrite_data_files(table => '{CATALOG}.{table}'"), call
        spark.sql(call)

    assert _iceberg_rows(project, table) == _duckdb_rows(project, table) == _spark_rows(spark, table) == expected
    more = [_row(3, "back", 1.0)]
    _write(project.root, "data/eq/b.csv", _csv(more))
    assert run_pipeline(project, "eq").rows_committed == 1
    assert _spark_rows(spark, table) == _duckdb_rows(project, table) == sorted(expected + more)


def test_an_overwrite_after_spark_adds_a_partition_field_replaces_the_day(project: Project, spark: Any) -> None:
    """Interop finding D5: ``mode: overwrite`` by day; Spark adds ``bucket(4, id)``; a reload of one day
    leaves that day with the reloaded rows only, in Spark too."""
    table = "raw.daily"
    days = [dt.date(2026, 11, d) for d in (1, 2, 3)]
    first = [(i, "d1", 1.0, days[i % 3], dt.datetime(2026, 11, 1, 12, 0, i % 60)) for i in range(1, 31)]
    project = _with_pipeline(
        project, "daily",
        "source: {type: files, path: 'data/daily/*.csv', format: csv, file_column: null}\n"
        f"target: {{table: {table}, mode: overwrite, partition_by: [day]}}\n",
        {"a.csv": _csv(first)},
    )
    assert run_pipeline(project, "daily").rows_committed == 30
    spark.sql(f"ALTER TABLE {CATALOG}.{table} ADD PARTITION FIELD bucket(4, id)")
    # ids 100-107 fall in all four buckets: every old row of that day is in a partition the reload touches
    reload = [(i, "d2", 2.0, days[1], dt.datetime(2026, 11, 1, 12, 0, i % 60)) for i in range(100, 108)]
    _write(project.root, "data/daily/b.csv", _csv(reload))
    assert run_pipeline(project, "daily").rows_committed == len(reload)

    counts = {(r[0], r[1]): r[2] for r in spark.sql(f"SELECT day, kind, count(*) FROM {CATALOG}.{table} GROUP BY day, kind").collect()}
    assert counts == {(days[0], "d1"): 10, (days[1], "d2"): 8, (days[2], "d1"): 10}
