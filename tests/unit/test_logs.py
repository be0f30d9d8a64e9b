"""Central logs (issue 19, item 3) without the log store: JSON lines carry the run's ids and Airflow's, the
``logs:`` block is validated with messages naming key, value and fix, the CLI writes JSON lines to a file,
and the shipping handler batches lines to an HTTP endpoint (a real local HTTP server standing in for
VictoriaLogs' ingestion API), retries, drops with a warning and never blocks the logging thread. The end
to end test with VictoriaLogs itself is ``tests/integration/test_logs_victorialogs.py``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from icefield.cli import cli
from icefield.config import load_project
from icefield.errors import ConfigError
from icefield.observe import JsonFormatter
from icefield.observe.events import ContextFilter, EventStream
from icefield.observe.logs import AirflowFilter, VictoriaLogsHandler, ingest_url

AIRFLOW_ENV = {
    "AIRFLOW_CTX_DAG_ID": "icefield_shop",
    "AIRFLOW_CTX_TASK_ID": "pipeline_orders",
    "AIRFLOW_CTX_DAG_RUN_ID": "scheduled__2026-12-07T06:00:00+00:00",
    "AIRFLOW_CTX_TRY_NUMBER": "2",
}


def _line(logger: logging.Logger, filters: list[logging.Filter], msg: str) -> dict[str, Any]:
    """``msg`` logged on ``logger`` through a handler with ``filters`` and the JSON formatter, parsed."""
    out: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            out.append(self.format(record))

    h = Keep(logging.DEBUG)
    for f in filters:
        h.addFilter(f)
    h.setFormatter(JsonFormatter())
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.info(msg)
    finally:
        logger.removeHandler(h)
    (line,) = out
    doc = json.loads(line)
    assert isinstance(doc, dict)
    return doc


def test_a_json_line_carries_the_run_pipeline_and_batch_of_the_run_it_is_logged_in() -> None:
    logger = logging.getLogger("icefield.test_logs.ids")
    filters: list[logging.Filter] = [ContextFilter(), AirflowFilter(env={})]
    stream = EventStream("run-7", "orders")
    with stream.running():
        in_run = _line(logger, filters, "reading")
        with stream.batch("orders-0001"):
            in_batch = _line(logger, filters, "writing")
    outside = _line(logger, filters, "idle")
    assert (in_run["run_id"], in_run["pipeline"], in_run["message"]) == ("run-7", "orders", "reading")
    assert "batch_id" not in in_run
    assert (in_batch["run_id"], in_batch["pipeline"], in_batch["batch_id"]) == ("run-7", "orders", "orders-0001")
    assert not {"run_id", "pipeline", "batch_id", "dag_id"} & set(outside)
    assert {"ts", "level", "logger", "message"} <= set(outside)


def test_a_json_line_carries_airflow_dag_task_run_and_try_from_the_task_environment() -> None:
    logger = logging.getLogger("icefield.test_logs.airflow")
    with EventStream("run-8", "orders").running():
        doc = _line(logger, [ContextFilter(), AirflowFilter(env=AIRFLOW_ENV)], "landed")
    assert doc["dag_id"] == "icefield_shop" and doc["task_id"] == "pipeline_orders"
    assert doc["dag_run_id"] == "scheduled__2026-12-07T06:00:00+00:00"
    assert doc["try_number"] == 2 and doc["run_id"] == "run-8"


def test_the_airflow_filter_reads_the_process_environment_at_each_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow sets AIRFLOW_CTX_* in the task process after logging is configured: read when a line comes."""
    logger = logging.getLogger("icefield.test_logs.airflow_env")
    f = AirflowFilter()
    for var in AIRFLOW_ENV:
        monkeypatch.delenv(var, raising=False)
    assert "dag_id" not in _line(logger, [f], "before")
    for var, value in AIRFLOW_ENV.items():
        monkeypatch.setenv(var, value)
    assert _line(logger, [f], "after")["task_id"] == "pipeline_orders"


# ---------------------------------------------------------------------------------------------- config


def _project(tmp_path: Path, logs: Any) -> Path:
    root = tmp_path / "p"
    root.mkdir(parents=True)
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "p", "logs": logs}), encoding="utf-8")
    return root


def test_the_logs_block_is_read_with_its_defaults(tmp_path: Path) -> None:
    cfg = load_project(_project(tmp_path, {"format": "json", "level": "INFO", "file": "logs/x.jsonl",
                                           "ship": {"url": "http://127.0.0.1:9428"}})).config.logs
    assert (cfg.format, cfg.level, cfg.file) == ("json", "info", "logs/x.jsonl")
    assert cfg.ship is not None and cfg.ship.stream_fields == ["pipeline"] and cfg.ship.retries == 3
    assert load_project(_project(tmp_path / "d", {})).config.logs.format == "text"


