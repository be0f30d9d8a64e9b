"""The Airflow DAGs of an icefield project, generated from its plan (one task per pipeline and per model).

Set ICEFIELD_PROJECT (or the Airflow Variable icefield_project) to the project folder, and put this file
in Airflow's DAG folder. See docs/airflow.md.
"""

from icefield.integrations.airflow import project_dags

globals().update(project_dags())
