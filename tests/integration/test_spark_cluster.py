"""A Spark standalone cluster (one master, two workers, from ``stack/``) writes icefield's tables (marker ``spark``).

The cluster is started natively from the pyspark package on 127.0.0.1 (its own state dir and free
ports, never the developer's ``make stack-up`` cluster). A driver connects to it with the Iceberg
runtime and Java's ``JdbcCatalog`` on the project's own catalog database (``stack.spark``); its
executors, one on each worker, write an Iceberg table and, after a shuffle between them, an
aggregate of it. icefield (pyiceberg and ``icefield sql``'s reader) then reads both, compared with
what Python computes from the same formula. The cluster's own JSON shows where the executors ran.

A project with ``engine: spark`` and ``spark.master: spark://127.0.0.1:<port>`` runs an append and a merge with
deletes through ``icefield run`` (a process of its own, one application per run) and lands the rows the local
engine lands from the same files; each run's application had an executor on each worker that finished tasks.

Needs ``pip install -r requirements/spark.txt``, Maven (the Iceberg runtime jars are fetched once)
and Java 17: a missing piece fails the tests with the command to run; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack.base import LOCALHOST
from stack.spark import SparkNotInstalled, import_pyspark, spark_session_for_project
from stack.spark_cluster import SparkCluster

from icefield import Project, load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.query import run_query

pytestmark = [
    pytest.mark.spark,
    pytest.mark.timeout(600),
    # pyspark leaves the sockets of its JVM round trips (collect, py4j) to the garbage collector.
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(r"ignore:unclosed <socket\.socket:ResourceWarning"),
]

CLUSTER_READY_TIMEOUT = 180.0
ROWS = 20_000
PARTITIONS = 8
KINDS = 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A running master and two workers (1 core, 1 GiB each) in a temporary state dir on free ports."""
    try:
        import_pyspark()
        missing = None
    except SparkNotInstalled as e:
        missing = str(e)
    if missing:
        pytest.fail(f"the `spark` tests need pyspark 4.1 (CI installs it): {missing}", pytrace=False)
    cluster = SparkCluster(
        tmp_path_factory.mktemp("stack"),
        port=_free_port(),
        ui_port=_free_port(),
        worker_ui_ports=(_free_port(), _free_port()),
    )
    t0 = time.monotonic()
    cluster.up(timeout=CLUSTER_READY_TIMEOUT)
    print(f"spark cluster (master + 2 workers) ready in {time.monotonic() - t0:.1f}s")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project on the embedded default: SQLite catalog ``icefield`` under .icefield/, local warehouse.

    On one machine the executors reach the driver's ``file://`` warehouse as it is.
    """
    root = tmp_path_factory.mktemp("sparkcluster") / "proj"
    root.mkdir(parents=True)
    (root / "icefield.yaml").write_text("name: sparkcluster\n")
    project = load_project(root)
    open_catalog(project)  # icefield creates the catalog database (WAL) before Spark opens it
    return project


@pytest.fixture(scope="module")
def spark(project: Project, spark_cluster: SparkCluster) -> Iterator[Any]:
    """A driver on the cluster whose Iceberg catalog is the project's; one executor per worker."""
    session = spark_session_for_project(
        project,
        app="icefield-cluster-test",
        memory="1g",
        master=spark_cluster.url(),
        conf={"spark.executor.memory": "1g", "spark.executor.cores": "1", "spark.cores.max": "2"},
    )
    try:
        yield session
    finally:
        session.stop()


def _kind(i: int) -> str:
    return f"k{i % KINDS}"


def _amount(i: int) -> float:
    return (i % 1000) * 0.25


