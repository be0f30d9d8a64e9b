"""The Kubernetes manifests of deploy/k8s/spark, checked offline (no cluster): the ``SparkApplication``, its
spark-submit twin, the service account and the image agree with each other and with what ``stack/spark.py``
sets to share icefield's catalog with Spark."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from stack.spark import (
    CATALOG_EXTENSIONS,
    ICEBERG_VERSION,
    POSTGRES_JDBC,
    PYSPARK_REQUIREMENT,
    PYSPARK_SERIES,
    SQLITE_JDBC,
    catalog_conf,
)

from icefield.cli import cli

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s" / "spark"
CATALOG = "icefield"
JDBC_URL = "jdbc:postgresql://postgres.icefield.svc:5432/lake"
WAREHOUSE = "s3://lake/warehouse"


@pytest.fixture(scope="module")
def app() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((K8S / "sparkapplication.yaml").read_text()))
    assert len(docs) == 1
    return docs[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def submit() -> tuple[dict[str, str], list[str]]:
    """spark-submit.sh's ``--conf`` settings (plus master and name) and its application file and arguments."""
    text = (K8S / "spark-submit.sh").read_text()
    command = text[text.index("exec spark-submit"):].replace("\\\n", " ")
    argv = shlex.split(command.splitlines()[0])[2:]
    conf: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--conf":
            key, _, value = argv[i + 1].partition("=")
            conf[key] = value
            i += 2
        elif argv[i].startswith("--") and not rest:
            conf[argv[i]] = argv[i + 1]
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    return conf, rest


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod.get("env", [])}


def test_the_application_is_a_python_spark_41_application(app: dict[str, Any]) -> None:
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    assert app["kind"] == "SparkApplication"
    spec = app["spec"]
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    # The Spark of the image is the pyspark icefield pins (the Iceberg runtime fails on 4.2+).
    assert spec["sparkVersion"].startswith(PYSPARK_SERIES)
    assert spec["sparkVersion"] == PYSPARK_REQUIREMENT.split("==")[1]
    assert spec["image"] and ":" in spec["image"] and not spec["image"].endswith(":latest")
    assert spec["restartPolicy"]["type"] == "OnFailure"


def test_the_main_file_is_the_entry_the_image_ships_and_runs_an_icefield_command(app: dict[str, Any]) -> None:
    spec = app["spec"]
    main = spec["mainApplicationFile"]
    assert main.startswith("local:///")
    dockerfile = (K8S / "Dockerfile").read_text()
    assert f"COPY deploy/k8s/spark/run_pipeline.py {main.removeprefix('local://')}\n" in dockerfile
    assert "from icefield.__main__ import main" in (K8S / "run_pipeline.py").read_text()
    args = spec["arguments"]
    assert args[:2] == ["--project", "/opt/icefield/project"]
    assert "COPY ${PROJECT}/ /opt/icefield/project/" in dockerfile
    assert args[2] in cli.commands and args[2] == "run"


