"""Prometheus metrics of a run (issue 19, part 1): every number the metrics observer exports is one the run
counted (its results and events), labels stay bounded, the registry is the observer's own, ``/metrics`` is
served on 127.0.0.1, a push that fails never fails ``icefield run``, and a bad ``metrics:`` section of
``icefield.yaml`` is refused naming the key and the fix."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from click.testing import CliRunner

from icefield.cli import cli
from icefield.cli.output import Output
from icefield.config import load_project
from icefield.demo import run_demo
from icefield.errors import ConfigError
from icefield.observe.events import BatchCommitted, Event, GateEvaluated, RunFinished
from icefield.observe.metrics import MetricsObserver, samples, serve

UNBOUNDED = {"batch_id", "run_id", "snapshot_id", "file", "path"}


def _value(obs: MetricsObserver, name: str, **labels: str) -> float:
    """The value of the one sample ``name`` with ``labels`` (0 when the series does not exist)."""
    found = [v for lb, v in samples(obs.registry, name) if all(lb.get(k) == x for k, x in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def _orders(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


ORDERS = {
    "source": {"type": "files", "path": "data/*.jsonl", "format": "jsonl", "columns": {"id": "long", "amount": "double", "status": "string"}},
    "target": {"table": "raw.orders", "mode": "append"},
    "checks": [{"not_null": ["status"]}, {"range": {"column": "amount", "min": 0}}, {"filter": "status <> 'test'"}],
}


def test_the_metrics_of_two_runs_are_the_sums_of_their_results(lake: Any) -> None:
    lk = lake({"orders": ORDERS})
    data = lk.root / "data"
    data.mkdir()
    obs = MetricsObserver()
    # Run 1: 2 good, 1 null status, 1 negative amount, 1 test order (filtered).
    (data / "a.jsonl").write_text(_orders([
        {"id": 1, "amount": 5.0, "status": "paid"}, {"id": 2, "amount": 7.0, "status": "new"},
        {"id": 3, "amount": 1.0, "status": None}, {"id": 4, "amount": -1.0, "status": "paid"},
        {"id": 5, "amount": 1.0, "status": "test"},
    ]))
    first = lk.run("orders", observers=[obs])
    (data / "b.jsonl").write_text(_orders([{"id": 6, "amount": 3.0, "status": "paid"}, {"id": 7, "amount": 2.0, "status": "test"}]))
    second = lk.run("orders", observers=[obs])
    results = [first, second]
    assert all(r.status == "success" for r in results)
    assert sum(r.rows_quarantined for r in results) == 2 and sum(r.rows_filtered for r in results) == 2  # the data says so

    labels = {"pipeline": "orders", "table": "raw.orders"}
    for name in ("in", "committed", "quarantined", "filtered"):
        assert _value(obs, f"icefield_rows_{name}_total", **labels) == sum(getattr(r, f"rows_{name}") for r in results), name
    by_check: dict[str, int] = defaultdict(int)
    for r in results:
        for b in r.batches:
            for check, n in b.failures_by_check.items():
                by_check[check] += n
    assert by_check and {
        lb["check"]: v for lb, v in samples(obs.registry, "icefield_rows_quarantined_by_check_total")
    } == by_check
    assert _value(obs, "icefield_batches_total", outcome="committed", **labels) == sum(len(r.batches) for r in results)
    assert _value(obs, "icefield_bytes_added_total", **labels) == sum(b.bytes_added for r in results for b in r.batches) > 0
    assert _value(obs, "icefield_runs_total", status="success", **labels) == 2
    assert _value(obs, "icefield_run_duration_seconds_count", **labels) == 2
    assert _value(obs, "icefield_run_duration_seconds_sum", **labels) == pytest.approx(sum(r.seconds for r in results))
    assert _value(obs, "icefield_batch_duration_seconds_sum", **labels) == pytest.approx(sum(b.seconds for r in results for b in r.batches))
    stages = {lb["stage"] for lb, _ in samples(obs.registry, "icefield_stage_duration_seconds_count")}
    assert stages == {s for r in results for b in r.batches for s in b.stages}
    # Gauges: the latest run.
    assert _value(obs, "icefield_last_run_rows_committed", **labels) == second.rows_committed == 1
    assert _value(obs, "icefield_last_success_timestamp_seconds", **labels) == second.finished_at.timestamp()
    assert _value(obs, "icefield_run_failed", **labels) == 0
    # A third run with nothing new: one more run, no more rows.
    third = lk.run("orders", observers=[obs])
    assert third.rows_in == 0
    assert _value(obs, "icefield_rows_in_total", **labels) == sum(r.rows_in for r in results)
    assert _value(obs, "icefield_runs_total", status="success", **labels) == 3


def test_the_metrics_of_the_demo_equal_its_events_and_carry_no_unbounded_label(tmp_path: Path) -> None:
    seen: list[Event] = []
    obs = MetricsObserver()
    report = run_demo(tmp_path / "demo", fresh=False, out=Output(as_json=True), observers=[seen.append, obs])
    assert report["ok"], report["checks"]
    finished = [e for e in seen if isinstance(e, RunFinished)]
    committed = [e for e in seen if isinstance(e, BatchCommitted) and not e.skipped]
    keys = {(e.pipeline, e.table) for e in finished}
    for pipeline, table in keys:
        labels = {"pipeline": pipeline, "table": table}
        mine = [e for e in finished if (e.pipeline, e.table) == (pipeline, table)]
        for name in ("in", "committed", "quarantined", "filtered"):
            assert _value(obs, f"icefield_rows_{name}_total", **labels) == sum(getattr(e, f"rows_{name}") for e in mine), (pipeline, name)
        for status in ("success", "failed", "held"):
            assert _value(obs, "icefield_runs_total", status=status, **labels) == sum(e.status == status for e in mine)
        last = mine[-1]
        assert _value(obs, "icefield_last_run_timestamp_seconds", **labels) == last.finished_at.timestamp()
        assert _value(obs, "icefield_batch_held", **labels) == (1 if last.status == "held" else 0)
    assert sum(v for _, v in samples(obs.registry, "icefield_bytes_added_total")) == sum(e.bytes_added for e in committed) > 0
    gates = [e for e in seen if isinstance(e, GateEvaluated)]
    assert sum(v for _, v in samples(obs.registry, "icefield_gate_results_total")) == len(gates) > 0
    assert sum(v for _, v in samples(obs.registry, "icefield_batches_held_total")) == sum(e.kind == "batch_held" for e in seen) > 0
    assert sum(v for _, v in samples(obs.registry, "icefield_batches_published_total")) == sum(e.kind == "batch_published" for e in seen) > 0
    # Bounded labels only; and nothing of it in the process-global registry.
    names: set[str] = set()
    for family in obs.registry.collect():
        for s in family.samples:
            names.add(s.name)
            assert not UNBOUNDED & set(s.labels), (s.name, s.labels)
    assert names and not names & {s.name for f in prometheus_client.REGISTRY.collect() for s in f.samples}


def test_an_observer_that_fails_to_push_leaves_the_run_succeeding(lake: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lk = lake({"orders": ORDERS}, {"name": "test", "metrics": {"pushgateway": f"http://127.0.0.1:{port}", "timeout": 2}})
    (lk.root / "data").mkdir()
    (lk.root / "data" / "a.jsonl").write_text(_orders([{"id": 1, "amount": 5.0, "status": "paid"}]))
    monkeypatch.chdir(lk.root)
    with caplog.at_level(logging.WARNING, logger="icefield.observe.metrics"):
        res = CliRunner().invoke(cli, ["run", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["results"][0]["rows_committed"] == 1
    assert any(f"127.0.0.1:{port}" in r.getMessage() and "orders" in r.getMessage() for r in caplog.records), caplog.text


def test_metrics_are_served_on_127_0_0_1() -> None:
    obs = MetricsObserver()
    obs.rows["committed"].labels("orders", "raw.orders").inc(3)
    with serve(obs.registry, port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
        body = urllib.request.urlopen(server.url, timeout=5).read().decode()
    assert 'icefield_rows_committed_total{pipeline="orders",table="raw.orders"} 3.0' in body


def test_a_busy_metrics_port_is_a_config_error() -> None:
    with serve(MetricsObserver().registry, port=0) as server, pytest.raises(ConfigError, match=f"{server.port}.*metrics.port"):
        serve(MetricsObserver().registry, port=server.port)


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"pushgateway": "localhost:9091"}, r"metrics\.pushgateway.*not a Pushgateway URL.*http://127\.0\.0\.1:9091"),
        ({"port": 70000}, r"metrics\.port.*1\.\.65535"),
        ({"job": "my job"}, r"metrics\.job.*plain name"),
        ({"timeout": 0}, r"metrics\.timeout.*more than 0"),
        ({"pushgatway": "http://x:9091"}, r"metrics\.pushgatway: unknown key"),
    ],
)
def test_a_bad_metrics_section_is_a_config_error(make_project: Any, metrics: dict[str, Any], message: str) -> None:
    root = make_project(project={"name": "test", "metrics": metrics})
    with pytest.raises(ConfigError, match=message):
        load_project(root, env={})


def test_the_metrics_section_has_defaults_and_takes_a_pushgateway(make_project: Any) -> None:
    assert load_project(make_project(), env={}).config.metrics.pushgateway is None
    root = make_project(project={"name": "test", "metrics": {"pushgateway": "http://pgw.example:9091/", "job": "nightly"}})
    cfg = load_project(root, env={}).config.metrics
    assert (cfg.pushgateway, cfg.job, cfg.host, cfg.port) == ("http://pgw.example:9091", "nightly", "127.0.0.1", None)


def test_metrics_port_without_follow_is_refused(make_project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(make_project({"orders": ORDERS}))
    res = CliRunner().invoke(cli, ["run", "--metrics-port", "9464"])
    assert res.exit_code == 2 and "--follow" in res.output, res.output


def test_yaml_example_of_docs_loads(make_project: Any) -> None:
    """The ``metrics:`` example of docs/metrics.md is a valid section."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text(encoding="utf-8")
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    project = yaml.safe_load(block)
    cfg = load_project(make_project(project={"name": "test", **project}), env={}).config.metrics
    assert cfg.pushgateway and cfg.port


