"""OpenLineage run events (issue 19, item 4): every run of a project with `lineage:` sends a START and a
COMPLETE (or FAIL) event, named by the OpenLineage naming conventions, with the facets a lineage server
shows (schema, output statistics, data-quality assertions, column lineage of a model, the Iceberg snapshot
and batch ids, the parent Airflow task), and every event validates against the OpenLineage JSON schemas
(vendored under tests/data/openlineage; see its README)."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import threading
from collections import defaultdict
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from tests.openlineage_schemas import validate_event as _validate

from icefield.catalog import open_catalog
from icefield.config import load_project
from icefield.errors import ConfigError
from icefield.observe.configured import configured_observers
from icefield.observe.events import SourceRef
from icefield.observe.lineage import airflow_parent, column_lineage, source_datasets
from icefield.pipeline import run_plan
from icefield.pipeline.plan import build_plan


def _shop(tmp_path: Path, lineage: dict[str, Any] | None = None, *, bad_model: bool = False) -> Path:
    """A project: SQLite tables orders and customers -> Iceberg shop.orders / shop.customers, a check and a
    gate on orders, and a model with a join and an aggregate."""
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as con:
        con.execute("create table orders (order_id integer, customer_id integer, amount real, status text)")
        con.executemany(
            "insert into orders values (?, ?, ?, ?)",
            [(1, 10, 5.0, "paid"), (2, 10, 7.5, "paid"), (3, 11, 2.0, "cancelled"), (4, None, 1.0, "paid")],
        )
        con.execute("create table customers (customer_id integer, country text)")
        con.executemany("insert into customers values (?, ?)", [(10, "FR"), (11, "DE")])
    root = tmp_path / "proj"
    (root / "pipelines").mkdir(parents=True)
    (root / "models").mkdir()
    project: dict[str, Any] = {"name": "shop"}
    if lineage is not None:
        project["lineage"] = lineage
    (root / "icefield.yaml").write_text(yaml.safe_dump(project), encoding="utf-8")
    url = f"sqlite:///{db}"
    pipes = {
        "orders": {
            "description": "Orders from the shop's database",
            "source": {"type": "sql", "url": url, "table": "orders"},
            "target": {"table": "shop.orders", "mode": "overwrite"},
            "checks": [{"not_null": ["customer_id"]}, {"range": {"column": "amount", "min": 0}}, {"filter": "order_id > 0"}],
            "gates": [{"distinct_ratio": {"column": "order_id", "min": 1}}],
        },
        "customers": {"source": {"type": "sql", "url": url, "table": "customers"}, "target": {"table": "shop.customers", "mode": "overwrite"}},
    }
    for name, body in pipes.items():
        (root / "pipelines" / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **body}, sort_keys=False), encoding="utf-8")
    column = "o.no_such_column" if bad_model else "c.country"
    (root / "models" / "revenue.sql").write_text(
        "-- target: analytics.revenue\n-- mode: overwrite\n"
        f"select {column} as country, o.customer_id, sum(o.amount) as revenue, count(*) as orders\n"
        "from shop.orders as o join shop.customers as c on o.customer_id = c.customer_id\n"
        "where o.status <> 'cancelled'\ngroup by 1, 2\n",
        encoding="utf-8",
    )
    return root


def _events(root: Path) -> list[dict[str, Any]]:
    path = root / ".icefield" / "lineage.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _run(root: Path) -> Any:
    project = load_project(root, env={})
    catalog = open_catalog(project)
    try:
        return run_plan(project, build_plan(project), catalog, observers=configured_observers(project))
    finally:
        catalog.engine.dispose()


def test_a_run_of_pipelines_and_a_model_sends_start_and_complete_per_node_with_their_datasets_and_facets(tmp_path: Path) -> None:
    root = _shop(tmp_path, {"transport": "file"})
    done = _run(root)
    assert done.error is None, done.failures
    events = _events(root)
    for e in events:
        _validate(e)
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        runs[e["run"]["runId"]].append(e)
    # One START then one COMPLETE per node, sharing the run id; three nodes, three runs.
    assert sorted(evs[0]["job"]["name"] for evs in runs.values()) == ["customers", "model.revenue", "orders"]
    for evs in runs.values():
        assert [e["eventType"] for e in evs] == ["START", "COMPLETE"]
        assert {e["job"]["namespace"] for e in evs} == {"shop"}
        assert evs[0]["eventTime"] <= evs[1]["eventTime"]
    by_job = {evs[0]["job"]["name"]: evs[1] for evs in runs.values()}
    project = load_project(root, env={})
    warehouse = project.warehouse_uri()

    # The pipeline: its SQLite source as input, its Iceberg table as output with schema, statistics, the
    # snapshot the run committed as version, the checks' and gates' results, and the batches' ids.
    orders = by_job["orders"]
    assert orders["job"]["facets"]["documentation"]["description"] == "Orders from the shop's database"
    assert [(i["namespace"], i["name"]) for i in orders["inputs"]] == [(f"sqlite://{tmp_path / 'app.db'}", "orders")]
    outs = {o["name"]: o for o in orders["outputs"]}
    target = outs["shop.orders"]
    assert target["namespace"] == warehouse
    assert [f["name"] for f in target["facets"]["schema"]["fields"]][:4] == ["order_id", "customer_id", "amount", "status"]
    result = next(r for r in done.results if r.pipeline == "orders")
    assert target["outputFacets"]["outputStatistics"]["rowCount"] == result.rows_committed == 3
    assert target["outputFacets"]["outputStatistics"]["size"] == sum(b.bytes_added for b in result.batches) > 0
    snapshot = open_catalog(project).load_table("shop.orders").current_snapshot()
    assert snapshot is not None and target["facets"]["version"]["datasetVersion"] == str(snapshot.snapshot_id)
    assertions = {a["assertion"]: a for a in target["facets"]["dataQualityAssertions"]["assertions"]}
    assert assertions["distinct_ratio(order_id)"]["success"] is True
    # Row checks: not_null rejected the row without a customer, range rejected none; filter rules are no check.
    assert (assertions["not_null"]["success"], assertions["not_null"]["actual"]) == (False, "1")
    assert (assertions["range"]["success"], assertions["range"]["actual"]) == (True, "0")
    assert set(assertions) == {"distinct_ratio(order_id)", "not_null", "range"}
    quarantine = [o for name, o in outs.items() if name != "shop.orders"]
    assert len(quarantine) == 1 and quarantine[0]["outputFacets"]["outputStatistics"]["rowCount"] == 1
    facet = orders["run"]["facets"]["icefield"]
    assert facet["runId"] == done.run_id and facet["status"] == "success"
    assert [(b["batchId"], b["snapshotId"]) for b in facet["batches"]] == [(b.batch_id, b.snapshot_id) for b in result.batches]

    # The model: the tables it read as inputs (at the snapshots it read), its SQL, and column lineage.
    model = by_job["model.revenue"]
    assert model["job"]["facets"]["sql"]["query"].startswith("-- target")
    assert {(i["namespace"], i["name"]) for i in model["inputs"]} == {(warehouse, "shop.orders"), (warehouse, "shop.customers")}
    assert next(i for i in model["inputs"] if i["name"] == "shop.orders")["facets"]["version"]["datasetVersion"] == str(snapshot.snapshot_id)
    out = model["outputs"][0]
    assert out["name"] == "analytics.revenue"
    lineage = out["facets"]["columnLineage"]["fields"]
    simple = {k: sorted((f["name"], f["field"], f["transformations"][0]["subtype"]) for f in v["inputFields"]) for k, v in lineage.items()}
    assert simple == {
        "country": [("shop.customers", "country", "IDENTITY")],
        "customer_id": [("shop.orders", "customer_id", "IDENTITY")],
        "revenue": [("shop.orders", "amount", "AGGREGATION")],
    }
    indirect = {(f["name"], f["field"], f["transformations"][0]["subtype"]) for f in out["facets"]["columnLineage"]["dataset"]}
    assert {("shop.orders", "customer_id", "JOIN"), ("shop.customers", "customer_id", "JOIN"), ("shop.orders", "status", "FILTER")} <= indirect


def test_the_validator_refuses_an_event_the_spec_refuses(tmp_path: Path) -> None:
    """The schemas are strict enough to catch what a receiver would refuse (the checks above can fail)."""
    import copy

    from jsonschema import ValidationError

    root = _shop(tmp_path, {"transport": "file"})
    _run(root)
    event = _events(root)[-1]
    _validate(event)
    for path, value in [(("eventType",), "DONE"), (("run", "runId"), "c0564d548a62410d")]:
        bad = copy.deepcopy(event)
        bad[path[0]] = value if len(path) == 1 else {**bad[path[0]], path[1]: value}
        with pytest.raises(ValidationError):
            _validate(bad)
    bad = copy.deepcopy(event)
    del bad["outputs"][0]["facets"]["schema"]["_producer"]
    with pytest.raises(ValidationError):
        _validate(bad)
    bad = copy.deepcopy(event)
    bad["run"]["facets"]["icefield"]["batches"][0]["snapshotId"] = "not a number"
    with pytest.raises(ValidationError):
        _validate(bad)


def test_a_failing_model_sends_fail_with_its_error_and_the_pipelines_still_complete(tmp_path: Path) -> None:
    root = _shop(tmp_path, {"transport": "file"}, bad_model=True)
    done = _run(root)
    assert done.error is not None
    events = _events(root)
    for e in events:
        _validate(e)
    ends = {e["job"]["name"]: e for e in events if e["eventType"] != "START"}
    assert ends["orders"]["eventType"] == ends["customers"]["eventType"] == "COMPLETE"
    failed = ends["model.revenue"]
    assert failed["eventType"] == "FAIL"
    assert "no_such_column" in failed["run"]["facets"]["errorMessage"]["message"]
    assert failed["run"]["facets"]["icefield"]["status"] == "failed"
    starts = [e for e in events if e["eventType"] == "START"]
    assert sorted(e["run"]["runId"] for e in starts) == sorted(e["run"]["runId"] for e in ends.values())


def test_inside_an_airflow_task_the_run_names_the_task_as_its_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _shop(tmp_path, {"transport": "file", "parent_namespace": "airflow-prod"})
    for key, value in {"DAG_ID": "shop", "TASK_ID": "pipeline_orders", "DAG_RUN_ID": "manual__2026-12-07", "TRY_NUMBER": "2"}.items():
        monkeypatch.setenv(f"AIRFLOW_CTX_{key}", value)
    project = load_project(root, env={})
    catalog = open_catalog(project)
    try:
        run_plan(project, build_plan(project, ("orders",), models=False), catalog, observers=configured_observers(project))
    finally:
        catalog.engine.dispose()
    events = _events(root)
    assert len(events) == 2
    for e in events:
        _validate(e)
        parent = e["run"]["facets"]["parent"]
        assert (parent["job"]["namespace"], parent["job"]["name"]) == ("airflow-prod", "shop.pipeline_orders")
        assert (parent["root"]["job"]["namespace"], parent["root"]["job"]["name"]) == ("airflow-prod", "shop")
    # Another try of the task is another parent run; the same try, the same.
    first = airflow_parent({"AIRFLOW_CTX_DAG_ID": "shop", "AIRFLOW_CTX_TASK_ID": "t", "AIRFLOW_CTX_DAG_RUN_ID": "r", "AIRFLOW_CTX_TRY_NUMBER": "1"}, "ns")
    again = airflow_parent({"AIRFLOW_CTX_DAG_ID": "shop", "AIRFLOW_CTX_TASK_ID": "t", "AIRFLOW_CTX_DAG_RUN_ID": "r", "AIRFLOW_CTX_TRY_NUMBER": "1"}, "ns")
    retry = airflow_parent({"AIRFLOW_CTX_DAG_ID": "shop", "AIRFLOW_CTX_TASK_ID": "t", "AIRFLOW_CTX_DAG_RUN_ID": "r", "AIRFLOW_CTX_TRY_NUMBER": "2"}, "ns")
    assert first is not None and again is not None and retry is not None
    assert first.facet().run.runId == again.facet().run.runId != retry.facet().run.runId
    assert airflow_parent({}, "ns") is None
    # With a logical date: the ids Airflow's OpenLineage provider gives the task instance and the DAG run.
    from openlineage.client.uuid import generate_static_uuid

    dated = airflow_parent({
        "AIRFLOW_CTX_DAG_ID": "shop", "AIRFLOW_CTX_TASK_ID": "t", "AIRFLOW_CTX_DAG_RUN_ID": "scheduled__2026-12-06T00:00:00+00:00",
        "AIRFLOW_CTX_TRY_NUMBER": "3", "AIRFLOW_CTX_LOGICAL_DATE": "2026-12-06T00:00:00+00:00",
    }, "ns")
    assert dated is not None
    day = datetime(2026, 12, 6, tzinfo=UTC)
    assert dated.facet().run.runId == str(generate_static_uuid(day, b"ns.shop.t.3.-1"))
    assert dated.facet().root is not None and dated.facet().root.run.runId == str(generate_static_uuid(day, b"ns.shop.0"))


def test_the_cli_run_writes_lineage_to_the_configured_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from icefield.cli import cli

    root = _shop(tmp_path, {"transport": "file", "path": "out/lineage.jsonl"})
    monkeypatch.chdir(root)
    res = CliRunner().invoke(cli, ["--json", "run", "customers"])
    assert res.exit_code == 0, res.output
    lines = (root / "out" / "lineage.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["eventType"] for line in lines] == ["START", "COMPLETE"]
    assert not (root / ".icefield" / "lineage.jsonl").exists()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"transport": "http"}, "lineage.url is not set"),
        ({"transport": "http", "url": "localhost:5000"}, "is not an http(s) URL"),
        ({"transport": "file", "url": "http://127.0.0.1:5000"}, "set transport: http or drop url"),
        ({"transport": "console", "path": "x.jsonl"}, "set transport: file or drop path"),
        ({"transport": "kafka"}, "transport"),
        ({"transport": "file", "namespace": " "}, "lineage.namespace is empty"),
        ({"transport": "file", "colour": "blue"}, "colour"),
    ],
)
def test_a_lineage_section_that_cannot_work_is_refused_naming_the_key(tmp_path: Path, section: dict[str, Any], message: str) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "p", "lineage": section}), encoding="utf-8")
    with pytest.raises(ConfigError, match="lineage") as info:
        load_project(root, env={})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (SourceRef("sql", "postgresql+psycopg2://app@db.internal:5433/shop#sales.orders"), [("postgres://db.internal:5433", "shop.sales.orders")]),
        (SourceRef("sql", "postgresql://app@db/shop#orders"), [("postgres://db:5432", "shop.public.orders")]),
        (SourceRef("sql", "mysql+pymysql://u@m:3306/shop#orders"), [("mysql://m:3306", "shop.orders")]),
        (SourceRef("kafka", "kafka://b1:9092,b2:9092/orders,refunds"), [("kafka://b1:9092", "orders"), ("kafka://b1:9092", "refunds")]),
        (SourceRef("files", "file:///data/in/2026-*/*.csv"), [("file", "/data/in")]),
        (SourceRef("debezium", "kafka://k:9092/pg.public.orders"), [("kafka://k:9092", "pg.public.orders")]),
        (SourceRef("model", "file:///p/models/x.sql"), []),
        (SourceRef("sql", "sqlite:////srv/app.db#orders"), [("sqlite:///srv/app.db", "orders")]),
    ],
)
def test_sources_are_named_by_the_openlineage_naming_conventions(source: SourceRef, expected: list[tuple[str, str]]) -> None:
    assert source_datasets(source) == expected


def test_column_lineage_follows_columns_through_a_cte_a_join_and_an_aggregate() -> None:
    fields, indirect = column_lineage(
        "with paid as (select * from shop.orders where status = 'paid') "
        "select c.country, date_trunc('day', p.created_at) as day, sum(p.amount * 2) as revenue "
        "from paid p join shop.customers c on p.customer_id = c.id group by all",
        {
            "shop.orders": {"id": "long", "customer_id": "long", "amount": "double", "created_at": "timestamp", "status": "string"},
            "shop.customers": {"id": "long", "country": "string"},
        },
    )
    assert fields == {
        "country": [("shop.customers", "country", "IDENTITY")],
        "day": [("shop.orders", "created_at", "TRANSFORMATION")],
        "revenue": [("shop.orders", "amount", "AGGREGATION")],
    }
    assert ("shop.orders", "status", "FILTER") in indirect and ("shop.customers", "id", "JOIN") in indirect


class _Receiver(ThreadingHTTPServer):
    """An OpenLineage HTTP receiver (what Marquez's /api/v1/lineage does with a POST: keeps the event)."""

    def __init__(self, status: int = 201) -> None:
        self.received: list[tuple[str, str | None, dict[str, Any]]] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((self.path, self.headers.get("Authorization"), json.loads(body)))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_the_http_transport_posts_each_event_to_the_receiver_with_the_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = _Receiver()
    try:
        monkeypatch.setenv("LINEAGE_KEY", "s3cr3t")
        root = _shop(tmp_path, {"transport": "http", "url": receiver.url, "api_key": "${env:LINEAGE_KEY}"})
        done = _run(root)
        assert done.error is None, done.failures
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert {(path, auth) for path, auth, _ in receiver.received} == {("/api/v1/lineage", "Bearer s3cr3t")}
    events = [e for _, _, e in receiver.received]
    for e in events:
        _validate(e)
    assert sorted((e["job"]["name"], e["eventType"]) for e in events) == sorted(
        (job, state) for job in ("orders", "customers", "model.revenue") for state in ("START", "COMPLETE")
    )
    assert not (root / ".icefield" / "lineage.jsonl").exists()


def test_a_receiver_that_is_down_costs_the_events_not_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = _shop(tmp_path, {"transport": "http", "url": f"http://127.0.0.1:{port}", "retries": 0, "timeout": 1})
    project = load_project(root, env={})
    catalog = open_catalog(project)
    try:
        with caplog.at_level(logging.WARNING, logger="icefield.observe.lineage"):
            done = run_plan(project, build_plan(project, ("customers",), models=False), catalog, observers=configured_observers(project))
    finally:
        catalog.engine.dispose()
    assert done.error is None and done.results[0].rows_committed == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "icefield.observe.lineage"]
    assert len(warnings) == 2 and all("not sent through the http transport" in w for w in warnings), warnings


