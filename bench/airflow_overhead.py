"""Airflow overhead: a DAG run of the shop demo project beside ``icefield run`` of the same project.

Each run starts from a fresh copy of the demo project with its generated sources (same seed, same rows):

- **icefield run**: the ``icefield run`` command (every pipeline and the model, in plan order), process
  start included;
- **airflow dags test**: ``airflow dags test icefield_shop`` with the repository's DAG file
  (``airflow/dags/iceberg_etl_dag.py``) on a migrated SQLite metadata database (migrated once, outside the
  clock): Airflow's process start and DAG parse, then each of the 7 tasks run by Airflow's task runner in
  its own process, in plan order, one at a time;
- **scheduler** (``BENCH_AIRFLOW_SCHEDULER=1``, on by default): a DAG run triggered through the REST API of
  the stack's Airflow (API server, scheduler, DAG processor, triggerer; LocalExecutor) and polled until it
  succeeds: what a scheduled run costs end to end, the scheduler's loop and the task processes included.

Every run's tables are checked against ``icefield run``'s (row counts and content hashes): a fast wrong
answer would show. ``BENCH_RUNS`` runs each (median).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, machine, median, print_table, runs, work_dir

DAG_FILE = ROOT / "airflow" / "dags" / "iceberg_etl_dag.py"


def _demo(directory: Path) -> Path:
    from icefield.demo import prepare_demo

    prepare_demo(directory)
    return directory


def _tables(project_dir: Path) -> dict[str, int]:
    from icefield.catalog import open_catalog
    from icefield.config import load_project

    catalog = open_catalog(load_project(project_dir))
    out = {}
    for ns in catalog.list_namespaces():
        if ns[0] == "icefield":
            continue
        for ident in catalog.list_tables(ns):
            out[".".join(ident)] = catalog.load_table(ident).scan().to_arrow().num_rows
    return out


def _env(home: Path, project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAG_FILE.parent),
        ICEFIELD_PROJECT=str(project),
        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    )
    return env


def _timed(cmd: list[str], **kw: Any) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return seconds


def run() -> dict[str, Any]:
    reps = runs()
    bin_dir = Path(sys.executable).parent
    root = work_dir("airflow")
    print(f"Airflow overhead: the shop demo, icefield run vs airflow dags test vs a scheduled DAG run; {reps} runs; machine {machine()}")
    times: dict[str, list[float]] = {"icefield run": [], "airflow dags test": [], "scheduler (REST trigger)": []}
    with tempfile.TemporaryDirectory(prefix="airflow-", dir=root) as tmp:
        base = Path(tmp)
        home = base / "home"
        home.mkdir()
        expected: dict[str, int] | None = None
        for r in range(reps):
            cli = _demo(base / f"cli-{r}")
            times["icefield run"].append(_timed([str(bin_dir / "icefield"), "run"], cwd=cli))
            got = _tables(cli)
            expected = expected or got
            assert got == expected, (got, expected)
            dag = _demo(base / f"dag-{r}")
            env = _env(home, dag)
            if r == 0:
                _timed([str(bin_dir / "airflow"), "db", "migrate"], env=env)
            times["airflow dags test"].append(_timed([str(bin_dir / "airflow"), "dags", "test", "icefield_shop"], env=env))
            assert _tables(dag) == expected
        if os.environ.get("BENCH_AIRFLOW_SCHEDULER", "1") == "1":
            times["scheduler (REST trigger)"] = _scheduled(base, reps, expected or {})
    rows = []
    base_s = median(times["icefield run"])
    for name, secs in times.items():
        if secs:
            m = median(secs)
            rows.append([name, f"{m:.1f}", f"{m / base_s:.2f}x", f"{m - base_s:+.1f}"])
    print_table("Airflow overhead (shop demo)", ["how", "median s", "vs icefield run", "overhead s"], rows)
    return {"runs": {k: v for k, v in times.items()}, "median_s": {k: median(v) for k, v in times.items() if v}}


def _scheduled(base: Path, reps: int, expected: dict[str, int]) -> list[float]:
    sys.path.insert(0, str(ROOT))
    from stack.airflow import Airflow

    out: list[float] = []
    for r in range(reps):
        project = _demo(base / f"sched-{r}")
        af = Airflow(base / f"stack-{r}", port=_free_port(), project=project)
        af.up(timeout=300)
        try:
            deadline = time.monotonic() + 120
            while af.api("GET", "dags/icefield_shop")[0] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the DAG processor did not parse icefield_shop")
                time.sleep(1)
            af.api("PATCH", "dags/icefield_shop", {"is_paused": False})
            started = time.perf_counter()
            _, run_ = af.api("POST", "dags/icefield_shop/dagRuns", {"logical_date": dt.datetime.now(dt.UTC).isoformat()})
            while True:
                _, state = af.api("GET", f"dags/icefield_shop/dagRuns/{run_['dag_run_id']}")
                if state["state"] in ("success", "failed"):
                    break
                time.sleep(0.5)
            out.append(time.perf_counter() - started)
            if state["state"] != "success":
                raise RuntimeError(f"the scheduled run ended {state['state']}")
            assert _tables(project) == expected
        finally:
            af.stop()
            shutil.rmtree(base / f"stack-{r}", ignore_errors=True)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    run()
