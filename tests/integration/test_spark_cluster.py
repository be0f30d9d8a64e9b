"""A Spark standalone cluster (one master, two workers, from ``stack/``) writes icefield's tables (marker ``spark``).

The cluster is started natively from the pyspark package on 127.0.0.1 (its own state dir and free
ports, never the developer's ``make stack-up`` cluster). A driver connects to it with the Iceberg
runtime and Java's ``JdbcCatalog`` on the project's own catalog database (``stack.spark``); its
executors, one on each worker, write an Iceberg table and, after a shuffle between them, an
aggregate of it. icefield (pyiceberg and ``icefield sql``'s reader) then reads both, compared with
what Python computes from the same formula. The cluster's own JSON shows where the executors ran.

Needs ``pip install -r requirements/spark.txt``, Maven (the Iceberg runtime jars are fetched once)
and Java 17: a missing piece fails the tests with the command to run; nothing is skipped.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack.base import LOCALHOST
from stack.spark import SparkNotInstalled, import_pyspark, spark_session_for_project
from stack.spark_cluster import SparkCluster

from icefield import Project, load_project
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
