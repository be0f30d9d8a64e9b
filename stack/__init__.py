"""Native launchers for the real services that tests and users run on 127.0.0.1.

``python -m stack up|down|status`` drives them from the shell; tests use the fixtures in
``tests/integration/conftest.py``. Adding a service is one module with one
:class:`Service` subclass plus one line in :data:`SERVICES`.
"""

from __future__ import annotations

from typing import Any

from .airflow import AIRFLOW_PORT_DEFAULT, AIRFLOW_PORT_ENV, Airflow
from .base import (
    STACK_DIR_ENV,
    Service,
    ServiceNotInstalled,
    ServiceStartError,
    ServiceStatus,
    StackError,
    default_base_dir,
)
from .connect import CONNECT_PORT_DEFAULT, CONNECT_PORT_ENV, Connect
from .hive_metastore import HIVE_PORT_DEFAULT, HIVE_PORT_ENV, HiveMetastore
from .kafka import (
    KAFKA_CONTROLLER_PORT_DEFAULT,
    KAFKA_CONTROLLER_PORT_ENV,
    KAFKA_PORT_DEFAULT,
    KAFKA_PORT_ENV,
    Kafka,
)
from .postgres import PG_PORT_DEFAULT, PG_PORT_ENV, Postgres
from .prometheus import (
    ALERTMANAGER_PORT_DEFAULT,
    ALERTMANAGER_PORT_ENV,
    PROMETHEUS_PORT_DEFAULT,
    PROMETHEUS_PORT_ENV,
    PUSHGATEWAY_PORT_DEFAULT,
    PUSHGATEWAY_PORT_ENV,
    Alertmanager,
    Prometheus,
    Pushgateway,
)
from .rest_catalog import REST_PORT_DEFAULT, REST_PORT_ENV, RestCatalog
from .s3 import S3_PORT_DEFAULT, S3_PORT_ENV, S3Account, S3Server, S3Settings
from .spark_cluster import (
    SPARK_PORT_DEFAULT,
    SPARK_PORT_ENV,
    SPARK_UI_PORT_DEFAULT,
    SPARK_UI_PORT_ENV,
    SPARK_WORKER_UI_PORT_DEFAULT,
    SPARK_WORKER_UI_PORT_ENV,
    SparkCluster,
)
from .trino import TRINO_PORT_DEFAULT, TRINO_PORT_ENV, Trino
from .victorialogs import VICTORIALOGS_PORT_DEFAULT, VICTORIALOGS_PORT_ENV, VictoriaLogs

SERVICES: dict[str, type[Service]] = {
    Postgres.name: Postgres,
    Kafka.name: Kafka,
    Connect.name: Connect,
    RestCatalog.name: RestCatalog,
    HiveMetastore.name: HiveMetastore,
    S3Server.name: S3Server,
    SparkCluster.name: SparkCluster,
    Trino.name: Trino,
    Airflow.name: Airflow,
    Pushgateway.name: Pushgateway,
    Alertmanager.name: Alertmanager,
    Prometheus.name: Prometheus,
    VictoriaLogs.name: VictoriaLogs,
}
"""Registered services by name, in start order (``down`` stops them in reverse)."""


def get_service(name: str, **options: Any) -> Service:
    """Return a launcher for the service called ``name``, built with ``options``.

    Raises :class:`StackError` naming the known services if ``name`` is not registered.
    """
    try:
        cls = SERVICES[name]
    except KeyError:
        raise StackError(f"unknown service {name!r}; known: {', '.join(SERVICES)}") from None
    return cls(**options)


__all__ = [
    "AIRFLOW_PORT_DEFAULT",
    "AIRFLOW_PORT_ENV",
    "ALERTMANAGER_PORT_DEFAULT",
    "ALERTMANAGER_PORT_ENV",
    "Airflow",
    "Alertmanager",
    "CONNECT_PORT_DEFAULT",
    "CONNECT_PORT_ENV",
    "Connect",
    "HIVE_PORT_DEFAULT",
    "HIVE_PORT_ENV",
    "HiveMetastore",
    "KAFKA_CONTROLLER_PORT_DEFAULT",
    "KAFKA_CONTROLLER_PORT_ENV",
    "KAFKA_PORT_DEFAULT",
    "KAFKA_PORT_ENV",
    "Kafka",
    "PG_PORT_DEFAULT",
    "PG_PORT_ENV",
    "PROMETHEUS_PORT_DEFAULT",
    "PROMETHEUS_PORT_ENV",
    "PUSHGATEWAY_PORT_DEFAULT",
    "PUSHGATEWAY_PORT_ENV",
    "Prometheus",
    "Pushgateway",
    "REST_PORT_DEFAULT",
    "REST_PORT_ENV",
    "SERVICES",
    "RestCatalog",
    "S3_PORT_DEFAULT",
    "S3_PORT_ENV",
    "S3Account",
    "S3Server",
    "S3Settings",
    "SPARK_PORT_DEFAULT",
    "SPARK_PORT_ENV",
    "SPARK_UI_PORT_DEFAULT",
    "SPARK_UI_PORT_ENV",
    "SPARK_WORKER_UI_PORT_DEFAULT",
    "SPARK_WORKER_UI_PORT_ENV",
    "SparkCluster",
    "STACK_DIR_ENV",
    "Postgres",
    "Service",
    "ServiceNotInstalled",
    "ServiceStartError",
    "ServiceStatus",
    "StackError",
    "TRINO_PORT_DEFAULT",
    "TRINO_PORT_ENV",
    "Trino",
    "VICTORIALOGS_PORT_DEFAULT",
    "VICTORIALOGS_PORT_ENV",
    "VictoriaLogs",
    "default_base_dir",
    "get_service",
]
