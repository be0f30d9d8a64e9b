"""The Spark direction of the interop matrix (issue 17, item 4; marker ``spark``).

After each kind of Spark 4.1 write to a table an icefield merge pipeline feeds, the next ``icefield run``
lands every new row exactly once, maps renamed columns by field id, honours Spark's delete files and keeps
its position (it commits the new file's rows only, and an idle rerun commits nothing). Each case keeps a
pure-Python oracle of the table (``tests/interop.py``, shared with the Trino direction in
``test_trino.py``) and compares it with DuckDB (``icefield sql``) and Spark after Spark's change and after
icefield's run. Spark writes: INSERT; UPDATE and DELETE merge-on-read (position delete files) and
copy-on-write; MERGE INTO with a delete clause; ADD COLUMN; RENAME COLUMN; int -> bigint and
float -> double; ADD and DROP PARTITION FIELD; ``rewrite_data_files``, ``expire_snapshots`` and
``remove_orphan_files``. A table with equality delete files makes the run fail with the Spark call that
fixes it; after that call the pending file lands. Concurrent writers: an icefield merge loop beside a
Spark ``MERGE INTO`` loop lose no update (each key ends with the last committed update, replayed from the
snapshot log), and the loser of a race retries or fails with a conflict error.

Covered in ``test_spark_shared_catalog.py`` and not repeated here: Spark's ``MERGE INTO ... UPDATE SET * /
INSERT *`` in both write modes followed by an icefield merge (``test_spark_merge_is_read_by_icefield``);
a Spark merge-on-read MERGE on top of icefield's own position deletes, then icefield's compaction
(``test_icefield_merge_on_read_is_read_by_spark``); a Spark DELETE and INSERT between an icefield merge's
plan and its commit (``test_a_spark_delete_and_insert_during_an_icefield_merge_are_kept``); identifier
fields; ``icefield sql`` refusing equality deletes; an overwrite pipeline after ADD PARTITION FIELD.

One local[2] Spark session for the module, on the project's embedded SQLite catalog. Needs
``pip install -r requirements/spark.txt``, Maven and Java 17; a missing piece fails the tests with the
command to run; nothing is skipped.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from stack.spark import SparkNotInstalled, import_pyspark, spark_session_for_project
from tests.interop import SCHEMA, MergeCase, Row, next_run
from tests.interop import row as base_row

from icefield import Project, load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.query import run_query

pytestmark = [
    pytest.mark.spark,
    pytest.mark.timeout(900),
    # pyspark leaves the sockets of its JVM round trips (collect, py4j) to the garbage collector.
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(r"ignore:unclosed <socket\.socket:ResourceWarning"),
]

CATALOG = "icefield"
NS = "mx"
# Trino's schema plus a float column, for Spark's float -> double.
SPARK_SCHEMA = SCHEMA.append(pa.field("ratio", pa.float32()))


def _row(i: int, kind: str = "a") -> Row:
    return {**base_row(i, kind), "ratio": i * 0.25}  # exact in float32


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project on the embedded default: SQLite catalog ``icefield`` under .icefield/, local warehouse."""
    root = tmp_path_factory.mktemp("spark-matrix") / "proj"
    _write(root, "icefield.yaml", f"name: sparkmatrix\nnamespace: {NS}\n")
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
    session = spark_session_for_project(project, app="icefield-interop-matrix", memory="1g")
    try:
        yield session
    finally:
        session.stop()