def test_freshness_is_the_newest_timestamp_cursor_landed(lake: Any, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "shop.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, updated_at DATETIME)")
    con.executemany("INSERT INTO orders VALUES (?, ?)", [(1, "2026-03-01 10:00:00"), (2, "2026-03-01 12:30:00"), (3, "2026-03-01 11:00:00")])
    con.commit()
    con.close()
    pipe = {"source": {"type": "sql", "url": f"sqlite:///{db}", "table": "orders", "cursor": "updated_at"}, "target": {"table": "raw.orders"}, "batch_size": 2}
    lk = lake({"orders": pipe})
    obs = MetricsObserver()
    res = lk.run("orders", observers=[obs])
    assert res.rows_committed == 3 and len(res.batches) == 2
    newest = _value(obs, "icefield_newest_cursor_timestamp_seconds", pipeline="orders", table="raw.orders")
    assert newest == datetime(2026, 3, 1, 12, 30, tzinfo=UTC).timestamp()
    assert max(b.cursor_time for b in res.batches if b.cursor_time is not None).timestamp() == newest


def test_metrics_show_exports_the_table_statistics_of_the_manifests(lake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    lk = lake({"orders": ORDERS})
    (lk.root / "data").mkdir()
    for i in range(3):  # three runs, three small data files
        (lk.root / "data" / f"{i}.jsonl").write_text(_orders([{"id": i * 10 + j, "amount": 1.0, "status": "paid"} for j in range(i + 1)]))
        assert lk.run("orders").status == "success"
    monkeypatch.chdir(lk.root)
    res = CliRunner().invoke(cli, ["metrics", "show"])
    assert res.exit_code == 0, res.output
    got = {
        (s.name, s.labels.get("table")): s.value
        for family in text_string_to_metric_families(res.stdout) for s in family.samples
    }
    table = lk.table("raw.orders")
    files = table.inspect.files().to_pylist()  # pyiceberg's own reading of the manifests
    data = [f for f in files if f["content"] == 0]
    assert got[("icefield_table_data_files", "raw.orders")] == len(data) == 3
    assert got[("icefield_table_delete_files", "raw.orders")] == len(files) - len(data)
    assert got[("icefield_table_small_files", "raw.orders")] == len(data)  # a few rows each: far below 0.75 of 512 MB
    assert got[("icefield_table_bytes", "raw.orders")] == sum(f["file_size_in_bytes"] for f in files)
    assert got[("icefield_table_records", "raw.orders")] == sum(f["record_count"] for f in data) == 6
    assert got[("icefield_table_snapshots", "raw.orders")] == len(table.metadata.snapshots)
    assert got[("icefield_table_stats_errors", None)] == 0
    assert {t for _, t in got} >= {"raw.orders"}


class _CommitsFirst:
    """Wraps the real catalog: before the next commit of the run goes through, ``before()`` commits to the
    same table (a concurrent writer), so the run's commit meets a real conflict and is retried."""

    def __init__(self, inner: Any, before: Any) -> None:
        self.inner = inner
        self.before = before
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def load_table(self, ident: Any) -> Any:
        table = self.inner.load_table(ident)
        table.catalog = self
        return table

    def commit_table(self, table: Any, requirements: Any, updates: Any) -> Any:
        if not self.fired:
            self.fired = True
            self.before()
        return self.inner.commit_table(table, requirements, updates)


def test_commit_retries_are_counted_where_the_commit_retries(lake: Any) -> None:
    import pyarrow as pa

    from icefield import run_pipeline
    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.write import TableWriter

    lk = lake({"orders": ORDERS})
    (lk.root / "data").mkdir()
    (lk.root / "data" / "a.jsonl").write_text(_orders([{"id": 1, "amount": 1.0, "status": "paid"}]))
    assert lk.run("orders").status == "success"  # the table exists

    def concurrent() -> None:
        other = TableWriter(lk.catalog, TargetConfig(table="raw.orders"), "other", LocalEngine())
        schema = lk.table("raw.orders").schema().as_arrow()
        row = {f.name: None for f in schema}
        row.update(id=99, amount=2.0, status="paid")
        other.commit(pa.Table.from_pylist([row], schema=schema), "concurrent-batch", None, "other-run")

    (lk.root / "data" / "b.jsonl").write_text(_orders([{"id": 2, "amount": 1.0, "status": "paid"}]))
    obs = MetricsObserver()
    wrapped = _CommitsFirst(lk.catalog, concurrent)
    res = run_pipeline(lk.project(), "orders", catalog=wrapped, observers=[obs])
    assert res.status == "success" and wrapped.fired
    assert [b.commit_conflicts for b in res.batches] == [1]
    assert _value(obs, "icefield_commit_retries_total", pipeline="orders", table="raw.orders") == 1
    assert sorted(r["id"] for r in lk.rows("raw.orders")) == [1, 2, 99]