def test_the_catalog_settings_are_those_stack_spark_sets(app: dict[str, Any]) -> None:
    conf = app["spec"]["sparkConf"]
    expected = catalog_conf(CATALOG, JDBC_URL, WAREHOUSE)
    assert {k: conf.get(k) for k in expected} == expected
    assert conf["spark.sql.extensions"] == CATALOG_EXTENSIONS
    # Pods share no disk: the warehouse is object storage, read and written through Iceberg's S3FileIO.
    assert conf[f"spark.sql.catalog.{CATALOG}.warehouse"].startswith("s3://")
    assert conf[f"spark.sql.catalog.{CATALOG}.io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    assert all(isinstance(v, str) for v in conf.values()), "sparkConf values must be strings (quote booleans)"
    # No secret in the manifest: the catalog password reaches the driver from a Secret.
    assert not any("password" in k for k in conf)
    driver_env = _env(app["spec"]["driver"])
    assert driver_env["ICEFIELD__CATALOG__URI"] == {"secretKeyRef": {"name": "icefield-catalog", "key": "uri"}}
    assert driver_env["ICEFIELD__WAREHOUSE"] == WAREHOUSE
    assert driver_env["ICEFIELD__SPARK__MASTER"].startswith("k8s://https://kubernetes.default.svc")


def test_driver_and_executors_have_resources_and_storage_credentials(app: dict[str, Any]) -> None:
    driver, executor = app["spec"]["driver"], app["spec"]["executor"]
    for pod in (driver, executor):
        assert isinstance(pod["cores"], int) and pod["cores"] >= 1
        assert re.fullmatch(r"\d+[mg]", pod["memory"])
        env = _env(pod)
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= env.keys()
    assert executor["instances"] >= 2


def test_the_service_account_exists_and_may_manage_executor_pods(app: dict[str, Any]) -> None:
    account = app["spec"]["driver"]["serviceAccount"]
    namespace = app["metadata"]["namespace"]
    docs = {d["kind"]: d for d in yaml.safe_load_all((K8S / "rbac.yaml").read_text())}
    assert docs["ServiceAccount"]["metadata"] == {"name": account, "namespace": namespace}
    binding = docs["RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    assert binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    rules = docs["Role"]["rules"]
    assert any("pods" in r["resources"] and {"create", "delete", "watch"} <= set(r["verbs"]) for r in rules)


def test_spark_submit_submits_the_same_application(app: dict[str, Any], submit: tuple[dict[str, str], list[str]]) -> None:
    conf, rest = submit
    spec = app["spec"]
    assert conf["--master"].startswith("k8s://") and conf["--deploy-mode"] == "cluster"
    assert conf["--name"] == app["metadata"]["name"]
    assert rest == [spec["mainApplicationFile"], *spec["arguments"]]
    assert conf["spark.kubernetes.namespace"] == app["metadata"]["namespace"]
    assert conf["spark.kubernetes.container.image"] == spec["image"]
    assert conf["spark.kubernetes.authenticate.driver.serviceAccountName"] == spec["driver"]["serviceAccount"]
    for role in ("driver", "executor"):
        assert conf[f"spark.{role}.cores"] == str(spec[role]["cores"])
        assert conf[f"spark.{role}.memory"] == spec[role]["memory"]
        assert conf[f"spark.kubernetes.{role}.limit.cores"] == spec[role]["coreLimit"]
    assert conf["spark.executor.instances"] == str(spec["executor"]["instances"])
    assert {k: conf.get(k) for k in spec["sparkConf"]} == spec["sparkConf"]
    # The same environment, values and secret references alike.
    for role, plain, secret in (
        ("driver", "spark.kubernetes.driverEnv.", "spark.kubernetes.driver.secretKeyRef."),
        ("executor", "spark.executorEnv.", "spark.kubernetes.executor.secretKeyRef."),
    ):
        expected: dict[str, str] = {}
        for name, value in _env(spec[role]).items():
            if isinstance(value, dict):
                ref = value["secretKeyRef"]
                expected[secret + name] = f"{ref['name']}:{ref['key']}"
            else:
                expected[plain + name] = value
        got = {k: v for k, v in conf.items() if k.startswith((plain, secret))}
        assert got == expected, role


def test_the_image_carries_the_jar_versions_stack_spark_uses() -> None:
    dockerfile = (K8S / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.M))
    assert args["SPARK_VERSION"] == PYSPARK_REQUIREMENT.split("==")[1]
    assert args["ICEBERG_VERSION"] == ICEBERG_VERSION
    assert args["POSTGRES_JDBC_VERSION"] == POSTGRES_JDBC.rsplit(":", 1)[1]
    assert args["SQLITE_JDBC_VERSION"] == SQLITE_JDBC.rsplit(":", 1)[1]
    assert "iceberg-spark-runtime-4.1_2.13-${ICEBERG_VERSION}.jar /opt/spark/jars/" in dockerfile
    assert "iceberg-aws-bundle-${ICEBERG_VERSION}.jar /opt/spark/jars/" in dockerfile


def test_the_docs_show_the_spark_submit_script_as_shipped() -> None:
    script = (K8S / "spark-submit.sh").read_text()
    docs = (REPO / "docs" / "spark.md").read_text()
    command = script[script.index("exec spark-submit"):].removeprefix("exec ")
    assert command in docs, "docs/spark.md's spark-submit example differs from deploy/k8s/spark/spark-submit.sh"