def test_cluster_writes_an_iceberg_table_that_icefield_reads(
    project: Project, spark: Any, spark_cluster: SparkCluster
) -> None:
    assert spark.sparkContext.master == spark_cluster.url()
    spark.sql("CREATE NAMESPACE IF NOT EXISTS icefield.raw")
    rows = spark.range(0, ROWS, numPartitions=PARTITIONS).selectExpr(
        "id", f"concat('k', CAST(id % {KINDS} AS STRING)) AS kind", "(id % 1000) * 0.25 AS amount"
    )
    rows.writeTo("icefield.raw.events").using("iceberg").create()
    # A shuffle between the two executors, then a second table.
    spark.sql(
        "CREATE TABLE icefield.raw.by_kind USING iceberg AS "
        "SELECT kind, count(*) AS n, sum(amount) AS total FROM icefield.raw.events GROUP BY kind"
    )

    # icefield reads what the cluster wrote: pyiceberg's scan and `icefield sql`'s reader.
    catalog = open_catalog(project)
    events = catalog.load_table("raw.events")
    data = events.scan().to_arrow()
    assert data.num_rows == ROWS
    assert sorted(data.column("id").to_pylist()) == list(range(ROWS))
    assert {r["id"]: (r["kind"], r["amount"]) for r in data.to_pylist()} == {
        i: (_kind(i), _amount(i)) for i in range(ROWS)
    }
    # Each write task wrote its own data files: the table's files came from several tasks.
    assert len(list(events.scan().plan_files())) >= 2

    expected: dict[str, tuple[int, float]] = {}
    for i in range(ROWS):
        n, total = expected.get(_kind(i), (0, 0.0))
        expected[_kind(i)] = (n + 1, total + _amount(i))
    got = run_query(project, "SELECT kind, n, total FROM raw.by_kind ORDER BY kind").to_pylist()
    assert {r["kind"]: (r["n"], r["total"]) for r in got} == expected
    assert catalog.load_table("raw.by_kind").scan().to_arrow().num_rows == KINDS


def test_the_application_ran_executors_on_both_workers(
    project: Project, spark: Any, spark_cluster: SparkCluster
) -> None:
    """The master lists the application with one core from each worker; each worker ran an executor of
    it, and each of those executors finished tasks of the job."""
    spark.range(0, ROWS, numPartitions=PARTITIONS).selectExpr("id % 10 AS k").groupBy("k").count().collect()
    app_id = spark.sparkContext.applicationId

    master = spark_cluster.master_state()
    assert master is not None, f"the master's JSON at {spark_cluster.ui_url}/json/ does not answer"
    assert [w["state"] for w in master["workers"]] == ["ALIVE", "ALIVE"]
    apps = {a["id"]: a for a in master["activeapps"]}
    assert app_id in apps, f"{app_id} not among the master's active applications {list(apps)}"
    assert apps[app_id]["cores"] == 2  # one core per worker: only reachable with an executor on each

    for index in (1, 2):
        worker = spark_cluster.worker_state(index)
        assert worker is not None, f"worker {index}'s JSON at {spark_cluster.worker_ui_url(index)}/json/ does not answer"
        executors = [e for e in worker["executors"] if e["appid"] == app_id]
        assert len(executors) == 1, f"worker {index} runs {len(executors)} executors of {app_id}"
        stderr = Path(spark_cluster.work_dir(index)) / app_id / str(executors[0]["id"]) / "stderr"
        finished = stderr.read_text().count("Finished task")
        assert finished > 0, f"the executor on worker {index} finished no task; see {stderr}"


# ------------------------------------------------------------------ a pipeline on the cluster

PIPE_ROWS = 3_000
HEADER = "id,kind,amount,deleted\n"


def _pipeline_project(root: Path, engine: str, master: str) -> Project:
    """The same two files pipelines on ``engine``: ``app`` appends, ``mer`` merges by ``id`` with deletes."""
    root.mkdir(parents=True)
    (root / "icefield.yaml").write_text(
        f"name: onthecluster\nengine: {engine}\n"
        f"spark: {{master: '{master}', memory: 1g, "
        "conf: {spark.executor.memory: 1g, spark.executor.cores: '1', spark.cores.max: '2'}}\n"
    )
    (root / "pipelines").mkdir()
    (root / "pipelines" / "app.yaml").write_text(
        "name: app\nsource: {type: files, path: 'data/app/*.csv', format: csv}\ntarget: {table: raw.app}\n"
    )
    (root / "pipelines" / "mer.yaml").write_text(
        "name: mer\nsource: {type: files, path: 'data/mer/*.csv', format: csv, file_column: null}\n"
        "target: {table: raw.mer, mode: merge, keys: [id], delete_column: deleted}\n"
    )
    project = load_project(root)
    open_catalog(project)  # icefield creates the catalog database (WAL) before Spark opens it
    return project


def _feed(roots: list[Path], rel: str, rows: list[tuple[Any, ...]]) -> None:
    text = HEADER + "".join(",".join(str(v) for v in r) + "\n" for r in rows)
    for root in roots:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _table_rows(project: Project, table: str) -> list[tuple[Any, ...]]:
    data = open_catalog(project).load_table(table).scan().to_arrow()
    names = [c for c in data.column_names if not c.startswith("_")]
    return sorted(tuple(r[c] for c in names) for r in data.to_pylist())