class Case(MergeCase):
    """One table ``mx.<table>`` fed by the merge pipeline ``<table>``, its oracle and the Spark session."""

    def __init__(self, project: Project, table: str, spark: Any) -> None:
        super().__init__(project.root, table, pipeline=table, data=project.root / "data" / table, schema=SPARK_SCHEMA, make_row=_row)
        self.project = project
        self.spark = spark
        self.name = f"{CATALOG}.{NS}.{table}"

    def sql(self, statement: str) -> list[Row]:
        return [r.asDict() for r in self.spark.sql(statement).collect()]

    def content(self) -> dict[int, int]:
        """How many live files of each content kind (0 data, 1 position deletes, 2 equality deletes) the
        table holds, as Spark's ``files`` metadata table reports them."""
        return {r["content"]: r["n"] for r in self.sql(f"SELECT content, count(*) AS n FROM {self.name}.files GROUP BY content")}

    def check(self) -> None:
        """The table equals the oracle, through DuckDB (icefield sql) and through Spark."""
        columns = self.columns()
        query = f"SELECT {', '.join(columns)} FROM {NS}.{self.table} ORDER BY id"
        self.assert_rows(run_query(self.project, query).to_pylist(), columns, "duckdb")
        self.assert_rows(self.sql(query.replace(f"{NS}.{self.table}", self.name)), columns, "spark")

    def step(self, ids: range, kind: str = "n") -> None:
        """The next icefield run lands exactly this file (:func:`next_run`), an idle rerun commits nothing,
        and the table equals the oracle."""
        next_run(self, ids, kind)
        assert run_pipeline(load_project(self.root), self.pipeline).snapshots == [], "an idle rerun committed"
        self.check()

    def modes(self, mode: str) -> None:
        self.spark.sql(
            f"ALTER TABLE {self.name} SET TBLPROPERTIES "
            f"('write.merge.mode'='{mode}', 'write.update.mode'='{mode}', 'write.delete.mode'='{mode}')"
        )


@pytest.fixture
def case(project: Project, spark: Any) -> Case:
    table = f"t_{uuid.uuid4().hex[:10]}"
    _write(
        project.root,
        f"pipelines/{table}.yaml",
        f"name: {table}\nsource: {{type: files, path: 'data/{table}/*.parquet', file_column: null}}\n"
        f"target: {{table: {NS}.{table}, mode: merge, keys: [id]}}\n",
    )
    (project.root / "data" / table).mkdir(parents=True)
    c = Case(load_project(project.root), table, spark)
    assert c.land([_row(i) for i in range(1, 21)]) == 20
    c.check()
    return c


def _values(r: Row) -> str:
    return f"({r['id']}, '{r['kind']}', {r['qty']}, {r['amount']}D, DATE '{r['day'].isoformat()}', CAST({r['ratio']} AS FLOAT))"


def test_after_spark_insert(case: Case) -> None:
    new = [_row(100, "s"), _row(101, "s")]
    case.spark.sql(f"INSERT INTO {case.name} VALUES {', '.join(_values(r) for r in new)}")
    case.oracle.update({r["id"]: r for r in new})
    case.check()
    case.step(range(200, 205))


@pytest.mark.parametrize("mode", ["merge-on-read", "copy-on-write"])
def test_after_spark_update_and_delete(case: Case, mode: str) -> None:
    case.modes(mode)
    case.spark.sql(f"UPDATE {case.name} SET kind = 'su', amount = amount + 1 WHERE id <= 5")
    for i in range(1, 6):
        case.oracle[i] = {**case.oracle[i], "kind": "su", "amount": case.oracle[i]["amount"] + 1}
    case.spark.sql(f"DELETE FROM {case.name} WHERE id % 3 = 0")
    for i in [k for k in case.oracle if k % 3 == 0]:
        del case.oracle[i]
    content = case.content()
    if mode == "merge-on-read":
        assert content.get(1, 0) >= 2 and 2 not in content, content  # position deletes, never equality deletes
    else:
        assert set(content) == {0}, content  # rewritten data files only
    case.check()
    case.step(range(300, 304))
    # A key Spark deleted comes back once when the source sends it again.
    assert case.land([_row(6, "back")]) == 1
    case.check()


def test_after_spark_merge_with_a_delete_clause(case: Case) -> None:
    case.modes("merge-on-read")
    case.spark.sql(
        f"MERGE INTO {case.name} t USING (SELECT * FROM VALUES (1L, 'm'), (7L, 'm'), (500L, 'm') AS v(id, kind)) s "
        "ON t.id = s.id "
        "WHEN MATCHED AND s.id = 7 THEN DELETE "
        "WHEN MATCHED THEN UPDATE SET kind = s.kind "
        "WHEN NOT MATCHED THEN INSERT (id, kind, qty, amount, day, ratio) "
        "VALUES (s.id, s.kind, 5, 0.5D, DATE '2026-11-05', CAST(0.75 AS FLOAT))"
    )
    case.oracle[1] = {**case.oracle[1], "kind": "m"}
    del case.oracle[7]
    case.oracle[500] = {"id": 500, "kind": "m", "qty": 5, "amount": 0.5, "day": dt.date(2026, 11, 5), "ratio": 0.75}
    assert case.content().get(1, 0) >= 1
    case.check()
    case.step(range(600, 603))