@pytest.mark.parametrize(
    ("logs", "expected"),
    [
        ({"format": "xml"}, r"logs\.format: Input should be 'text' or 'json' \(got 'xml'\)"),
        ({"level": "loud"}, r"logs\.level 'loud' is not a level; use one of debug, info, warning, error"),
        ({"file": " "}, r"logs\.file is empty; give a path"),
        ({"ship": {"url": "localhost:9428"}}, r"logs\.ship\.url 'localhost:9428' is not an http\(s\) URL.*http://127\.0\.0\.1:9428"),
        ({"ship": {}}, r"logs\.ship\.url"),
        ({"ship": {"url": "http://h:9428", "stream_fields": ["run_id"]}}, r"\['run_id'\] take a new value at every run"),
        ({"ship": {"url": "http://h:9428", "batch_size": 0}}, r"logs\.ship\.batch_size"),
        ({"destination": "stderr"}, r"logs\.destination"),
    ],
)
def test_a_bad_logs_block_is_refused_naming_key_value_and_fix(tmp_path: Path, logs: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_project(_project(tmp_path, logs))


# ---------------------------------------------------------------------------------------------- CLI


def _sqlite_project(tmp_path: Path, logs: dict[str, Any]) -> Path:
    import sqlite3

    root = tmp_path / "shop"
    assert CliRunner().invoke(cli, ["init", str(root)]).exit_code == 0
    con = sqlite3.connect(root / "shop.db")
    con.execute("create table orders (id integer primary key, v text)")
    con.executemany("insert into orders values (?, ?)", [(i, f"v{i}") for i in range(1, 51)])
    con.commit()
    con.close()
    (root / "pipelines").mkdir(exist_ok=True)
    for f in (root / "pipelines").glob("*.y*ml"):
        f.unlink()
    (root / "models").mkdir(exist_ok=True)
    for f in (root / "models").glob("*.sql"):
        f.unlink()
    (root / "pipelines" / "orders.yaml").write_text(textwrap.dedent(f"""\
        name: orders
        source: {{type: sql, url: "sqlite:///{root / 'shop.db'}", table: orders, cursor: id}}
        target: {{table: raw.orders}}
    """), encoding="utf-8")
    config = yaml.safe_load((root / "icefield.yaml").read_text(encoding="utf-8"))
    config["batch_size"] = 20
    config["logs"] = logs
    (root / "icefield.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


def _icefield(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", "ICEFIELD__"))}
    return subprocess.run([sys.executable, "-m", "icefield.cli", *args], capture_output=True, text=True,
                          check=False, cwd=cwd, env=env, timeout=300)


def test_a_run_appends_json_lines_with_its_ids_to_the_configured_file(tmp_path: Path) -> None:
    root = _sqlite_project(tmp_path, {"format": "json", "level": "info", "file": "logs/icefield.jsonl"})
    proc = _icefield("--json", "run", "orders", cwd=root)
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    assert proc.stderr == ""  # the lines went to the file, not to stderr
    lines = [json.loads(x) for x in (root / "logs" / "icefield.jsonl").read_text(encoding="utf-8").splitlines()]
    ours = [d for d in lines if d.get("run_id") == run_id]
    assert ours and all(d["pipeline"] == "orders" for d in ours)
    events = [d["event"]["event"] for d in ours if "event" in d]
    assert events[0] == "run_started" and events[-1] == "run_finished" and events.count("batch_committed") == 3
    committed = [d for d in ours if d.get("event", {}).get("event") == "batch_committed"]
    assert all(d["batch_id"] == d["event"]["batch_id"] for d in committed)


def test_cli_flags_win_over_the_logs_block(tmp_path: Path) -> None:
    root = _sqlite_project(tmp_path, {"format": "json", "level": "info", "file": "logs/icefield.jsonl"})
    proc = _icefield("--log-format", "text", "--log-level", "warning", "--log-file", str(tmp_path / "other.log"), "run", "orders", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert not (root / "logs" / "icefield.jsonl").exists()
    assert (tmp_path / "other.log").read_text(encoding="utf-8") == ""  # nothing at warning in a good run
    proc = _icefield("--log-format", "text", "--log-level", "info", "--log-file", str(tmp_path / "other.log"), "run", "orders", cwd=root)
    text = (tmp_path / "other.log").read_text(encoding="utf-8")
    assert proc.returncode == 0 and " INFO icefield.events: run " in text and not text.lstrip().startswith("{")


def test_a_run_shipping_to_a_store_that_is_down_succeeds_and_says_so_in_its_local_log(tmp_path: Path) -> None:
    down = _Store()
    url = down.url
    down.close()  # connection refused from now on
    root = _sqlite_project(tmp_path, {"format": "json", "level": "info", "file": "logs/icefield.jsonl",
                                      "ship": {"url": url, "retries": 1}})
    t0 = time.monotonic()
    proc = _icefield("--json", "run", "orders", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 60
    lines = [json.loads(x) for x in (root / "logs" / "icefield.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any(d["event"]["event"] == "run_finished" for d in lines if "event" in d)
    warnings = [d["message"] for d in lines if d["logger"] == "icefield.logs"]
    assert warnings and all(f"log lines to {url} after 2 attempts (ConnectionRefusedError" in w for w in warnings)


def test_a_bad_log_ship_url_is_a_usage_error() -> None:
    res = CliRunner().invoke(cli, ["--log-ship", "127.0.0.1:9428", "tables"])
    assert res.exit_code == 2
    assert "--log-ship '127.0.0.1:9428' is not an http(s) URL" in res.output


# ---------------------------------------------------------------------------------------------- shipping


class _Store:
    """A local HTTP server recording what is posted to it; it answers ``fail`` first requests with 503
    and every request after ``delay`` seconds."""

    def __init__(self, fail: int = 0, delay: float = 0.0) -> None:
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str], list[str]]] = []
        self.fail = fail
        self.delay = delay
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                time.sleep(store.delay)
                url = urllib.parse.urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                store.requests.append((url.path, urllib.parse.parse_qs(url.query), headers, body.splitlines()))
                if store.fail > 0:
                    store.fail -= 1
                    self.send_response(503)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for _, _, _, body in self.requests for x in body]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def store() -> Iterator[_Store]:
    s = _Store()
    yield s
    s.close()


@pytest.fixture
def shipper_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("icefield.test_logs.ship")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


def test_ingest_url_names_message_time_and_stream_fields() -> None:
    url = urllib.parse.urlsplit(ingest_url("http://vl:9428/", ["pipeline", "dag_id"]))
    assert url.path == "/insert/jsonline"
    assert urllib.parse.parse_qs(url.query) == {"_msg_field": ["message"], "_time_field": ["ts"], "_stream_fields": ["pipeline,dag_id"]}
    assert ingest_url("http://vl:9428/insert/jsonline").startswith("http://vl:9428/insert/jsonline?")


def test_lines_are_shipped_in_batches_with_their_ids_and_flushed_on_close(store: _Store, shipper_logger: logging.Logger) -> None:
    h = VictoriaLogsHandler(store.url, batch_size=40, flush_seconds=30, headers={"AccountID": "7"})
    h.addFilter(ContextFilter())
    shipper_logger.addHandler(h)
    with EventStream("run-9", "orders").running():
        for i in range(100):
            shipper_logger.info("line %d", i)
    h.close()  # what logging.shutdown does at exit: everything queued is sent before it returns
    assert [len(body) for *_, body in store.requests] == [40, 40, 20]
    path, query, headers, _ = store.requests[0]
    assert path == "/insert/jsonline" and query["_msg_field"] == ["message"] and query["_time_field"] == ["ts"]
    assert headers["accountid"] == "7" and headers["content-type"] == "application/stream+json"
    lines = store.lines()
    assert [d["message"] for d in lines] == [f"line {i}" for i in range(100)]
    assert {(d["run_id"], d["pipeline"]) for d in lines} == {("run-9", "orders")}
    assert h.shipped == 100 and h.dropped == 0


def test_a_store_failing_for_a_while_gets_the_batch_on_a_retry(shipper_logger: logging.Logger) -> None:
    store = _Store(fail=2)
    try:
        h = VictoriaLogsHandler(store.url, flush_seconds=0.05, retries=3, backoff=0.01)
        shipper_logger.addHandler(h)
        shipper_logger.warning("kept")
        h.flush()
        assert len(store.requests) == 3 and [d["message"] for d in store.lines()] == ["kept"] * 3
        assert h.shipped == 1 and h.dropped == 0
    finally:
        store.close()


def test_a_store_that_is_down_costs_a_warning_never_the_run(shipper_logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    down = _Store()
    url = down.url
    down.close()  # nothing listens there any more: connection refused
    h = VictoriaLogsHandler(url, flush_seconds=0.05, retries=2, backoff=0.01, timeout_seconds=1)
    shipper_logger.addHandler(h)
    t0 = time.monotonic()
    for i in range(50):
        shipper_logger.error("line %d", i)
    assert time.monotonic() - t0 < 0.5  # the logging thread only queues
    with caplog.at_level(logging.WARNING, logger="icefield.logs"):
        h.flush()
    assert h.dropped == 50 and h.shipped == 0
    (warning,) = [r for r in caplog.records if r.name == "icefield.logs"]
    assert f"could not ship 50 log lines to {url} after 3 attempts" in warning.getMessage()
    assert "ConnectionRefusedError" in warning.getMessage() and "the run goes on" in warning.getMessage()


def test_a_slow_store_never_blocks_the_logging_thread_and_a_full_queue_drops_with_a_warning(
    shipper_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    store = _Store(delay=0.5)
    try:
        h = VictoriaLogsHandler(store.url, batch_size=10, flush_seconds=0.01, queue_size=20, timeout_seconds=5)
        shipper_logger.addHandler(h)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="icefield.logs"):
            for i in range(200):
                shipper_logger.info("line %d", i)
            assert time.monotonic() - t0 < 0.4  # one post alone takes 0.5 s
            h.close()
        assert h.dropped > 0 and h.shipped + h.dropped == 200
        assert len(store.lines()) == h.shipped
        assert any("queue to" in r.getMessage() and "log lines dropped" in r.getMessage() for r in caplog.records)
    finally:
        store.close()


def test_the_shippers_own_warnings_are_not_shipped(store: _Store) -> None:
    h = VictoriaLogsHandler(store.url, flush_seconds=0.05)
    logging.getLogger("icefield.logs").addHandler(h)
    try:
        logging.getLogger("icefield.logs").warning("could not ship 3 log lines")
        h.flush()
    finally:
        logging.getLogger("icefield.logs").removeHandler(h)
        h.close()
    assert store.requests == []


def test_an_airflow_task_adds_the_projects_file_and_shipper_for_its_run_only(
    store: _Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In an Airflow task the process's logging is Airflow's: run_node adds the project's logs.file and
    logs.ship beside it for the run (project_handlers), and takes them away after, flushed."""
    from icefield.config.logs import LogsConfig
    from icefield.observe.logs import project_handlers

    for var, value in AIRFLOW_ENV.items():
        monkeypatch.setenv(var, value)
    config = LogsConfig.model_validate(
        {"format": "json", "level": "info", "file": "logs/task.jsonl", "ship": {"url": store.url, "flush_seconds": 30}}
    )
    logger = logging.getLogger("icefield.test_logs.task")
    logger.setLevel(logging.DEBUG)
    root = logging.getLogger()
    before = list(root.handlers)
    with project_handlers(config, tmp_path), EventStream("run-10", "orders").running():
        logger.info("in the task")
        logger.debug("below logs.level")
    assert root.handlers == before
    logger.info("after the task")
    (local,) = [json.loads(x) for x in (tmp_path / "logs" / "task.jsonl").read_text(encoding="utf-8").splitlines()]
    (shipped,) = store.lines()  # shipped by the flush on leaving the block, not 30 s later
    for doc in (local, shipped):
        assert (doc["message"], doc["run_id"], doc["dag_id"], doc["try_number"]) == ("in the task", "run-10", "icefield_shop", 2)


def test_run_node_of_an_airflow_task_ships_the_runs_lines_with_the_tasks_ids(
    store: _Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated DAGs' task callable (run_node, in the task's process): the project's logs.ship gets the
    run's lines with the task's DAG, task, run and try; the XCom summary's run_id finds them."""
    from icefield.integrations.airflow.tasks import run_node

    for var, value in AIRFLOW_ENV.items():
        monkeypatch.setenv(var, value)
    root = _sqlite_project(tmp_path, {"format": "json", "level": "info", "ship": {"url": store.url}})
    # As in a task's process: icefield's loggers unset, the root's level (Airflow's INFO) applies.
    loggers = {logging.getLogger(): logging.INFO, logging.getLogger("icefield"): logging.NOTSET,
               logging.getLogger("icefield.events"): logging.NOTSET}
    saved = {lg: lg.level for lg in loggers}
    for lg, level in loggers.items():
        lg.setLevel(level)
    try:
        summary = run_node(str(root), "pipeline orders")
    finally:
        for lg, level in saved.items():
            lg.setLevel(level)
    assert summary["status"] == "success" and summary["rows_committed"] == 50
    ours = [d for d in store.lines() if d.get("run_id") == summary["run_id"]]
    assert [d["event"]["event"] for d in ours if "event" in d].count("batch_committed") == 3
    assert {(d["dag_id"], d["task_id"], d["try_number"], d["pipeline"]) for d in ours} == {
        ("icefield_shop", "pipeline_orders", 2, "orders")
    }


def test_shipped_lines_are_redacted(store: _Store, shipper_logger: logging.Logger) -> None:
    from icefield.config.secrets import register_secret

    secret = "CANARY_ship_5e1d"
    register_secret(secret)
    h = VictoriaLogsHandler(store.url, flush_seconds=0.05)
    shipper_logger.addHandler(h)
    try:
        raise ValueError(f"login refused for {secret}")
    except ValueError:
        shipper_logger.exception("connecting with password %s failed", secret)
    h.flush()
    (line,) = store.lines()
    assert secret not in json.dumps(line) and "***" in line["message"] and "***" in line["error"]
