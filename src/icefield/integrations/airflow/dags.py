"""The DAG factory: an icefield project's Airflow DAGs, generated from the project plan.

:func:`project_dags` loads the project (a path given, else ``ICEFIELD_PROJECT``, else the Airflow Variable
``icefield_project``) and builds:

- ``icefield_<project>``: one task per pipeline and per model, wired as the plan orders them (a node runs
  after the nodes whose tables it reads), on the project's schedule (``scheduling.schedule`` of
  ``icefield.yaml``; none: triggered only);
- ``icefield_<project>__<pipeline>`` for each pipeline whose own schedule differs from the project's: that
  pipeline alone, on its schedule. The project DAG's nodes that read its table run with the project DAG and
  read what it last landed;
- ``icefield_<project>__maintenance``: per pipeline, compaction of its table then snapshot expiry, on
  ``maintenance_schedule`` (``@daily`` unless given, or ``ICEFIELD_MAINTENANCE_SCHEDULE``).

A task runs its node with :func:`icefield.integrations.airflow.tasks.run_node` (failure semantics there).
Each pipeline's ``scheduling:`` gives its task's owner, retries, retry delay and backoff, maximum delay and
timeout; the DAG's tags are the union of its pipelines' tags and ``icefield``; a DAG whose pipelines set
``deadline`` gets Airflow's deadline alert at the earliest of them after the run's logical date, calling
:func:`icefield.integrations.airflow.alerts.deadline_missed`. Pipelines reading the same source share a
pool (:mod:`icefield.integrations.airflow.pools`; create the pools with ``python -m
icefield.integrations.airflow pools``).

Parsing is cheap: the project is loaded without the checks that need the data engine, and nothing here
imports pyarrow or pyiceberg or opens the catalog; the tasks do, when they run.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, BaseOperator

from icefield.config.scheduling import airflow_args
from icefield.errors import ConfigError
from icefield.integrations.airflow.pools import pool_name

if TYPE_CHECKING:
    from icefield.config import Project
    from icefield.pipeline.plan import Node

PROJECT_ENV = "ICEFIELD_PROJECT"
PROJECT_VARIABLE = "icefield_project"
MAINTENANCE_ENV = "ICEFIELD_MAINTENANCE_SCHEDULE"
START_DATE = datetime(2020, 1, 1, tzinfo=UTC)
"""The DAGs' start date: runs are never caught up (``catchup=False``); a backfill may go back to here."""

_UNSET = object()