def test_after_spark_adds_a_column(case: Case) -> None:
    case.spark.sql(f"ALTER TABLE {case.name} ADD COLUMN note STRING")
    case.spark.sql(f"UPDATE {case.name} SET note = 'hello' WHERE id = 3")
    case.add_column("note")
    case.oracle[3]["note"] = "hello"
    case.check()
    # The source has no ``note``: new rows get null, and so does a key the source sends again (a merge
    # replaces the row); the row Spark gave a note keeps it.
    case.step(range(700, 703))
    assert case.oracle[2]["note"] is None and case.oracle[3]["note"] == "hello"


def test_after_spark_renames_a_column(case: Case) -> None:
    """Spark renames ``kind`` (field id 2) to ``category``: the old data files still say ``kind`` and are read
    by field id under the new name, by DuckDB and by Spark. The source still sends ``kind``, which no
    longer names a table column: under the default contract (evolve) it lands as a new column ``kind``,
    and ``category`` is null in the rows the source sends; every row lands once."""
    kind_id = open_catalog(case.project).load_table(f"{NS}.{case.table}").schema().find_field("kind").field_id
    case.spark.sql(f"ALTER TABLE {case.name} RENAME COLUMN kind TO category")
    case.rename_column("kind", "category")
    case.check()
    case.add_column("kind")
    case.step(range(800, 803))
    assert case.oracle[1]["category"] == "a" and case.oracle[2] == {**_row(2, "upd"), "category": None}
    schema = open_catalog(case.project).load_table(f"{NS}.{case.table}").schema()
    assert schema.find_field("category").field_id == kind_id and schema.find_field("kind").field_id != kind_id


def test_after_spark_widens_types(case: Case) -> None:
    case.spark.sql(f"ALTER TABLE {case.name} ALTER COLUMN qty TYPE BIGINT")
    case.spark.sql(f"ALTER TABLE {case.name} ALTER COLUMN ratio TYPE DOUBLE")
    types = {f.name: f.dataType.simpleString() for f in case.spark.table(case.name).schema.fields}
    assert types["qty"] == "bigint" and types["ratio"] == "double"
    case.check()
    # The source still sends int and float: icefield writes them into the wider columns.
    case.step(range(900, 903))
    schema = open_catalog(case.project).load_table(f"{NS}.{case.table}").schema()
    assert str(schema.find_field("qty").field_type) == "long" and str(schema.find_field("ratio").field_type) == "double"


def test_after_spark_adds_and_drops_a_partition_field(case: Case) -> None:
    def data_specs() -> dict[int, int]:
        return {r["spec_id"]: r["n"] for r in case.sql(f"SELECT spec_id, count(*) AS n FROM {case.name}.files WHERE content = 0 GROUP BY spec_id")}

    case.spark.sql(f"ALTER TABLE {case.name} ADD PARTITION FIELD day")
    new = _row(1000, "p")
    case.spark.sql(f"INSERT INTO {case.name} VALUES {_values(new)}")
    case.oracle[1000] = new
    case.check()
    case.step(range(1100, 1106))
    # icefield writes its new files under the table's current spec (Spark's, partitioned by day).
    by_day = data_specs()
    assert max(by_day) == 1 and by_day[1] >= 1 + 5, by_day

    case.spark.sql(f"ALTER TABLE {case.name} DROP PARTITION FIELD day")
    current = open_catalog(case.project).load_table(f"{NS}.{case.table}").spec()
    assert current.is_unpartitioned()  # Iceberg reuses the table's first spec (id 0): the same fields
    case.check()
    before = data_specs().get(current.spec_id, 0)
    case.step(range(1200, 1206))
    # icefield's new files (and the rewrites of day-partitioned files it merges into) go under the
    # unpartitioned spec again.
    after = data_specs()
    assert after.get(current.spec_id, 0) > before, (by_day, after)


def _backdate(root: Path, days: float) -> None:
    stamp = time.time() - days * 86400
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (stamp, stamp))


