"""Central logs end to end (issue 19, item 3): ``icefield run`` of a SQLite -> Iceberg pipeline ships its JSON
log lines to a real VictoriaLogs (``logs.ship``), and the store's query API finds every line of that run by
its ``run_id``: as many as the run wrote to its local JSON log file, with the same messages, ids and
batches; a later run's lines (run by an Airflow task: its DAG, task, run and try on every line) do not mix
with them."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from stack import VictoriaLogs

from icefield.cli import cli

pytestmark = pytest.mark.victorialogs

AIRFLOW_ENV = {
    "AIRFLOW_CTX_DAG_ID": "icefield_shop",
    "AIRFLOW_CTX_TASK_ID": "pipeline_orders",
    "AIRFLOW_CTX_DAG_RUN_ID": "manual__2026-12-07T06:00:00+00:00",
    "AIRFLOW_CTX_TRY_NUMBER": "1",
}


def _project(tmp_path: Path, ship_url: str) -> Path:
    root = tmp_path / "shop"
    assert CliRunner().invoke(cli, ["init", str(root)]).exit_code == 0
    for f in [*(root / "pipelines").glob("*.y*ml"), *(root / "models").glob("*.sql")]:
        f.unlink()
    _add_orders(root, 1, 70)
    (root / "pipelines" / "orders.yaml").write_text(textwrap.dedent(f"""\
        name: orders
        source: {{type: sql, url: "sqlite:///{root / 'shop.db'}", table: orders, cursor: id}}
        target: {{table: raw.orders}}
    """), encoding="utf-8")
    config = yaml.safe_load((root / "icefield.yaml").read_text(encoding="utf-8"))
    config["batch_size"] = 25
    config["logs"] = {
        "format": "json",
        "level": "debug",
        "file": "logs/icefield.jsonl",
        "ship": {"url": ship_url, "stream_fields": ["pipeline", "dag_id"], "flush_seconds": 0.2},
    }
    (root / "icefield.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


def _add_orders(root: Path, first: int, last: int) -> None:
    con = sqlite3.connect(root / "shop.db")
    con.execute("create table if not exists orders (id integer primary key, amount real)")
    con.executemany("insert into orders values (?, ?)", [(i, i * 1.5) for i in range(first, last + 1)])
    con.commit()
    con.close()


def _run(root: Path, env: dict[str, str] | None = None) -> str:
    """``icefield --json run orders`` in its own process (which flushes the shipper at exit); its run id."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", "ICEFIELD__"))}
    proc = subprocess.run([sys.executable, "-m", "icefield.cli", "--json", "run", "orders"], capture_output=True,
                          text=True, check=False, cwd=root, env={**clean, **(env or {})}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "could not ship" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "ok"
    return str(doc["run_id"])


def _local(root: Path, run_id: str) -> list[dict[str, Any]]:
    lines = (root / "logs" / "icefield.jsonl").read_text(encoding="utf-8").splitlines()
    return [d for d in map(json.loads, lines) if d.get("run_id") == run_id]


def _stored(server: VictoriaLogs, run_id: str, expected: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The lines VictoriaLogs holds for ``run_id``, once it has ``expected`` of them (lines become searchable
    within about a second of their ingestion) or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        found = server.query(f'run_id:"{run_id}"')
        if len(found) >= expected or time.monotonic() >= deadline:
            return found
        time.sleep(0.25)


def _same_lines(local: list[dict[str, Any]], stored: list[dict[str, Any]]) -> None:
    assert len(stored) == len(local), f"{len(local)} lines in the local log, {len(stored)} in VictoriaLogs"
    assert Counter(d["_msg"] for d in stored) == Counter(d["message"] for d in local)
    assert Counter((d["level"], d["logger"], d.get("batch_id", "")) for d in stored) == Counter(
        (d["level"], d["logger"], d.get("batch_id", "")) for d in local
    )


def test_every_line_of_a_run_is_found_in_victorialogs_by_its_run_id(victorialogs_server: VictoriaLogs, tmp_path: Path) -> None:
    root = _project(tmp_path, victorialogs_server.url())

    first = _run(root)
    local = _local(root, first)
    events = [d["event"]["event"] for d in local if "event" in d]
    assert events.count("batch_committed") == 3 and events[0] == "run_started" and events[-1] == "run_finished"
    stored = _stored(victorialogs_server, first, len(local))
    _same_lines(local, stored)
    assert {(d["pipeline"], d["_stream"]) for d in stored} == {("orders", '{pipeline="orders"}')}
    committed = [d for d in stored if d.get("event.event") == "batch_committed"]
    assert sorted(int(d["event.rows_committed"]) for d in committed) == [20, 25, 25]
    assert all(d["batch_id"] == d["event.batch_id"] for d in committed)
    assert not any("dag_id" in d for d in stored)

    # A second run, as an Airflow task runs it: its lines carry the task's ids and stay apart from the first's.
    _add_orders(root, 71, 100)
    second = _run(root, env=AIRFLOW_ENV)
    assert second != first
    local2 = _local(root, second)
    stored2 = _stored(victorialogs_server, second, len(local2))
    _same_lines(local2, stored2)
    assert {(d["dag_id"], d["task_id"], d["dag_run_id"], d["try_number"]) for d in stored2} == {
        ("icefield_shop", "pipeline_orders", "manual__2026-12-07T06:00:00+00:00", "1")
    }
    by_task = victorialogs_server.query('dag_id:"icefield_shop" AND task_id:"pipeline_orders"')
    assert {d["run_id"] for d in by_task} == {second}
    _same_lines(local, victorialogs_server.query(f'run_id:"{first}"'))
