"""The Grafana dashboards against a live Prometheus (issue 19, part 5; ``docs/dashboards.md``): after an
``icefield run`` pushed its metrics and Prometheus scraped them (and the table statistics of ``icefield
metrics serve``), every panel's query of every dashboard in ``deploy/grafana/dashboards`` runs through
Prometheus' HTTP API, its variables replaced by values their own ``label_values()`` queries return, and
none may fail or read a metric Prometheus does not know.

A metric Prometheus does not know is accepted only if icefield declares it (its metrics registry, the table
statistics, the lag gauges of the streaming sources) AND it is one of :data:`CONDITIONAL`: the metrics that
exist only after an event this run does not cause (a commit conflict, a held batch, a Kafka or CDC stream...).
Any other name (a typo, a metric renamed in ``metrics.py`` but not in the dashboards) fails the test."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.conftest import PrometheusStack
from tests.integration.test_prometheus import _query, _wait
from tests.unit.test_dashboards import load_generator

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
JOB = "icefield-dashboards-test"
PIPELINE, TABLE, OWNER = "dash_orders", "raw.dash_orders", "dash-team"

CONDITIONAL = {
    "icefield_kafka_consumer_lag_messages": "a following run of a kafka source",
    "icefield_cdc_lag_seconds": "a following run of a debezium (CDC) source",
    "icefield_commit_conflicts_total": "a run ended by a commit conflict that outlasted the retries",
    "icefield_batches_held_total": "a batch held by a failing error gate (write-audit-publish)",
    "icefield_batches_published_total": "a held batch published",
    "icefield_schema_changes_total": "a change of the target table's schema",
    "icefield_maintenance_total": "maintenance between batches (compaction, expiry)",
    "icefield_nodes_skipped_total": "a plan node skipped because a node it reads failed",
}
"""Metrics that exist only after an event the run of this test does not cause, and why."""

SPECIAL = set("\\^$.|?*+()[]{}")
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _run(root: Path) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "icefield", "--project", str(root), "run", "--json"],
        env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    return proc.returncode, json.loads(proc.stdout)


def _project(root: Path, gateway: str) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text(
        yaml.safe_dump({"name": "dashboards", "metrics": {"pushgateway": gateway, "job": JOB}}), encoding="utf-8"
    )
    pipe = {
        "name": PIPELINE,
        "source": {"type": "sql", "url": f"sqlite:///{root / 'shop.db'}", "table": "orders", "cursor": "updated_at"},
        "target": {"table": TABLE},
        "checks": [{"not_null": ["status"]}],
        "gates": [{"row_count": {"min": 1}, "severity": "warn"}],
        "scheduling": {"owner": OWNER},  # the owner label of the storage cost metrics
    }
    (root / "pipelines" / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(pipe), encoding="utf-8")
    return root


def _api(stack: PrometheusStack, path: str, **params: str | float) -> dict[str, Any]:
    """``GET /api/v1/<path>``: the JSON answer, also when Prometheus answers an error (HTTP 400, 422)."""
    url = f"{stack.prometheus.url()}/api/v1/{path}?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return dict(json.load(r))
    except urllib.error.HTTPError as e:
        return dict(json.loads(e.read() or b"{}") or {"status": "error", "error": f"HTTP {e.code}"})


def _regex_value(value: str) -> str:
    """``value`` as Grafana puts a variable's value into a ``=~"..."`` matcher: regex metacharacters escaped,
    and the backslash doubled for the PromQL string."""
    return "".join("\\\\" + c if c in SPECIAL else c for c in value)


def _substitute(expr: str, values: dict[str, str]) -> str:
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):  # $table before $t...
        expr = expr.replace("${" + name + "}", _regex_value(value)).replace("$" + name, _regex_value(value))
    return expr


def _label_values(stack: PrometheusStack, query: str) -> list[str]:
    """What Grafana's ``label_values(metric{...}, label)`` returns: the label's values over the series."""
    selector, label = query.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
    body = _api(stack, "series", **{"match[]": selector, "start": time.time() - 3600, "end": time.time()})
    assert body.get("status") == "success", f"{query}: {body}"
    return sorted({s[label] for s in body["data"] if label in s})


def check(stack: PrometheusStack, expr: str, instant: bool, known: set[str], declared: set[str]) -> list[str]:
    """The problems of one panel query (variables already substituted): a query Prometheus refuses, and the
    metrics it reads that Prometheus does not know and that are not both declared by icefield and
    :data:`CONDITIONAL`."""
    gen = load_generator()
    problems = []
    now = time.time()
    if instant:
        body = _api(stack, "query", query=expr, time=now)
    else:
        body = _api(stack, "query_range", query=expr, start=now - 300, end=now, step=15)
    if body.get("status") != "success":
        problems.append(f"query error {body.get('errorType')}: {body.get('error')}")
    for name in sorted(gen.metric_names(expr) - known):
        if name not in declared:
            problems.append(f"unknown metric {name}: neither Prometheus nor icefield's metrics know it")
        elif name not in CONDITIONAL:
            problems.append(f"metric {name} is declared but Prometheus has no series of it after a run")
    return problems


@pytest.fixture(scope="module")
def scraped(prometheus_stack: PrometheusStack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A failed run, then a successful one (3 rows, one quarantined) pushed; ``icefield metrics serve`` of
    the project scraped: yields while the exporter runs."""
    stack = prometheus_stack
    root = _project(tmp_path_factory.mktemp("dash") / "proj", stack.pushgateway.url())

    def pushed(name: str) -> bool:
        return bool(_query(stack, f'{name}{{job="{JOB}",pipeline="{PIPELINE}"}}'))

    code, doc = _run(root)  # no source table yet: the run fails and pushes its error
    assert code != 0, doc
    _wait("the failed run's metrics scraped", lambda: pushed("icefield_run_errors_total"))
    con = sqlite3.connect(root / "shop.db")
    con.execute("create table orders (id integer primary key, status text, updated_at text)")
    con.executemany(
        "insert into orders values (?, ?, ?)",
        [(1, "paid", "2026-01-01 10:00:00"), (2, None, "2026-01-01 11:00:00"), (3, "new", "2026-01-01 12:00:00")],
    )
    con.commit()
    con.close()
    code, doc = _run(root)
    assert code == 0, doc
    assert (doc["results"][0]["rows_committed"], doc["results"][0]["rows_quarantined"]) == (2, 1)
    _wait("the successful run's metrics scraped", lambda: pushed("icefield_newest_cursor_timestamp_seconds"), timeout=60)
    proc = subprocess.Popen(
        [sys.executable, "-m", "icefield", "--project", str(root), "metrics", "serve", "--port", str(stack.tables_port)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait("the table statistics and storage cost scraped",
              lambda: _query(stack, f'icefield_table_bytes{{job="icefield-tables",table="{TABLE}"}}')
              and _query(stack, f'icefield_table_storage_cost_per_month{{job="icefield-tables",table="{TABLE}",owner="{OWNER}"}}'), timeout=60)
        yield stack
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-3000:]


def _known(stack: PrometheusStack) -> set[str]:
    body = _api(stack, "label/__name__/values")
    assert body["status"] == "success", body
    return set(body["data"])


def test_every_panel_query_runs_on_prometheus_and_reads_known_metrics(scraped: PrometheusStack) -> None:
    stack = scraped
    gen = load_generator()
    known, declared = _known(stack), gen.declared_metrics()
    problems: list[str] = []
    ran = 0
    for path in sorted(DASHBOARDS.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        values: dict[str, str] = {}
        for name, query in gen.variables(doc).items():  # in order: a later variable may use an earlier one
            options = _label_values(stack, _substitute(query, values))
            real = {"pipeline": PIPELINE, "table": TABLE, "owner": OWNER}[name]
            assert real in options, f"{path.name}: variable {name} ({query}) offers {options}, not {real}"
            values[name] = real
        for title, expr, instant in gen.queries(doc):
            problems += [f"{path.name} / {title}: {p}\n    {expr}" for p in check(stack, _substitute(expr, values), instant, known, declared)]
            ran += 1
    assert ran >= 60, f"only {ran} panel queries found"
    assert not problems, "\n".join(problems)
    absent = sorted(name for name in CONDITIONAL if name not in known)
    print(f"{ran} panel queries ran; conditional metrics without series: {absent}")


def test_the_checker_catches_a_misspelt_metric_and_a_broken_query(scraped: PrometheusStack) -> None:
    stack = scraped
    known, declared = _known(stack), load_generator().declared_metrics()
    expr = _substitute('sum by (pipeline) (icefield_rows_comitted_total{pipeline=~"$pipeline"})', {"pipeline": PIPELINE})
    assert check(stack, expr, False, known, declared) == [
        "unknown metric icefield_rows_comitted_total: neither Prometheus nor icefield's metrics know it"
    ]
    broken = check(stack, "sum by (pipeline (icefield_runs_total)", True, known, declared)
    assert len(broken) == 1 and broken[0].startswith("query error bad_data"), broken
    # A declared metric that should exist after this run but has no series is caught too.
    assert check(stack, "icefield_rows_in_total", True, known - {"icefield_rows_in_total"}, declared) == [
        "metric icefield_rows_in_total is declared but Prometheus has no series of it after a run"
    ]
    assert check(stack, _substitute('sum(rate(icefield_rows_in_total{pipeline=~"$pipeline"}[$__rate_interval]))',
                                     {"pipeline": PIPELINE}), False, known, declared) == []
