"""What an Airflow task runs: one node of the project plan (a pipeline or a model) or one table's
maintenance, with icefield's errors mapped to Airflow's failure semantics.

- :class:`~icefield.errors.TransientError` (exit status 75: a lost connection, a busy server, a
  commit conflict, another run writing the table) is raised as an ``AirflowException``: the task is retried
  with its ``retries`` and backoff. Retrying is safe: a batch is landed once whatever the number of attempts
  (batch ids, skip-if-committed), and a batch killed in flight stays pending for the next attempt.
- A batch held by its gates fails the task at once (``AirflowFailException``) with the gates that failed;
  the batch stays held on its audit branch, and the next run of the task checks it again.
- Any other icefield error (a bad configuration, a refused contract, a source that is not what the
  pipeline says: the terminal errors) fails the task at once, without retries: trying again cannot help.
- An unexpected exception (a bug) propagates as it is; Airflow retries it like any failure.

A task's return value (pushed to XCom as ``return_value``) is a small summary of the run: status, counts
and snapshot ids.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)


def _load(project_path: str, profile: str | None) -> Any:
    from icefield.config import load_project
    from icefield.errors import ConfigError

    try:
        return load_project(project_path, profile=profile)
    except ConfigError as e:
        raise _fail(e) from e


def _fail(e: BaseException) -> BaseException:
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(f"{type(e).__name__}: {e} (not retried: running again cannot fix this)")


def _retry(e: BaseException) -> BaseException:
    from airflow.sdk.exceptions import AirflowException

    return AirflowException(f"{type(e).__name__}: {e} (transient: retried with the task's retries and backoff)")


def summary(result: Any) -> dict[str, Any]:
    """The XCom summary of a :class:`~icefield.pipeline.RunResult`: small and JSON-able."""
    d = result.to_dict()
    return {
        "node": result.pipeline,
        "table": result.table,
        "status": result.status,
        "run_id": result.run_id,
        "rows_in": d.get("rows_in"),
        "rows_committed": d.get("rows_committed"),
        "rows_quarantined": d.get("rows_quarantined"),
        "batches": len(getattr(result, "batches", []) or []),
        "snapshots": list(d.get("snapshots") or []),
        "reason": result.reason,
        "window": getattr(result, "window", None),
    }


def run_node(
    project_path: str,
    node_id: str,
    *,
    profile: str | None = None,
    window: tuple[datetime, datetime] | None = None,
    wait: float = 0.0,
) -> dict[str, Any]:
    """Run the node ``node_id`` (``"pipeline orders"``, ``"model daily_revenue"``) of the project at
    ``project_path``, as ``icefield run NAME`` does; with ``window`` (start, end), the pipeline's date-window
    backfill of [start, end). Returns the XCom summary; raises Airflow's exceptions as the module says."""
    from icefield.errors import GateFailedError, IcefieldError, TransientError
    from icefield.pipeline.plan import Plan, build_plan, run_plan

    project = _load(project_path, profile)
    try:
        node = build_plan(project).node(node_id)
    except KeyError:
        raise _fail(
            LookupError(f"the project at {project_path} has no {node_id!r} any more; the DAG file was parsed from an older project")
        ) from None
    kwargs: dict[str, Any] = {}
    if window is not None:
        kwargs["window"] = window
    from icefield.observe.configured import configured_observers
    from icefield.observe.logs import project_handlers
    from icefield.observe.metrics import run_metrics

    # Lineage (lineage: in icefield.yaml) names this task, from the AIRFLOW_CTX_* variables, as the parent run;
    # metrics are pushed when metrics.pushgateway is set; the project's logs.file and logs.ship go beside
    # Airflow's task log: JSON lines with the task's ids.
    observers = configured_observers(project)
    with project_handlers(project.config.logs, project.root), run_metrics(project.config.metrics, project.root) as metrics:
        done = run_plan(project, Plan((node,)), wait=wait, observers=[*observers, *metrics], **kwargs)
    result = done.results[0]
    if done.error is None:
        log.info("%s: %s", node_id, summary(result))
        return summary(result)
    _, err = done.error
    if isinstance(err, GateFailedError):
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(
            f"{node_id}: the batch is held by its gates and stays on its audit branch; the next run checks it again. {err}"
        )
    if isinstance(err, TransientError):
        raise _retry(err) from err
    if isinstance(err, IcefieldError):
        raise _fail(err) from err
    raise err


def maintain_table(project_path: str, pipeline: str, operation: str, *, profile: str | None = None) -> dict[str, Any]:
    """Compact (``operation="compact"``) or expire the snapshots of (``"expire"``) the target table of
    ``pipeline``, as ``icefield compact`` / ``icefield expire`` do, with the pipeline's ``target.maintenance``
    settings (expiry: ``expire_older_than``, else icefield's default age; ``retain_last``)."""
    from icefield.catalog import open_catalog
    from icefield.errors import IcefieldError, TransientError

    project = _load(project_path, profile)
    pipe = project.pipelines.get(pipeline)
    if pipe is None:
        raise _fail(LookupError(f"the project at {project_path} has no pipeline {pipeline!r} any more"))
    table = pipe.target.table
    try:
        catalog = open_catalog(project)
        if operation == "compact":
            from icefield.write.compact import compact_table

            done = compact_table(catalog, table, sort_by=list(pipe.target.keys) or None)
            out = {"table": table, "operation": operation, "snapshot_id": done.snapshot_id,
                   "files_added": done.files_added, "files_removed": done.files_removed}
        elif operation == "expire":
            from icefield.write.expire import expire_table

            m = pipe.target.maintenance
            kw: dict[str, Any] = {"retain_last": m.retain_last}
            if m.expire_older_than is not None:
                kw["older_than"] = m.expire_older_than
            gone = expire_table(catalog, table, **kw)
            out = {"table": table, "operation": operation, "snapshots_expired": gone.snapshots_expired,
                   "data_files_deleted": gone.data_files_deleted}
        else:
            raise ValueError(f"unknown maintenance operation {operation!r}; use compact or expire")
    except TransientError as e:
        raise _retry(e) from e
    except IcefieldError as e:
        raise _fail(e) from e
    log.info("maintenance %s", out)
    return out

