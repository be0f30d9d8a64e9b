"""The deadline alert of icefield's DAGs: Airflow 3 calls :func:`deadline_missed` (in its triggerer) when a
DAG run has not finished ``scheduling.deadline`` after its logical date.

The alert is logged at ERROR level on the ``icefield.alerts`` logger, appended as one JSON line to the
alerts file (the callback's ``alerts_file``, else ``ICEFIELD_ALERTS_FILE``; none when neither is set) and,
when a ``webhook`` URL is given (``ICEFIELD_ALERT_WEBHOOK``), POSTed there as JSON. The alert names the
DAG, the run, its logical date, the deadline and the pipelines of the DAG.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("icefield.alerts")

ALERTS_FILE_ENV = "ICEFIELD_ALERTS_FILE"
WEBHOOK_ENV = "ICEFIELD_ALERT_WEBHOOK"


def alert_document(context: dict[str, Any] | None, pipelines: list[str], deadline: str | None) -> dict[str, Any]:
    """The alert as JSON-able values, from the context Airflow gives a deadline callback."""
    run = (context or {}).get("dag_run") or {}
    missed = (context or {}).get("deadline") or {}
    return {
        "alert": "IcefieldRunLate",
        "severity": "warning",
        "dag_id": run.get("dag_id"),
        "run_id": run.get("dag_run_id") or run.get("run_id"),
        "logical_date": run.get("logical_date"),
        "state": run.get("state"),
        "deadline": str(missed.get("deadline_time")) if missed.get("deadline_time") is not None else None,
        "deadline_after_logical_date": deadline,
        "pipelines": pipelines,
        "raised_at": datetime.now(UTC).isoformat(),
        "summary": f"DAG run {run.get('dag_run_id') or run.get('run_id')} of {run.get('dag_id')} missed its deadline "
        f"({deadline} after its logical date) and is not finished",
    }


async def deadline_missed(
    context: dict[str, Any] | None = None,
    pipelines: list[str] | None = None,
    deadline: str | None = None,
    alerts_file: str | None = None,
    webhook: str | None = None,
) -> None:
    """Raise the late-run alert (see the module docs). Never raises: an alert that cannot be delivered is
    logged."""
    doc = alert_document(context, list(pipelines or []), deadline)
    log.error("%s", doc["summary"], extra={"alert": doc})
    path = alerts_file or os.environ.get(ALERTS_FILE_ENV)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(doc, default=str) + "\n")
        except OSError as e:
            log.error("could not append the alert to %s: %s", path, e)
    url = webhook or os.environ.get(WEBHOOK_ENV)
    if url:
        req = urllib.request.Request(url, data=json.dumps(doc, default=str).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - a URL the operator configured
                pass
        except OSError as e:
            log.error("could not POST the alert to %s: %s", url, e)