class IcefieldNodeOperator(BaseOperator):
    """Runs one node of an icefield project plan (see :mod:`icefield.integrations.airflow.tasks`).

    A pipeline with a ``window:`` runs a date-window backfill of the DAG run's data interval when the run
    is a backfill (``airflow backfill create``) or its conf says ``{"window": true}``; otherwise its regular
    incremental run."""

    ui_color = "#d6ecf3"

    def __init__(self, *, project_path: str, node_id: str, profile: str | None = None, windowed: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project_path = project_path
        self.icefield_node = node_id
        self.profile = profile
        self.windowed = windowed

    def execute(self, context: Any) -> dict[str, Any]:
        from icefield.integrations.airflow.tasks import run_node

        return run_node(self.project_path, self.icefield_node, profile=self.profile, window=self._window(context))

    def _window(self, context: Any) -> tuple[datetime, datetime] | None:
        if not self.windowed:
            return None
        run = context.get("dag_run")
        conf = (getattr(run, "conf", None) or {}) if run is not None else {}
        run_type = getattr(run, "run_type", None)
        run_type = str(getattr(run_type, "value", run_type) or "")
        if not (run_type == "backfill" or conf.get("window")):
            return None
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if start is None or end is None or start >= end:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(
                f"{self.icefield_node}: a window run needs a DAG run with a data interval (got {start}..{end}); "
                "give the DAG a schedule, or run `icefield run NAME --window START..END`"
            )
        return start, end


class IcefieldMaintenanceOperator(BaseOperator):
    """Compacts or expires the snapshots of one pipeline's table (:func:`~icefield.integrations.airflow.tasks.maintain_table`)."""

    ui_color = "#ece3f5"

    def __init__(self, *, project_path: str, pipeline: str, operation: str, profile: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project_path = project_path
        self.icefield_pipeline = pipeline
        self.operation = operation
        self.profile = profile

    def execute(self, context: Any) -> dict[str, Any]:
        from icefield.integrations.airflow.tasks import maintain_table

        return maintain_table(self.project_path, self.icefield_pipeline, self.operation, profile=self.profile)


def project_path(given: str | os.PathLike[str] | None = None) -> str:
    """The project folder: ``given``, else ``ICEFIELD_PROJECT``, else the Airflow Variable ``icefield_project``."""
    if given is not None:
        return str(Path(given).resolve())
    env = os.environ.get(PROJECT_ENV)
    if env:
        return str(Path(env).resolve())
    try:
        from airflow.sdk import Variable

        value = Variable.get(PROJECT_VARIABLE, default=None)
    except Exception:  # noqa: BLE001 - no Variable backend where the file is parsed: say what to set
        value = None
    if not value:
        raise ConfigError(
            f"no icefield project for the DAG factory: set the environment variable {PROJECT_ENV} (or the Airflow "
            f"Variable {PROJECT_VARIABLE}) to the project folder (the one holding icefield.yaml)"
        )
    return str(Path(value).resolve())


def dag_id_part(name: str) -> str:
    """``name`` as a part of a DAG or task id (letters, digits, ``_``, ``-``, ``.``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def task_id(node: Node) -> str:
    """The task id of a plan node: the pipeline's name, or ``model.<name>`` (as run results name them)."""
    return dag_id_part(node.name if node.kind == "pipeline" else f"model.{node.name}")


def project_dags(
    project: str | os.PathLike[str] | None = None,
    *,
    profile: str | None = None,
    maintenance_schedule: Any = _UNSET,
) -> dict[str, DAG]:
    """The DAGs of the project (see the module docs), by DAG id."""
    from icefield.config import load_project
    from icefield.pipeline.plan import build_plan

    path = project_path(project)
    loaded = load_project(path, profile=profile, engine_checks=False)
    plan = build_plan(loaded)
    base = f"icefield_{dag_id_part(loaded.config.name)}"
    default = airflow_args(loaded.config.scheduling).get("schedule")

    groups: dict[str, list[Node]] = {base: []}
    schedules: dict[str, Any] = {base: default}
    for node in plan:
        if node.kind == "pipeline":
            own = airflow_args(loaded.pipelines[node.name].scheduling).get("schedule", default)
            if own != default:
                dag_id = f"{base}__{dag_id_part(node.name)}"
                groups[dag_id], schedules[dag_id] = [node], own
                continue
        groups[base].append(node)

    dags = {dag_id: _dag(loaded, path, profile, dag_id, nodes, schedules[dag_id]) for dag_id, nodes in groups.items() if nodes}
    if maintenance_schedule is _UNSET:
        maintenance_schedule = os.environ.get(MAINTENANCE_ENV) or "@daily"
    if loaded.pipelines:
        maint = f"{base}__maintenance"
        dags[maint] = _maintenance_dag(loaded, path, profile, maint, maintenance_schedule)
    return dags


def timetable(schedule: Any) -> Any:
    """Airflow's schedule for an icefield ``schedule`` (as :func:`~icefield.config.scheduling.airflow_args` gives
    it): a cron expression or a periodic preset runs at the end of its data interval (Airflow's
    ``CronDataIntervalTimetable``), an interval every that long (``DeltaDataIntervalTimetable``), so each run
    has the interval [previous run, this run) a window backfill loads; ``@once``, ``@continuous`` and None
    as Airflow reads them."""
    from airflow.sdk import CronDataIntervalTimetable, DeltaDataIntervalTimetable

    if schedule is None or schedule in ("@once", "@continuous"):
        return schedule
    if isinstance(schedule, timedelta):
        return DeltaDataIntervalTimetable(schedule)
    return CronDataIntervalTimetable(schedule, timezone="UTC")


def _task_args(loaded: Project, node: Node) -> dict[str, Any]:
    if node.kind != "pipeline":
        return dict(airflow_args(loaded.config.scheduling)["default_args"])
    args = dict(airflow_args(loaded.pipelines[node.name].scheduling)["default_args"])
    if "retry_exponential_backoff" in args:
        # Airflow 3.3 takes a multiplier: the delay doubles at each attempt (0: constant).
        args["retry_exponential_backoff"] = 2.0 if args["retry_exponential_backoff"] else 0
    return args


def _dag(loaded: Project, path: str, profile: str | None, dag_id: str, nodes: list[Node], schedule: Any) -> DAG:
    pipes = [loaded.pipelines[n.name] for n in nodes if n.kind == "pipeline"]
    tags = {"icefield", dag_id_part(loaded.config.name)}
    deadlines: list[timedelta] = []
    for p in pipes:
        args = airflow_args(p.scheduling)
        tags.update(args.get("tags", []))
        if "deadline" in args:
            deadlines.append(args["deadline"])
    if not pipes:
        project_deadline = airflow_args(loaded.config.scheduling).get("deadline")
        if project_deadline is not None:
            deadlines.append(project_deadline)
    names = [n.id for n in nodes]
    dag = DAG(
        dag_id=dag_id,
        schedule=timetable(schedule),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,  # one run at a time lands a table; the next waits its turn
        tags=sorted(tags),
        description=f"icefield project {loaded.config.name}: " + ", ".join(names),
        doc_md=_doc(loaded, path, nodes),
        deadline=_deadline(min(deadlines), [n.name for n in nodes if n.kind == "pipeline"]) if deadlines else None,
    )
    tasks: dict[str, BaseOperator] = {}
    for node in nodes:
        extra: dict[str, Any] = {}
        if node.kind == "pipeline":
            extra["pool"] = pool_name(loaded.pipelines[node.name])
        tasks[node.id] = IcefieldNodeOperator(
            task_id=task_id(node),
            dag=dag,
            project_path=path,
            node_id=node.id,
            profile=profile,
            windowed=node.kind == "pipeline" and getattr(loaded.pipelines[node.name], "window", None) is not None,
            doc_md=f"`icefield run {node.name}`: writes `{node.table}`" + (f"; reads {', '.join(node.reads)}" if node.reads else ""),
            **_task_args(loaded, node),
            **extra,
        )
    for node in nodes:
        for up in node.upstream:
            if up in tasks:
                tasks[up] >> tasks[node.id]
    return dag


def _deadline(after: timedelta, pipelines: list[str]) -> Any:
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    from icefield.integrations.airflow.alerts import ALERTS_FILE_ENV, WEBHOOK_ENV, deadline_missed

    kwargs: dict[str, Any] = {"pipelines": pipelines, "deadline": str(after)}
    for key, env in (("alerts_file", ALERTS_FILE_ENV), ("webhook", WEBHOOK_ENV)):
        if os.environ.get(env):
            kwargs[key] = os.environ[env]
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_LOGICAL_DATE, interval=after, callback=AsyncCallback(deadline_missed, kwargs=kwargs))


def _maintenance_dag(loaded: Project, path: str, profile: str | None, dag_id: str, schedule: Any) -> DAG:
    dag = DAG(
        dag_id=dag_id,
        schedule=timetable(schedule),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=sorted({"icefield", "maintenance", dag_id_part(loaded.config.name)}),
        description=f"icefield project {loaded.config.name}: compaction and snapshot expiry of its pipelines' tables",
    )
    for name, pipe in sorted(loaded.pipelines.items()):
        owner = airflow_args(pipe.scheduling)["default_args"].get("owner")
        extra = {"owner": owner} if owner else {}
        compact = IcefieldMaintenanceOperator(
            task_id=f"{dag_id_part(name)}.compact", dag=dag, project_path=path, pipeline=name, operation="compact", profile=profile, **extra
        )
        expire = IcefieldMaintenanceOperator(
            task_id=f"{dag_id_part(name)}.expire", dag=dag, project_path=path, pipeline=name, operation="expire", profile=profile, **extra
        )
        compact >> expire
    return dag


def _doc(loaded: Project, path: str, nodes: list[Node]) -> str:
    lines = [f"# icefield project `{loaded.config.name}`", "", f"Project folder: `{path}`. Generated from the project plan "
             "(`icefield plan` shows it); edit the pipeline files, not this DAG.", "", "| task | writes | after |", "|---|---|---|"]
    for n in nodes:
        lines.append(f"| {task_id(n)} | {n.table} | {', '.join(u.split(' ', 1)[1] for u in n.upstream) or '-'} |")
    return "\n".join(lines)
