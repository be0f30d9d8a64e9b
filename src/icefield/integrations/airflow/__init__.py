"""Airflow runs icefield projects: a DAG factory built from the project plan (:mod:`.dags`), the tasks'
failure semantics (:mod:`.tasks`), deadline alerts (:mod:`.alerts`) and pools per source (:mod:`.pools`).

Needs the ``airflow`` extra (``pip install 'icefield[airflow]' -c constraints/airflow-3.3.2-py3.11.txt``).
Only this package imports Airflow. The DAG file Airflow parses is ``airflow/dags/iceberg_etl_dag.py``::

    from icefield.integrations.airflow import project_dags
    globals().update(project_dags())   # the project in ICEFIELD_PROJECT (or the Variable icefield_project)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from icefield.integrations.airflow.dags import project_dags

__all__ = ["project_dags"]


def __getattr__(name: str) -> Any:
    if name == "project_dags":
        from icefield.integrations.airflow.dags import project_dags

        return project_dags
    raise AttributeError(f"module 'icefield.integrations.airflow' has no attribute {name!r}")
