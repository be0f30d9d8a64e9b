"""Metrics and alerts with the real servers (issue 19, parts 1 and 2): the shipped rules pass ``promtool``'s
checks and unit tests, the Alertmanager example configuration passes ``amtool``, and end to end a failing
``icefield run`` pushes its metrics to the Pushgateway, Prometheus scrapes them, ``IcefieldPipelineFailed``
fires and Alertmanager delivers it to a webhook; a successful run of the same pipeline resolves it, and the
numbers Prometheus holds are the run's."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.conftest import PrometheusStack

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"
ALERT_TIMEOUT = 30.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: apt-get install -y prometheus prometheus-alertmanager"
    return path


def test_the_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = _tool("promtool")
    check = subprocess.run([promtool, "check", "rules", "icefield.rules.yml"], cwd=RULES, capture_output=True, text=True, check=False)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", "icefield.rules.test.yml"], cwd=RULES, capture_output=True, text=True, check=False)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_the_alertmanager_example_configuration_is_valid() -> None:
    amtool = _tool("amtool")
    config = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    res = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "3 receivers" in res.stdout, res.stdout + res.stderr


def test_the_stack_prometheus_configuration_is_valid(prometheus_stack: PrometheusStack) -> None:
    promtool = _tool("promtool")
    res = subprocess.run(
        [promtool, "check", "config", str(prometheus_stack.prometheus.config_file)], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr


def _project(root: Path, gateway: str, job: str = "icefield-test") -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text(
        yaml.safe_dump({"name": "alerting", "metrics": {"pushgateway": gateway, "job": job}}), encoding="utf-8"
    )
    pipe = {
        "name": "orders",
        "source": {"type": "sql", "url": f"sqlite:///{root / 'shop.db'}", "table": "orders", "cursor": "id"},
        "target": {"table": "raw.orders"},
        "checks": [{"not_null": ["status"]}],
    }
    (root / "pipelines" / "orders.yaml").write_text(yaml.safe_dump(pipe), encoding="utf-8")
    return root


def _icefield(root: Path, *args: str) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "icefield", "--project", str(root), *args, "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    return proc.returncode, json.loads(proc.stdout)


def _query(stack: PrometheusStack, promql: str) -> list[dict[str, Any]]:
    url = f"{stack.prometheus.url()}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _wait(what: str, found: Callable[[], Any], timeout: float = ALERT_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := found()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: nothing after {timeout:.0f} s")
        time.sleep(0.2)
    return value


def test_a_failing_run_alerts_through_alertmanager_and_a_successful_run_resolves_it(
    prometheus_stack: PrometheusStack, tmp_path: Path
) -> None:
    stack = prometheus_stack
    root = _project(tmp_path / "proj", stack.pushgateway.url())
    labels = {"pipeline": "orders", "table": "raw.orders", "job": "icefield-test"}

    # The source table does not exist yet: the run fails, and pushes its metrics on the way out.
    code, doc = _icefield(root, "run")
    assert code != 0 and doc["status"] != "success", doc
    firing = _wait("IcefieldPipelineFailed firing", lambda: stack.webhook.received("IcefieldPipelineFailed", "firing", **labels))
    assert firing[0]["labels"]["severity"] == "critical"
    assert "orders failed" in firing[0]["annotations"]["summary"]

    # The source appears: 3 orders, one without a status (quarantined). The next run succeeds and resolves it.
    con = sqlite3.connect(root / "shop.db")
    con.execute("create table orders (id integer primary key, status text)")
    con.executemany("insert into orders values (?, ?)", [(1, "paid"), (2, None), (3, "new")])
    con.commit()
    con.close()
    code, doc = _icefield(root, "run")
    assert code == 0, doc
    result = doc["results"][0]
    assert (result["rows_committed"], result["rows_quarantined"]) == (2, 1)
    _wait("IcefieldPipelineFailed resolved", lambda: stack.webhook.received("IcefieldPipelineFailed", "resolved", **labels))

    # What Prometheus scraped from the Pushgateway is what the run counted.
    def scraped(name: str) -> float | None:
        rows = _query(stack, f'{name}{{job="icefield-test",pipeline="orders",table="raw.orders"}}')
        return float(rows[0]["value"][1]) if rows else None

    _wait("the second run's metrics scraped", lambda: scraped("icefield_rows_committed_total") == 2)
    assert scraped("icefield_rows_quarantined_total") == 1
    assert scraped("icefield_last_run_rows_in") == 3
    assert scraped("icefield_run_failed") == 0
    # 1 of 3 rows quarantined is above the 5% threshold: that alert fires too.
    _wait("IcefieldQuarantineRateHigh firing", lambda: stack.webhook.received("IcefieldQuarantineRateHigh", "firing", **labels))


def _produce(bootstrap: str, topic: str, ids: range) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for i in ids:
        producer.produce(topic, value=json.dumps({"id": i, "status": "paid"}).encode(), key=str(i).encode())
    assert producer.flush(30) == 0


def _scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        s.name: s.value
        for f in text_string_to_metric_families(text) for s in f.samples
        if s.labels.get("pipeline") == "events" and s.labels.get("table") == "raw.events" and len(s.labels) == 2
    }


@pytest.mark.kafka
def test_a_following_run_serves_its_metrics_on_127_0_0_1(kafka_server: Any, kafka_topic: Any, tmp_path: Path) -> None:
    import signal

    from tests.conftest import free_port

    topic = kafka_topic(partitions=1)
    _produce(kafka_server.bootstrap_servers, topic, range(20))
    root = tmp_path / "proj"
    (root / "pipelines").mkdir(parents=True)
    port = free_port()
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "streams", "metrics": {"port": port}}), encoding="utf-8")
    pipe = {
        "name": "events",
        "source": {"type": "kafka", "bootstrap_servers": kafka_server.bootstrap_servers, "topic": topic, "max_wait_seconds": 0.5},
        "target": {"table": "raw.events"},
        "batch_size": 10_000,
    }
    (root / "pipelines" / "events.yaml").write_text(yaml.safe_dump(pipe), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "icefield", "--project", str(root), "run", "events", "--follow", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        _wait("20 rows on /metrics", lambda: _scrape(url).get("icefield_rows_committed_total") == 20, timeout=60)
        _produce(kafka_server.bootstrap_servers, topic, range(20, 25))
        _wait("25 rows on /metrics", lambda: _scrape(url).get("icefield_rows_committed_total") == 25, timeout=60)
        batches = _scrape(url).get("icefield_batch_duration_seconds_count")
        assert batches is not None and batches >= 2  # one batch at least per produce
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["results"][0]["rows_committed"] == 25
    assert _scrape(url) == {}, "the server stops with the run"


def test_prometheus_scrapes_the_table_statistics_of_metrics_serve(prometheus_stack: PrometheusStack, tmp_path: Path) -> None:
    import signal

    stack = prometheus_stack
    root = _project(tmp_path / "proj", stack.pushgateway.url(), job="icefield-tables-test")
    con = sqlite3.connect(root / "shop.db")
    con.execute("create table orders (id integer primary key, status text)")
    for i in range(3):  # three runs: three data files
        con.execute("insert into orders values (?, 'paid')", (i,))
        con.commit()
        assert _icefield(root, "run")[0] == 0
    con.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "icefield", "--project", str(root), "metrics", "serve", "--port", str(stack.tables_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        def stat(name: str) -> float | None:
            rows = _query(stack, f'{name}{{job="icefield-tables",table="raw.orders"}}')
            return float(rows[0]["value"][1]) if rows else None

        _wait("icefield_table_data_files scraped", lambda: stat("icefield_table_data_files") == 3)
        assert stat("icefield_table_records") == 3
        assert stat("icefield_table_small_files") == 3
        assert stat("icefield_table_delete_files") == 0
        snapshots = stat("icefield_table_snapshots")
        assert snapshots is not None and snapshots >= 3
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-3000:]