def _run_cli(project: Project) -> dict[str, Any]:
    """``icefield run --json`` of every pipeline of ``project`` in a process of its own: its own driver (a process
    has one SparkContext, and this one's may be on another master or catalog)."""
    import icefield

    src = str(Path(icefield.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "icefield.cli", "--project", str(project.root), "run", "--json"],
        capture_output=True, text=True, env=env, timeout=480, check=False,
    )
    assert proc.returncode == 0, f"icefield run exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_a_pipeline_runs_on_the_cluster_as_on_the_local_engine(
    tmp_path: Path, spark_cluster: SparkCluster
) -> None:
    """``engine: spark`` with ``spark.master: spark://127.0.0.1:<port>``: ``icefield run`` of an append and a merge
    with deletes lands the rows the local engine lands, and the master ran the icefield application with an
    executor on each worker that finished tasks of it."""
    # The module's own driver (the `spark` fixture) holds both workers' cores while it lives: a second application
    # would wait for them. This test stops it, so it stays the module's last; a driver on another master (the
    # local[2] one of test_spark_engine.py) is left alone: `icefield run` starts its own in a process of its own.
    from pyspark.sql import SparkSession

    running = SparkSession.getActiveSession()
    if running is not None and running.sparkContext.master == spark_cluster.url():
        running.stop()

    projects = {e: _pipeline_project(tmp_path / e, e, spark_cluster.url()) for e in ("local", "spark")}
    roots = [p.root for p in projects.values()]
    _feed(roots, "data/app/a.csv", [(i, f"k{i % KINDS}", _amount(i), "false") for i in range(PIPE_ROWS)])
    _feed(roots, "data/mer/a.csv", [(i, f"k{i % KINDS}", _amount(i), "false") for i in range(PIPE_ROWS)])
    apps_before = {a["id"] for a in (spark_cluster.master_state() or {}).get("completedapps", [])}

    # The first run: an append and a first merge (all inserts). The second: more rows appended, and a merge
    # that updates, deletes (one key absent) and inserts.
    for step in (1, 2):
        if step == 2:
            _feed(roots, "data/app/b.csv", [(i, "b", 1.5, "false") for i in range(PIPE_ROWS, PIPE_ROWS + 500)])
            changes = [(i, "u", 2.0, "false") for i in range(0, 600, 3)]
            changes += [(i, "d", 0.0, "true") for i in range(1, 600, 3)] + [(10**9, "d", 0.0, "true")]
            changes += [(i, "n", 3.0, "false") for i in range(PIPE_ROWS, PIPE_ROWS + 200)]
            _feed(roots, "data/mer/b.csv", changes)
        local = run_pipeline(projects["local"], "app"), run_pipeline(projects["local"], "mer")
        assert all(r.status == "success" for r in local), [r.error for r in local]
        started = time.monotonic()
        doc = _run_cli(projects["spark"])
        print(f"icefield run on the cluster, step {step}: {time.monotonic() - started:.1f}s")
        assert doc["status"] == "ok", doc
        got = {r["pipeline"]: r for r in doc["results"]}
        assert [got[p]["status"] for p in ("app", "mer")] == ["success", "success"], doc
        for r in local:
            assert got[r.pipeline]["rows_committed"] == r.rows_committed, (got[r.pipeline], r)
        for table in ("raw.app", "raw.mer"):
            assert _table_rows(projects["spark"], table) == _table_rows(projects["local"], table), table
            head = open_catalog(projects["spark"]).load_table(table).current_snapshot()
            assert head is not None and head.summary is not None
            assert head.summary.additional_properties.get("engine-name") == "spark", "Spark's writer made the snapshot"

    assert len(_table_rows(projects["spark"], "raw.app")) == PIPE_ROWS + 500
    assert len(_table_rows(projects["spark"], "raw.mer")) == PIPE_ROWS - 200 + 200

    # The master ran one application per `icefield run`, named after the project, each with an executor on
    # each worker that finished tasks.
    master = spark_cluster.master_state()
    assert master is not None, f"the master's JSON at {spark_cluster.ui_url}/json/ does not answer"
    apps = [a for a in master["completedapps"] if a["id"] not in apps_before and a["name"] == "icefield-onthecluster"]
    assert len(apps) == 2, f"expected the two runs' applications among {master['completedapps']}"
    for app in apps:
        for index in (1, 2):
            folder = Path(spark_cluster.work_dir(index)) / app["id"]
            executors = sorted(folder.iterdir()) if folder.is_dir() else []
            assert len(executors) == 1, f"worker {index} ran {len(executors)} executors of {app['id']} ({folder})"
            finished = (executors[0] / "stderr").read_text().count("Finished task")
            assert finished > 0, f"the executor of {app['id']} on worker {index} finished no task; see {executors[0]}"