def test_after_spark_rewrite_expire_and_orphan_removal(case: Case) -> None:
    case.modes("merge-on-read")
    case.step(range(1200, 1203))
    case.spark.sql(f"DELETE FROM {case.name} WHERE id IN (5, 6)")
    del case.oracle[5], case.oracle[6]
    assert case.content().get(1, 0) >= 1

    case.spark.sql(
        f"CALL {CATALOG}.system.rewrite_data_files(table => '{case.name}', "
        "options => map('rewrite-all', 'true', 'remove-dangling-deletes', 'true'))"
    )
    # One data file, the deletes applied (Iceberg's dangling-delete removal skips an unpartitioned table:
    # the folded delete file stays listed until a later rewrite, and applies to nothing).
    assert case.content().get(0) == 1, case.content()
    case.check()
    case.step(range(1300, 1303))

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    case.spark.sql(
        f"CALL {CATALOG}.system.expire_snapshots(table => '{case.name}', "
        f"older_than => TIMESTAMP '{now.isoformat(sep=' ')}', retain_last => 1)"
    )
    assert len(case.sql(f"SELECT snapshot_id FROM {case.name}.snapshots")) == 1
    case.check()
    case.step(range(1400, 1403))

    # Spark refuses an orphan cutoff under 24 h: every file is backdated 3 days, the cutoff is 25 h ago.
    location = Path(open_catalog(case.project).load_table(f"{NS}.{case.table}").location().removeprefix("file://"))
    orphan = location / "data" / "00000-orphan.parquet"
    pq.write_table(pa.table({"x": [1]}), orphan)
    _backdate(location, 3)
    cutoff = now - dt.timedelta(hours=25)
    removed = case.sql(
        f"CALL {CATALOG}.system.remove_orphan_files(table => '{case.name}', older_than => TIMESTAMP '{cutoff.isoformat(sep=' ')}')"
    )
    assert [Path(r["orphan_file_location"].removeprefix("file:").lstrip("/")).name for r in removed] == [orphan.name]
    assert not orphan.exists()
    live = [r["file_path"] for r in case.sql(f"SELECT file_path FROM {case.name}.all_files")]
    assert live and all(Path("/" + p.removeprefix("file:").lstrip("/")).exists() for p in live)
    case.check()
    case.step(range(1500, 1503))
    # The earlier files were not read again: only the newest file's rows were committed by the last run.
    assert case.land([_row(1600)]) == 1
    case.check()


def test_a_table_with_equality_deletes_refuses_the_next_run_with_the_call_to_run(case: Case) -> None:
    """Spark applies equality delete files (written by Flink or Iceberg's Java API); icefield cannot, so its
    next merge fails with the Spark calls that fold them in and commits nothing. After those calls, the
    rerun lands the pending file: every row once."""
    from icefield.errors import ConfigError
    from icefield.testing.iceberg import add_equality_deletes

    add_equality_deletes(open_catalog(case.project).load_table(f"{NS}.{case.table}"), "id", [3, 4])
    del case.oracle[3], case.oracle[4]
    assert case.content().get(2) == 1
    case.assert_rows(case.sql(f"SELECT * FROM {case.name} ORDER BY id"), case.columns(), "spark")

    rows = [_row(i, "n") for i in (2, 4, 30)]
    pq.write_table(pa.Table.from_pylist(rows, schema=SPARK_SCHEMA), case.source_dir() / "eq.parquet")
    with pytest.raises(ConfigError, match=rf"table {NS}\.{case.table} has equality delete files") as refused:
        run_pipeline(load_project(case.root), case.pipeline)
    failed = refused.value.result  # type: ignore[attr-defined]
    assert failed.status == "failed" and failed.rows_committed == 0 and failed.pending is not None
    calls = str(refused.value).split("then rerun: ", 1)[1].split("; ")
    for call in calls:
        assert call.startswith(f"CALL {CATALOG}.system.rewrite_data_files(table => '{CATALOG}.{NS}.{case.table}'"), call
        case.spark.sql(call)
    assert 2 not in case.content()

    res = run_pipeline(load_project(case.root), case.pipeline)
    assert res.status == "success" and res.rows_committed == len(rows), res.error
    case.oracle.update({r["id"]: r for r in rows})
    case.check()


# ------------------------------------------------------------------ concurrent writers

SPARK_DDL = "id BIGINT, kind STRING, qty INT, amount DOUBLE, day DATE, ratio FLOAT"
SPARK_CONFLICT = ("ValidationException", "CommitFailedException", "conflicting", "missing data files")