def test_the_demo_sends_schema_valid_events_a_held_batch_fails_its_run_and_every_run_ends(tmp_path: Path) -> None:
    from openlineage.client.transport.file import FileConfig, FileTransport

    from icefield.cli.output import Output
    from icefield.demo import run_demo
    from icefield.observe.lineage import LineageObserver

    path = tmp_path / "lineage.jsonl"
    observer = LineageObserver(FileTransport(FileConfig(log_file_path=str(path), append=True)), "demo", "file:///warehouse")
    report = run_demo(tmp_path / "demo", fresh=False, out=Output(as_json=True), observers=[observer])
    assert report["ok"], report["checks"]
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    runs: dict[str, list[str]] = defaultdict(list)
    for e in events:
        _validate(e)
        runs[e["run"]["runId"]].append(e["eventType"])
    assert all(states in (["START", "COMPLETE"], ["START", "FAIL"]) for states in runs.values()), runs
    # The demo's gate holds a batch once: that run fails with the gate's verdict, and later runs complete.
    failed = [e for e in events if e["eventType"] == "FAIL"]
    assert failed and all(e["run"]["facets"]["icefield"]["status"] == "held" for e in failed)
    held = failed[0]["outputs"]
    assert any(a["success"] is False and a["severity"] == "error" for o in held for a in o["facets"].get("dataQualityAssertions", {}).get("assertions", []))
    # Inputs: the demo's files by folder, its SQLite tables by their file, the model's Iceberg tables.
    demo = (tmp_path / "demo").absolute()
    inputs = {(e["job"]["name"], i["namespace"], i["name"]) for e in events for i in e["inputs"]}
    assert {
        ("rates", "file", str(demo / "data" / "rates")),
        ("orders", f"sqlite://{demo / 'data' / 'shop.db'}", "orders"),
        ("model.daily_revenue", "file:///warehouse", "shop.orders"),
        ("model.daily_revenue", "file:///warehouse", "raw.rates"),
    } <= inputs, inputs


def test_the_airflow_task_sends_the_events_of_its_node_with_the_task_as_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from icefield.integrations.airflow.tasks import run_node

    root = _shop(tmp_path, {"transport": "file"})
    for key, value in {"DAG_ID": "shop", "TASK_ID": "pipeline_customers", "DAG_RUN_ID": "scheduled__2026-12-07", "TRY_NUMBER": "1"}.items():
        monkeypatch.setenv(f"AIRFLOW_CTX_{key}", value)
    summary = run_node(str(root), "pipeline customers")
    assert summary["status"] == "success"
    events = _events(root)
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [("customers", "START"), ("customers", "COMPLETE")]
    for e in events:
        _validate(e)
        assert e["run"]["facets"]["parent"]["job"]["name"] == "shop.pipeline_customers"
        assert e["run"]["facets"]["parent"]["job"]["namespace"] == "default"
