"""The Spark standalone cluster launcher without starting it: its ports, its commands (127.0.0.1 only, the
pyspark package's own classes) and its state when nothing runs. The cluster itself runs in
tests/integration/test_spark_cluster.py (marker ``spark``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from stack import SERVICES, get_service
from stack.base import StackError
from stack.spark_cluster import (
    MASTER_CLASS,
    SPARK_PORT_ENV,
    SPARK_UI_PORT_ENV,
    SPARK_WORKER_UI_PORT_ENV,
    WORKER_CLASS,
    SparkCluster,
)


def test_the_cluster_is_the_stack_service_named_spark(tmp_path: Path) -> None:
    assert SERVICES["spark"] is SparkCluster
    cluster = get_service("spark", base_dir=tmp_path)
    assert isinstance(cluster, SparkCluster) and cluster.state_dir == tmp_path / "spark"


def test_ports_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SPARK_PORT_ENV, "27077")
    monkeypatch.setenv(SPARK_UI_PORT_ENV, "27080")
    monkeypatch.setenv(SPARK_WORKER_UI_PORT_ENV, "27081")
    cluster = SparkCluster(tmp_path)
    assert cluster.url() == "spark://127.0.0.1:27077"
    assert cluster.ui_url == "http://127.0.0.1:27080"
    assert cluster.ports() == (27077, 27080, 27081, 27082)
    monkeypatch.setenv(SPARK_PORT_ENV, "spark")
    with pytest.raises(StackError, match=SPARK_PORT_ENV):
        SparkCluster(tmp_path)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="one web UI port per worker"):
        SparkCluster(tmp_path, worker_ui_ports=(1,))
    with pytest.raises(StackError, match="out of range"):
        SparkCluster(tmp_path, port=70000)
    with pytest.raises(StackError, match="at least one worker"):
        SparkCluster(tmp_path, workers=0)


def test_commands_bind_127_0_0_1_and_run_the_pyspark_jars(tmp_path: Path) -> None:
    cluster = SparkCluster(tmp_path, port=27077, ui_port=27080, worker_ui_ports=(27081, 27082))
    # What install() finds (pyspark's folder, Java 17), faked: the unit tests need neither.
    home = tmp_path / "pyspark"
    (home / "jars").mkdir(parents=True)
    cluster._spark_home, cluster._java = home, "/usr/lib/jvm/java-17/bin/java"
    master = cluster.master_command()
    assert master[master.index("-cp") + 1].endswith("/pyspark/jars/*")
    assert master[master.index(MASTER_CLASS):] == [MASTER_CLASS, "--host", "127.0.0.1", "--port", "27077", "--webui-port", "27080"]
    assert "-Dspark.master.rest.enabled=false" in master
    worker = cluster.worker_command(2)
    args = worker[worker.index(WORKER_CLASS) + 1:]
    assert args[0] == "spark://127.0.0.1:27077"
    assert dict(zip(args[1::2], args[2::2], strict=True)) == {
        "--host": "127.0.0.1", "--cores": "1", "--memory": "1g", "--webui-port": "27082",
        "--work-dir": str(tmp_path / "spark" / "work" / "worker-2"),
    }
    env = cluster.environment()
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["SPARK_SCALA_VERSION"] == "2.13"  # without it every executor fails ("Cannot find any build directories")
    assert env["SPARK_HOME"] == str(home) and env["JAVA_HOME"] == "/usr/lib/jvm/java-17"


def test_nothing_running_reads_as_stopped(tmp_path: Path) -> None:
    cluster = SparkCluster(tmp_path, port=27077, ui_port=27080, worker_ui_ports=(27081, 27082))
    assert not cluster.status().running and cluster.status().pid is None
    assert cluster.stop() is False
    (cluster.state_dir).mkdir(parents=True)
    cluster.master.pid_file.write_text("999999999\n")  # a pid that cannot exist
    assert not cluster.status().running
    assert cluster.stop() is False and not cluster.master.pid_file.exists()
    assert cluster.master_state(timeout=0.5) is None and cluster.alive_workers() == 0