@pytest.mark.parametrize("mode", ["copy-on-write", "merge-on-read"])
def test_an_icefield_merge_loop_beside_a_spark_merge_loop_loses_no_update(case: Case, mode: str) -> None:
    """icefield runs (a merge of keys 1-5, the even keys and one new key, tagged ``i<n>``) in a thread, while
    Spark runs ``MERGE INTO`` (keys 1-5, multiples of 3 and one new key, tagged ``s<n>``) in a loop on the
    same table. Every attempt either commits or fails with a conflict error (icefield replans by itself;
    the Spark loop retries a conflicting MERGE up to 4 times, as a scheduler would); the snapshot log holds
    each committed operation exactly once (the tag it brought), and the table at every snapshot, and at
    the end in DuckDB and Spark, equals the replay of the committed operations in the log's order: no
    update is lost."""
    from icefield.errors import CommitConflictError

    case.modes(mode)
    case.spark.sql(f"ALTER TABLE {case.name} SET TBLPROPERTIES ('commit.retry.num-retries'='20')")
    base = {k: dict(r) for k, r in case.oracle.items()}
    ops: dict[str, list[Row]] = {}
    committed: set[str] = set()
    failures: list[str] = []
    spark_done = threading.Event()
    errors: list[BaseException] = []

    def icefield_side() -> None:
        try:
            n = 0
            while n < 4 or (not spark_done.is_set() and n < 24):
                tag = f"i{n}"
                ops[tag] = [_row(k, tag) for k in sorted({*range(1, 6), *range(2, 21, 2), 100 + n})]
                path = case.source_dir() / f"{tag}.parquet"
                pq.write_table(pa.Table.from_pylist(ops[tag], schema=SPARK_SCHEMA), path)
                try:
                    res = run_pipeline(load_project(case.root), case.pipeline)
                except CommitConflictError as e:
                    failures.append(f"{tag}: {e}")
                    path.unlink()  # never landed: the next run must not pick it up
                else:
                    assert res.rows_committed == len(ops[tag]), res
                    committed.add(tag)
                n += 1
                # Bursts and quiet windows: a Spark MERGE (2-4 s here) that starts in a burst loses to an
                # icefield commit; one that starts in a window commits, and icefield's next run replans.
                time.sleep(0.2 if n % 2 else 5.0)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    worker = threading.Thread(target=icefield_side)
    worker.start()
    try:
        for n in range(5):
            tag = f"s{n}"
            ops[tag] = [_row(k, tag) for k in sorted({*range(1, 6), *range(3, 21, 3), 200 + n})]
            case.spark.createDataFrame([tuple(r.values()) for r in ops[tag]], SPARK_DDL).createOrReplaceTempView("changes")
            for _attempt in range(4):
                try:
                    case.spark.sql(
                        f"MERGE INTO {case.name} t USING changes s ON t.id = s.id "
                        "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
                    )
                except Exception as e:
                    cause = next((line for line in str(e).splitlines() if any(w in line for w in SPARK_CONFLICT)), None)
                    assert cause, e
                    failures.append(f"{tag}: {cause.strip()}")
                else:
                    committed.add(tag)
                    break
    finally:
        spark_done.set()
        worker.join(timeout=600)
    assert not errors, errors

    # The log's order: each snapshot after the initial load brings exactly one operation's tag.
    table = open_catalog(case.project).load_table(f"{NS}.{case.table}")
    snapshots = sorted(table.snapshots(), key=lambda s: s.sequence_number)[1:]
    replay = base
    seen: set[str] = {"a"}
    order: list[str] = []
    for snap in snapshots:
        rows = table.scan(snapshot_id=snap.snapshot_id).to_arrow().to_pylist()
        new = {r["kind"] for r in rows} - seen
        assert len(new) == 1, (snap.snapshot_id, snap.summary, new)
        tag = new.pop()
        seen.add(tag)
        order.append(tag)
        replay = {**replay, **{r["id"]: r for r in ops[tag]}}
        at = {r["id"]: r for r in rows}
        assert len(rows) == len(at) == len(replay), (tag, len(rows), len(replay))
        lost = sorted(k for k in replay if at[k]["kind"] != replay[k]["kind"])
        assert not lost, f"after {order}: keys {lost} do not hold their last committed update"
    assert sorted(order) == sorted(committed), (order, committed, failures)
    case.oracle = replay
    case.check()
    assert any(t.startswith("s") for t in order) and any(t.startswith("i") for t in order), (order, failures)
    print(f"{mode}: commit order {' '.join(order)}; {len(failures)} conflicts: {[f[:160] for f in failures]}")  # shown with -s
