"""Airflow runs icefield projects: the real Airflow 3.3 (the ``airflow`` extra), its DagBag, ``airflow dags
test`` and the stack's server (API server, scheduler, DAG processor, triggerer on 127.0.0.1, LocalExecutor,
SQLite metadata database, simple auth manager with an admin and a viewer).

Nothing is mocked. Faults are injected through icefield's failpoints by the test's own DAG files (a
transient error, then a kill -9 of the task in the middle of a batch, each on the first attempt only).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack.airflow import Airflow
from tests.integration.conftest import _free_port

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "airflow" / "dags" / "iceberg_etl_dag.py"
RUN_TIMEOUT = 240.0


# ---------------------------------------------------------------------------------------------- projects


def _demo(directory: Path) -> Path:
    """A copy of the shop demo project with its generated sources (same seed: same rows every time)."""
    from icefield.demo import prepare_demo

    prepare_demo(directory)
    return directory


def _small(
    directory: Path, name: str, pipelines: dict[str, str], db_rows: dict[str, list[tuple[Any, ...]]], scheduling: str = "", time_type: str = "TEXT"
) -> Path:
    """A project ``name`` with a SQLite source ``data/src.db`` (tables ``db_rows``: id, customer_id,
    amount, updated_at) and the given pipeline files."""
    (directory / "pipelines").mkdir(parents=True)
    (directory / "data").mkdir()
    (directory / "icefield.yaml").write_text(
        f"name: {name}\ncatalog: {{name: icefield}}\nwarehouse: .icefield/warehouse\nbatch_size: 50\n{scheduling}"
    )
    for pipe, text in pipelines.items():
        (directory / "pipelines" / f"{pipe}.yaml").write_text(textwrap.dedent(text))
    _rows(directory, db_rows, time_type)
    return directory


def _rows(directory: Path, db_rows: dict[str, list[tuple[Any, ...]]], time_type: str = "TEXT") -> None:
    """Insert (or replace) ``db_rows`` in the source; ``time_type`` is ``updated_at``'s declared type when the
    table is created (TIMESTAMP: the table types it as a timestamp)."""
    with sqlite3.connect(directory / "data" / "src.db") as db:
        for table, rows in db_rows.items():
            db.execute(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, customer_id INTEGER, amount REAL, updated_at {time_type})")
            db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?, ?)", rows)


def _orders(first: int, n: int, customer: int = 1) -> list[tuple[Any, ...]]:
    return [(i, customer, float(i), f"2026-01-01 00:{i // 60 % 60:02d}:{i % 60:02d}") for i in range(first, first + n)]


def _pipeline(name: str, table: str, extra: str = "", source: str = "orders") -> str:
    return f"""
    name: {name}
    source: {{type: sql, url: "sqlite:///data/src.db", table: {source}, cursor: updated_at}}
    target: {{table: {table}, mode: merge, keys: [id]}}
    {extra}
    """


def _tables(project_dir: Path) -> dict[str, tuple[int, str]]:
    """Every data table of the project (not quarantines, not icefield's own): (row count, content hash)."""
    from icefield.catalog import open_catalog
    from icefield.config import load_project

    project = load_project(project_dir)
    catalog = open_catalog(project)
    out: dict[str, tuple[int, str]] = {}
    for ns in catalog.list_namespaces():
        if ns[0] == "icefield":
            continue
        for ident in catalog.list_tables(ns):
            name = ".".join(ident)
            data = catalog.load_table(ident).scan().to_arrow()
            if name.endswith("__quarantine"):
                rows = sorted(repr((r["check"], r["reason"], r["raw"])) for r in data.to_pylist())
            else:
                cols = sorted(data.column_names)
                rows = sorted(repr(tuple(r[c] for c in cols)) for r in data.to_pylist())
            out[name] = (data.num_rows, hashlib.sha256("\n".join(rows).encode()).hexdigest())
    return out


def _ids(project_dir: Path, table: str) -> list[int]:
    from icefield.catalog import open_catalog
    from icefield.config import load_project

    catalog = open_catalog(load_project(project_dir))
    return sorted(catalog.load_table(table).scan().to_arrow().column("id").to_pylist())


# ---------------------------------------------------------------------------------------------- Airflow


def _env(home: Path, project: Path, dags: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        ICEFIELD_PROJECT=str(project),
        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    )
    return env


def _airflow(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_dag_file_parses_into_the_project_plan_cheaply(tmp_path: Path) -> None:
    """The DagBag of the real Airflow: no import errors, no cycles, one task per pipeline and model wired as
    the plan says, tags, owners, retries and pools from the specs; parsing loads no pyarrow, pyiceberg nor
    catalog, and its time is printed (bounded loosely: it is Airflow's import, mostly)."""
    project = _demo(tmp_path / "shop")
    pipe = project / "pipelines" / "orders.yaml"
    pipe.write_text(
        pipe.read_text()
        + "scheduling: {retries: 3, retry_delay: 30s, retry_exponential_backoff: true, max_retry_delay: 10m, timeout: 1h, owner: sales-data, tags: [orders]}\n"
    )
    rates = project / "pipelines" / "rates.yaml"
    rates.write_text(rates.read_text() + "scheduling: {schedule: '15 * * * *'}\n")
    script = textwrap.dedent(
        f"""
        import json, sys, time
        t = time.perf_counter()
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(DAG_FILE)!r})
        out = {{"seconds": time.perf_counter() - t, "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
               "loaded": sorted(m for m in ("pyarrow", "pyiceberg", "duckdb") if m in sys.modules), "dags": {{}}}}
        for dag_id, dag in bag.dags.items():
            dag.check_cycle() if hasattr(dag, "check_cycle") else None
            out["dags"][dag_id] = {{
                "tags": sorted(dag.tags), "schedule": repr(dag.timetable),
                "tasks": {{t.task_id: {{"up": sorted(t.upstream_task_ids), "pool": t.pool, "owner": t.owner,
                            "retries": t.retries, "delay": t.retry_delay.total_seconds(),
                            "backoff": t.retry_exponential_backoff,
                            "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None}}
                          for t in dag.tasks}}}}
        print(json.dumps(out))
        """
    )
    env = _env(tmp_path / "home", project, DAG_FILE.parent)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    bag = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"DagBag parse of the shop project: {bag['seconds']:.2f} s")
    assert bag["errors"] == {}
    assert bag["loaded"] == [], "parsing the DAG file must not load the data engine"
    assert bag["seconds"] < 60
    assert sorted(bag["dags"]) == ["icefield_shop", "icefield_shop__maintenance", "icefield_shop__rates"]
    main = bag["dags"]["icefield_shop"]["tasks"]
    assert sorted(main) == ["clickstream", "customers", "model.daily_revenue", "order_items", "orders", "orders_cdc"]
    assert main["orders"]["up"] == ["customers"]  # its references gate reads shop.customers
    assert main["model.daily_revenue"]["up"] == ["orders"]  # rates runs on its own schedule, in its own DAG
    assert main["orders"]["owner"] == "sales-data"
    assert (main["orders"]["retries"], main["orders"]["delay"], main["orders"]["backoff"], main["orders"]["timeout"]) == (3, 30, 2.0, 3600)
    assert "orders" in bag["dags"]["icefield_shop"]["tags"] and "icefield" in bag["dags"]["icefield_shop"]["tags"]
    # Pipelines reading the same database share a pool; others have their own.
    assert main["orders"]["pool"] == main["customers"]["pool"] == main["order_items"]["pool"] != main["clickstream"]["pool"]
    assert list(bag["dags"]["icefield_shop__rates"]["tasks"]) == ["rates"]
    assert "15 * * * *" in bag["dags"]["icefield_shop__rates"]["schedule"]
    maint = bag["dags"]["icefield_shop__maintenance"]["tasks"]
    assert maint["orders.expire"]["up"] == ["orders.compact"]


def test_a_project_that_does_not_load_is_an_import_error_naming_the_fix(tmp_path: Path) -> None:
    project = _small(tmp_path / "p", "bad", {"orders": _pipeline("orders", "raw.orders", "scheduling: {schedule: '30 25 * * *'}")}, {"orders": _orders(1, 3)})
    script = f"from airflow.dag_processing.dagbag import DagBag; import json; print(json.dumps({{k: str(v) for k, v in DagBag(dag_folder={str(DAG_FILE)!r}).import_errors.items()}}))"
    done = subprocess.run([sys.executable, "-c", script], env=_env(tmp_path / "home", project, DAG_FILE.parent), capture_output=True, text=True, timeout=300, check=False)
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(errors) == [str(DAG_FILE)]
    assert "scheduling.schedule: hour 25 is out of range" in errors[str(DAG_FILE)]


def test_airflow_dags_test_of_the_demo_lands_what_icefield_run_lands(tmp_path: Path) -> None:
    by_cli = _demo(tmp_path / "cli")
    by_airflow = _demo(tmp_path / "airflow")
    cli = subprocess.run([str(Path(sys.executable).parent / "icefield"), "run"], cwd=by_cli, capture_output=True, text=True, timeout=600, check=False)
    assert cli.returncode == 0, cli.stderr[-3000:]
    env = _env(tmp_path / "home", by_airflow, DAG_FILE.parent)
    migrated = _airflow(env, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    started = time.perf_counter()
    done = _airflow(env, "dags", "test", "icefield_shop", timeout=600)
    print(f"airflow dags test icefield_shop: {time.perf_counter() - started:.1f} s")
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert "state=success" in done.stdout + done.stderr
    cli_tables, airflow_tables = _tables(by_cli), _tables(by_airflow)
    assert set(cli_tables) >= {"shop.orders", "shop.customers", "raw.clickstream", "analytics.daily_revenue", "shop.orders__quarantine"}
    assert airflow_tables == cli_tables


# ---------------------------------------------------------------------------------------------- the server

_FAULTS = '''
"""Test DAGs: projects under ICEFIELD_TEST_PROJECTS, with a fault injected on the first attempt only."""
import os
from pathlib import Path

from icefield import failpoints
from icefield.errors import TransientError
from icefield.integrations.airflow import project_dags

ROOT = Path(os.environ["ICEFIELD_TEST_PROJECTS"])


def _inject(point: str) -> None:
    # The task runner exports the task's context (AIRFLOW_CTX_DAG_ID...) before it executes the task.
    project = os.environ.get("AIRFLOW_CTX_DAG_ID", "").removeprefix("icefield_")
    if point != "after-data-files" or project not in ("flaky", "killed"):
        return
    mark = ROOT / project / "first-attempt-done"
    if mark.exists():
        return
    mark.touch()
    if project == "flaky":
        raise TransientError("injected: the object store timed out on the first attempt")
    os._exit(137)  # like kill -9 in the middle of the batch: data files written, nothing committed


failpoints.install(_inject)
for name in sorted(p.name for p in ROOT.iterdir() if (p / "icefield.yaml").is_file()):
    globals().update(project_dags(ROOT / name))
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    """The stack's Airflow on a free port with two DAG files: the repository's (the shop demo) and the test
    projects' (under ``projects``, created by the tests before they trigger, parsed every few seconds)."""
    base = tmp_path_factory.mktemp("airflow")
    projects = base / "projects"
    projects.mkdir()
    dags = base / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)
    (dags / "test_projects_dag.py").write_text(_FAULTS)
    shop = _demo(base / "shop")
    af = Airflow(
        base / "stack", port=_free_port(), dags_folder=dags, project=shop,
        env={"ICEFIELD_TEST_PROJECTS": str(projects), "ICEFIELD_ALERTS_FILE": str(base / "alerts.jsonl")},
    )
    af.up(timeout=300)
    af.projects = projects  # type: ignore[attr-defined]
    af.shop = shop  # type: ignore[attr-defined]
    af.alerts = base / "alerts.jsonl"  # type: ignore[attr-defined]
    try:
        yield af
    finally:
        af.stop()


def _wait_for_dag(af: Airflow, dag_id: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _ = af.api("GET", f"dags/{dag_id}")
        if status == 200:
            return
        time.sleep(2)
    raise AssertionError(f"the DAG processor did not parse {dag_id} in {timeout:.0f}s; import errors: {af.api('GET', 'importErrors')[1]}")


def _trigger(af: Airflow, dag_id: str, logical_date: dt.datetime | None = None, unpause: bool = True, conf: dict[str, Any] | None = None) -> str:
    _wait_for_dag(af, dag_id)
    if unpause:
        status, body = af.api("PATCH", f"dags/{dag_id}", {"is_paused": False})
        assert status == 200, body
    when = logical_date or dt.datetime.now(dt.UTC)
    status, run = af.api("POST", f"dags/{dag_id}/dagRuns", {"logical_date": when.isoformat(), "conf": conf or {}})
    assert status == 200, run
    return str(run["dag_run_id"])


def _finish(af: Airflow, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> tuple[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        _, run = af.api("GET", f"dags/{dag_id}/dagRuns/{run_id}")
        if run["state"] in ("success", "failed"):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f}s")
        time.sleep(2)
    _, tis = af.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances")
    return run["state"], {t["task_id"]: t for t in tis["task_instances"]}


def _xcom(af: Airflow, dag_id: str, run_id: str, task: str) -> Any:
    status, body = af.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task}/xcomEntries/return_value")
    assert status == 200, body
    return body["value"]


def test_a_run_triggered_through_the_rest_api_is_run_by_the_scheduler(server: Airflow) -> None:
    # The viewer reads but cannot trigger; the admin triggers.
    _wait_for_dag(server, "icefield_shop")
    status, _ = server.api("POST", "dags/icefield_shop/dagRuns", {"logical_date": None}, user="viewer")
    assert status == 403
    assert server.api("GET", "dags/icefield_shop", user="viewer")[0] == 200
    with pytest.raises(Exception, match="401"):
        import urllib.request

        urllib.request.urlopen(f"{server.url()}/api/v2/dags", timeout=10)
    run_id = _trigger(server, "icefield_shop")
    state, tasks = _finish(server, "icefield_shop", run_id)
    assert state == "success", {k: v["state"] for k, v in tasks.items()}
    assert sorted(tasks) == ["clickstream", "customers", "model.daily_revenue", "order_items", "orders", "orders_cdc", "rates"]
    orders = _xcom(server, "icefield_shop", run_id, "orders")
    assert (orders["status"], orders["table"], orders["rows_committed"], orders["rows_quarantined"]) == ("success", "shop.orders", 1997, 3)
    assert len(orders["snapshots"]) == orders["batches"] == 4
    assert _tables(server.shop)["shop.orders"][0] == 1997  # type: ignore[attr-defined]


@pytest.mark.parametrize("fault", ["flaky", "killed"])
def test_a_task_that_fails_on_its_first_attempt_is_retried_and_lands_every_row_once(server: Airflow, fault: str) -> None:
    """``flaky``: a TransientError after the batch's data files are written; ``killed``: the task process
    dies there (os._exit, like kill -9). Both on the first attempt only; the retry lands every row once."""
    projects: Path = server.projects  # type: ignore[attr-defined]
    _small(
        projects / fault, fault,
        {"orders": _pipeline("orders", "raw.orders", "scheduling: {retries: 2, retry_delay: 1s}")},
        {"orders": _orders(1, 120)},
    )
    server.import_pools(projects / fault)
    run_id = _trigger(server, f"icefield_{fault}")
    state, tasks = _finish(server, f"icefield_{fault}", run_id)
    assert state == "success", tasks
    assert tasks["orders"]["try_number"] == 2
    assert (projects / fault / "first-attempt-done").exists()
    assert _ids(projects / fault, "raw.orders") == list(range(1, 121))
    assert _xcom(server, f"icefield_{fault}", run_id, "orders")["rows_committed"] == 120


def test_a_terminal_failure_fails_at_once_without_a_retry(server: Airflow) -> None:
    projects: Path = server.projects  # type: ignore[attr-defined]
    broken = _small(
        projects / "broken", "broken",
        {"orders": _pipeline("orders", "raw.orders", "scheduling: {retries: 3, retry_delay: 1s}").replace("cursor: updated_at", "cursor: nope")},
        {"orders": _orders(1, 5)},
    )
    server.import_pools(broken)
    run_id = _trigger(server, "icefield_broken")
    state, tasks = _finish(server, "icefield_broken", run_id)
    assert state == "failed"
    assert (tasks["orders"]["state"], tasks["orders"]["try_number"]) == ("failed", 1)
    log = _task_log(server, "icefield_broken", run_id, "orders")
    assert "column 'nope' is not in the source" in log and "not retried" in log


def _task_log(af: Airflow, dag_id: str, run_id: str, task: str, try_number: int = 1) -> str:
    status, body = af.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task}/logs/{try_number}")
    assert status == 200, body
    return json.dumps(body)


def test_a_batch_held_by_its_gates_fails_its_task_and_passes_after_the_fix(server: Airflow) -> None:
    projects: Path = server.projects  # type: ignore[attr-defined]
    gate = "gates:\n      - references: {column: customer_id, to: raw.customers.id}\n    scheduling: {retries: 3, retry_delay: 1s}"
    held = _small(
        projects / "held", "held",
        {"customers": _pipeline("customers", "raw.customers", source="customers"), "orders": _pipeline("orders", "raw.orders", gate)},
        {"customers": [(1, 0, 0.0, "2026-01-01 00:00:00")], "orders": [*_orders(1, 10), (11, 99, 11.0, "2026-01-01 00:00:11")]},
    )
    server.import_pools(held)
    run_id = _trigger(server, "icefield_held")
    state, tasks = _finish(server, "icefield_held", run_id)
    assert state == "failed"
    assert tasks["customers"]["state"] == "success"
    assert (tasks["orders"]["state"], tasks["orders"]["try_number"]) == ("failed", 1)  # held: not retried
    log = _task_log(server, "icefield_held", run_id, "orders")
    assert "held by its gates" in log and "references" in log
    assert _ids(held, "raw.orders") == []  # main untouched: the batch waits on its audit branch

    _rows(held, {"customers": [(99, 0, 0.0, "2026-01-01 00:01:00")]})  # the customer arrives
    run_id = _trigger(server, "icefield_held")
    state, tasks = _finish(server, "icefield_held", run_id)
    assert state == "success", tasks
    assert _ids(held, "raw.orders") == list(range(1, 12))


def test_a_late_run_raises_its_deadline_alert(server: Airflow) -> None:
    """The DAG stays paused, so its run never starts: one hour after its logical date, with a deadline of
    one second, the scheduler finds it late and the triggerer calls icefield's alert."""
    projects: Path = server.projects  # type: ignore[attr-defined]
    late = _small(projects / "late", "late", {"orders": _pipeline("orders", "raw.orders")}, {"orders": _orders(1, 3)}, scheduling="scheduling: {deadline: 1s}\n")
    server.import_pools(late)
    run_id = _trigger(server, "icefield_late", logical_date=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), unpause=False)
    alerts: Path = server.alerts  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not found:
        if alerts.exists():
            found = [a for a in map(json.loads, alerts.read_text().splitlines()) if a.get("dag_id") == "icefield_late"]
        time.sleep(2)
    assert found, f"no alert for icefield_late in {alerts}; triggerer log:\n{(server.state_dir / 'triggerer.log').read_text()[-3000:]}"
    alert = found[0]
    assert (alert["alert"], alert["run_id"], alert["pipelines"]) == ("IcefieldRunLate", run_id, ["orders"])
    assert alert["deadline_after_logical_date"] == "0:00:01"


def _day_rows(first_id: int, day: int, n: int) -> list[tuple[Any, ...]]:
    return [(first_id + i, 1, float(first_id + i), f"2026-01-{day:02d} {i % 24:02d}:{i % 60:02d}:00") for i in range(n)]


def _backfill(af: Airflow, dag_id: str, start: str, end: str) -> list[str]:
    """Backfill ``dag_id`` for the logical dates [start, end] through the REST API (reprocessing completed
    runs) and wait until each of its runs ends; returns their states."""
    # On SQLite, Airflow refuses to create a backfill while the scheduler holds the database ("Database is
    # locked ... not supported on SQLite under concurrent access", 503): a busy moment, asked again shortly.
    give_up = time.monotonic() + 120
    while True:
        status, body = af.api("POST", "backfills", {"dag_id": dag_id, "from_date": start, "to_date": end, "reprocess_behavior": "completed", "max_active_runs": 1})
        if status != 503 or "locked" not in str(body) or time.monotonic() > give_up:
            break
        time.sleep(2)
    assert status == 200, body
    backfill_id = body["id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        _, b = af.api("GET", f"backfills/{backfill_id}")
        _, runs = af.api("GET", f"dags/{dag_id}/dagRuns?run_type=backfill&limit=100")
        mine = [r for r in runs["dag_runs"] if str(r.get("dag_run_id", "")).startswith("backfill__") and r["state"] in ("success", "failed")]
        if b.get("completed_at") and all(r["state"] in ("success", "failed") for r in runs["dag_runs"]):
            failed = [r["dag_run_id"] for r in runs["dag_runs"] if r["state"] == "failed"]
            if failed:
                print(_task_log(af, dag_id, failed[0], "orders")[-4000:])
            return [r["state"] for r in runs["dag_runs"]]
        if time.monotonic() > deadline:
            raise AssertionError(f"backfill {backfill_id} of {dag_id} not done after {RUN_TIMEOUT:.0f}s: {b}, {len(mine)} runs ended")
        time.sleep(2)


def test_a_backfill_of_three_days_run_twice_gives_the_same_table_and_a_regular_run_between_loses_nothing(server: Airflow) -> None:
    projects: Path = server.projects  # type: ignore[attr-defined]
    rows = [r for day in range(1, 6) for r in _day_rows(day * 100, day, 20)]
    bf = _small(
        projects / "bf", "bf",
        {"orders": _pipeline("orders", "raw.orders", "window: {column: updated_at, size: 1d}").replace("mode: merge, keys: [id]", "mode: append")},
        {"orders": rows},
        # Unpausing a daily DAG starts its latest scheduled run beside ours: a run that finds the table being
        # written stops with a transient error (exit 75) and is retried.
        scheduling="scheduling: {schedule: '@daily', retries: 4, retry_delay: 2s}\n",
        time_type="TIMESTAMP",
    )
    server.import_pools(bf)
    run_id = _trigger(server, "icefield_bf")  # the regular incremental run loads every row
    state, _ = _finish(server, "icefield_bf", run_id)
    assert state == "success"
    assert _ids(bf, "raw.orders") == sorted(r[0] for r in rows)

    # A correction in the source, inside the backfilled days, that the regular run cannot see (its cursor
    # is past it): the backfill replaces those days with the source's rows.
    _rows(bf, {"orders": [(205, 1, -1.0, "2026-01-02 05:05:00")]})
    states = _backfill(server, "icefield_bf", "2026-01-02T00:00:00Z", "2026-01-04T00:00:00Z")
    assert states and set(states) == {"success"}
    first = _tables(bf)["raw.orders"]
    assert first[0] == len(rows)
    assert _amount(bf, 205) == -1.0

    _rows(bf, {"orders": _day_rows(600, 6, 5)})  # new rows for the regular run
    run_id = _trigger(server, "icefield_bf")
    state, _ = _finish(server, "icefield_bf", run_id)
    assert state == "success"
    assert _ids(bf, "raw.orders") == sorted([r[0] for r in rows] + list(range(600, 605)))

    states = _backfill(server, "icefield_bf", "2026-01-02T00:00:00Z", "2026-01-04T00:00:00Z")
    assert set(states) == {"success"}
    assert _ids(bf, "raw.orders") == sorted([r[0] for r in rows] + list(range(600, 605)))  # nothing twice, nothing lost
    again = _tables(bf)["raw.orders"]
    assert again[0] == first[0] + 5


def _amount(project_dir: Path, order_id: int) -> float:
    from icefield.catalog import open_catalog
    from icefield.config import load_project

    data = open_catalog(load_project(project_dir)).load_table("raw.orders").scan().to_arrow().to_pylist()
    return next(r["amount"] for r in data if r["id"] == order_id)
